"""Extra CLI commands: ``faust -A app doctor``."""

from __future__ import annotations

from typing import Any

from app.doctor import render, run_checks
from app.faust_app import app, settings


@app.command()
async def doctor(self: Any) -> None:
    """Check configuration, Kafka, the vector store and the default model."""
    checks = await run_checks(settings)
    print(render(checks))
    if not all(c.ok for c in checks):
        raise SystemExit(1)
