"""``python -m trio_sfu`` is the ``trio-sfu`` command."""

from __future__ import annotations

import sys

from trio_sfu.cli import main

if __name__ == "__main__":
    sys.exit(main())
