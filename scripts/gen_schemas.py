#!/usr/bin/env python3
"""Regenerate docs/task.schema.json and docs/records.schema.json from the pydantic models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.records import json_schemas  # noqa: E402
from tasks.schema import json_schema  # noqa: E402


def render() -> dict[str, str]:
    return {
        "docs/task.schema.json": json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n",
        "docs/records.schema.json": json.dumps(json_schemas(), indent=2, ensure_ascii=False) + "\n",
    }


if __name__ == "__main__":
    for rel, text in render().items():
        (ROOT / rel).write_text(text, encoding="utf-8")
        print(f"wrote {rel}")
