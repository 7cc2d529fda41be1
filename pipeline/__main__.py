"""``python -m pipeline`` is the ``caption`` command."""

import sys

from .cli import main

sys.exit(main())
