#!/usr/bin/env python3
"""Start a worker: the same as ``python -m app`` / ``faust -A app worker``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main()
