"""``python -m kdistill.cli``."""

import sys

from . import main

sys.exit(main())
