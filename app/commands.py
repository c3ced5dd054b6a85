"""Extra CLI commands: ``faust -A app doctor``, ``faust -A app workers`` and ``faust -A app migrate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.doctor import render, run_checks

if TYPE_CHECKING:
    from app.faust_app import WorkerApp


def register(worker: WorkerApp) -> None:
    """Add ``doctor``, ``workers`` and ``migrate`` to the app's ``faust -A app`` commands."""
    settings = worker.settings

    @worker.app.command()
    async def doctor(self: Any) -> None:
        """Check configuration, Kafka, the vector store and the default model."""
        checks = await run_checks(settings)
        print(render(checks))
        if not all(c.ok for c in checks):
            raise SystemExit(1)

    @worker.app.command()
    async def workers(self: Any) -> None:
        """List live workers from their Redis heartbeats."""
        from ops.heartbeat import live_workers, redis_error

        try:
            live = await live_workers(
                settings.redis_url, password=settings.redis_password, ssl_ca_file=settings.redis_ssl_ca_file
            )
        except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
            print(redis_error(settings.redis_url, exc, settings.redis_password))
            raise SystemExit(1) from None
        for line in worker_table(live):
            print(line)

    from faust.cli import argument, option

    from app.migrate import STALL_SECONDS, WAIT_SECONDS

    @worker.app.command(
        argument("collection"),
        option("--to-model", default=None, help="Migrate COLLECTION to this model (or resume its migration)."),
        option("--yes", is_flag=True, default=False, help="Do not ask for confirmation."),
        option(
            "--store", default=None, help="The store whose live collection the backfill scans (default: the first)."
        ),
        option("--status", is_flag=True, default=False, help="Show the migration state, counts and workers' epochs."),
        option("--abort", is_flag=True, default=False, help="Give up a migration before its switch."),
        option("--rollback", is_flag=True, default=False, help="Point COLLECTION back at the old model's collection."),
        option("--cleanup", is_flag=True, default=False, help="Drop the collection a migration left over."),
        option(
            "--drop-unmigratable",
            is_flag=True,
            default=False,
            help="Switch even if some tasks could not be re-embedded (they are then absent).",
        ),
        option("--wait-seconds", type=float, default=WAIT_SECONDS, help="How long to wait for the workers' epochs."),
        option("--stall-seconds", type=float, default=STALL_SECONDS, help="How long the shadow may not grow."),
    )
    async def migrate(self: Any, collection: str, **flags: Any) -> None:
        """Move a collection to another model while it serves (docs/migration.md)."""
        from app.migrate import MigrateOptions, run_migrate

        code = await run_migrate(settings, MigrateOptions(collection=collection, **flags))
        if code:
            raise SystemExit(code)


def _cell(value: Any, width: int = 60) -> str:
    """A heartbeat field for the terminal: heartbeats come from whoever can write to Redis, so control
    characters (terminal escapes) are replaced and the text is capped."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def worker_table(live: list[dict[str, Any]]) -> list[str]:
    """The ``workers`` command's lines: a header, one row per heartbeat, a count."""
    lines = [
        f"{'worker':<20} {'host':<16} {'pid':>7} {'status':<9} {'ready':<5} {'done':>7} {'failed':>6} {'device':<6} models"
    ]
    for w in live:
        models = w.get("loaded_models")
        models_text = ", ".join(str(m) for m in models) if isinstance(models, list) else ""
        lines.append(
            f"{_cell(w.get('worker_id', '?')):<20} {_cell(w.get('host', '?')):<16} {_cell(w.get('pid', 0)):>7} "
            f"{_cell(w.get('status', '?')):<9} {'yes' if w.get('ready') else 'no':<5} "
            f"{_cell(w.get('processed', 0)):>7} {_cell(w.get('failed', 0)):>6} {_cell(w.get('device', '?')):<6} "
            f"{_cell(models_text, 200)}"
        )
    lines.append(f"{len(live)} live worker(s)")
    return lines
