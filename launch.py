"""The thin entry point the design card names: `python launch.py ...` is `tuner ...`.

The command line itself lives in tuner/cli.py, so that `pip install .` gives a `tuner` command and
`python -m tuner` works without this file. `main` (and `_run`, which tests/chaos_driver.py drives
sweeps through) stay importable from here for the tests.
"""

import sys

from tuner.cli import _run, main

__all__ = ["_run", "main"]

if __name__ == "__main__":
    sys.exit(main())
