"""`python -m imprag.cli COMMAND ...` (as torchrun needs a module to run)."""

import sys

from imprag.cli import main

if __name__ == "__main__":
    sys.exit(main())
