"""chatd tests: run with `python -m twisted.trial tests` or `python -m pytest`."""
