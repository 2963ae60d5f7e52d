"""Entry script the launcher execs: ``python -I -S -B _worker_main.py``.

Isolated mode leaves the script's folder off sys.path, so the package's
parent folder is added here before the first import from it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox.worker import main

sys.exit(main())
