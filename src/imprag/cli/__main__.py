"""`python -m imprag.cli COMMAND ...` (as torchrun needs a module to run)."""

import sys

from imprag.cli import main

sys.exit(main())
