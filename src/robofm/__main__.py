"""`python -m robofm` is the same as the `robofm` console script."""

import sys

from robofm.cli import main

sys.exit(main())
