"""Faust agents, tables and web views: thin glue between Kafka streams and :mod:`engine.pipeline`.

Importing this package does nothing; :func:`register` attaches everything to a built app.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents import intake, lifecycle, status, web
from agents.intake import Intake
from agents.status import StatusTables
from agents.web import WebViews
from app.faust_app import WorkerApp


@dataclass(frozen=True)
class Agents:
    """What :func:`register` attached to one worker app (tests reach the parts through it)."""

    intake: Intake
    status: StatusTables
    web: WebViews


def register(worker: WorkerApp) -> Agents:
    """Attach the intake agent, the status and worker-stats tables, the SIGTERM drain and the web views to
    ``worker``'s app."""
    taken = intake.register(worker)
    tables = status.register(worker, lambda: taken.started)
    lifecycle.register(worker, taken)
    views = web.register(worker, taken.runtime, tables)
    return Agents(taken, tables, views)
