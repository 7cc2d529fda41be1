"""`python -m pipeline.sim`: run the simulator (same flags as `caption sim`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
