#!/usr/bin/env python3
"""Self-check of a worker's environment (the same as ``faust -A app doctor``).

Checks the configuration, Kafka, the vector store and the default model, and
prints a pass/fail report. Exit code 0 when every check passed. Whatever is
wrong with the environment (an invalid setting, Kafka security settings that
do not fit together) becomes a line of the report: nothing here builds the
worker's Faust app, which would stop on them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.doctor import main as doctor  # noqa: E402  (importing app builds nothing)
from core.errors import ConfigError  # noqa: E402
from core.settings import load_settings  # noqa: E402


def main() -> int:
    config = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else None
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"vectorize-worker doctor\n  [FAIL] configuration  {exc}\nresult: FAILED: configuration")
        return 1
    return doctor(settings)


if __name__ == "__main__":
    sys.exit(main())
