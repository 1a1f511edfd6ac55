from __future__ import annotations

import sys

from sn.cli import main

sys.exit(main())
