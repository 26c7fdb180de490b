"""`python -m tuner ...`: the same command line as the `tuner` console script."""

import sys

from tuner.cli import main

if __name__ == "__main__":
    sys.exit(main())
