"""`python -m memsvc`: the command line lives in `memsvc.cli`, importable by worker processes."""

import sys

from memsvc.cli import main

if __name__ == '__main__':
    sys.exit(main())
