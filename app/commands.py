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


@app.command()
async def workers(self: Any) -> None:
    """List live workers from their Redis heartbeats."""
    from sinks.heartbeat import live_workers

    try:
        live = await live_workers(settings.redis_url)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        print(f"Failed to connect to Redis at {settings.redis_url}: {exc} (VECTORIZE_WORKER_REDIS_URL)")
        raise SystemExit(1) from None
    print(
        f"{'worker':<20} {'host':<16} {'pid':>7} {'status':<9} {'ready':<5} {'done':>7} {'failed':>6} {'device':<6} models"
    )
    for w in live:
        print(
            f"{w.get('worker_id', '?'):<20} {w.get('host', '?'):<16} {w.get('pid', 0):>7} {w.get('status', '?'):<9} "
            f"{'yes' if w.get('ready') else 'no':<5} {w.get('processed', 0):>7} {w.get('failed', 0):>6} "
            f"{w.get('device', '?'):<6} {', '.join(w.get('loaded_models', []))}"
        )
    print(f"{len(live)} live worker(s)")
