"""`python3 -m builder.cli` runs the command line, like `python3 -m builder` and `pybuild`."""
import sys

from . import main

sys.exit(main())
