"""``python -m sandbox``: the same command line as the ``sandbox`` script."""

import sys

from .cli import main

sys.exit(main())
