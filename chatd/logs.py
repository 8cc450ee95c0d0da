"""
Kept so that C{twistd --logger=chatd.logs.json_stdout_observer}, as earlier
versions documented it, goes on working; the observers live in
chatd.daemon.logs.
"""

from chatd.daemon.logs import json_observer, json_stdout_observer

__all__ = ["json_observer", "json_stdout_observer"]
