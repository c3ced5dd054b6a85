#!/usr/bin/env python3
"""Self-check of a worker's environment (the same as ``faust -A app doctor``).

Checks the configuration, Kafka, the vector store and the default model, and
prints a pass/fail report. Exit code 0 when every check passed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.errors import ConfigError  # noqa: E402
from core.settings import load_settings  # noqa: E402


def main() -> int:
    config = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else None
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"vectorize-worker doctor\n  [FAIL] configuration  {exc}\nresult: FAILED: configuration")
        return 1
    from app.doctor import main as doctor

    return doctor(settings)


if __name__ == "__main__":
    sys.exit(main())
