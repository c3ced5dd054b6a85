"""vectorize-worker: the Faust application (``faust -A app worker``).

Importing this package does nothing but set ``OMP_WAIT_POLICY``: no settings
read, no folder created, no ``faust.App`` built, no torch. The worker is
built the first time ``app.app`` (what ``faust -A app`` looks up),
``app.settings`` or ``app.tasks_topic`` is asked for, through :func:`worker`:
settings from the environment (an invalid one exits 2 with one message), then
the Faust app (:func:`app.faust_app.build_app`), its agents, tables, timers
and web views (``agents.register``) and the CLI commands
(:func:`app.commands.register`). Tests build their own with
:func:`build_worker`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# torch's OpenMP threads sleep at their barriers instead of spinning: the
# event loop, the store client and the Kafka client share the cores with them,
# and spinning threads took that time away (docs/performance.md). Must be set
# before torch loads; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from app.faust_app import WorkerApp
    from core.settings import Settings

__all__ = ["app", "build_worker", "settings", "tasks_topic", "worker"]

_worker: WorkerApp | None = None


def build_worker(settings: Settings) -> WorkerApp:
    """A complete worker for ``settings``: the Faust app with its agents, tables, timers, views and commands.

    Exits 2 with one message when the Kafka client libraries are not the
    verified ones or the Kafka security settings do not fit together.
    """
    import agents  # the one upward import (pyproject.toml allows it): the agents attach themselves to the app
    from app.commands import register as register_commands
    from app.faust_app import build_app

    built = build_app(settings)
    agents.register(built)
    register_commands(built)
    return built


def worker() -> WorkerApp:
    """The process's worker, built on first use from the environment's settings (exit 2 when they are invalid)."""
    global _worker
    if _worker is None:
        from app.faust_app import load_settings_or_exit

        _worker = build_worker(load_settings_or_exit())
    return _worker


def __getattr__(name: str) -> Any:
    """``app.app``, ``app.settings`` and ``app.tasks_topic`` build the worker on first access (PEP 562)."""
    if name in ("app", "settings", "tasks_topic"):
        return getattr(worker(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
