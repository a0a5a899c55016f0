"""`python -m textgen ...` runs the textgen command."""

import sys

from textgen.cli import main

sys.exit(main())
