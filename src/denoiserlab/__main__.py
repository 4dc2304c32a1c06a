"""`python -m denoiserlab ...` (and `torchrun ... -m denoiserlab ...`): the console script's command line, with its
exit codes (0 done, 2 bad input, 130 Ctrl-C) and its one-line `denoiserlab: error: ...` messages."""

import sys

from denoiserlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
