"""C{python -m chatd.bench}: the same as the chatd-bench command."""

import sys

from chatd.bench.main import main

sys.exit(main())
