"""``python -m validation.fuzz``: see :mod:`validation.fuzz.report`."""
from __future__ import annotations

import sys

from .report import main

sys.exit(main())
