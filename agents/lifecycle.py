"""Graceful SIGTERM: stop taking work, finish the batch in flight, then let Faust commit and leave.

Faust (through mode) stops the consumer, commits and then cancels the agents.
Left alone, a batch in flight would be cancelled and redelivered. So we put
our own SIGTERM handler in front of mode's: drain the pipeline (bounded by
``processing.shutdown_timeout``), then hand over to mode's handler, which
commits the offsets acknowledged so far and exits.

:func:`register` attaches the task that installs the handler to a built app;
nothing happens on import.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from agents.intake import Intake
from app import compat
from app.faust_app import WorkerApp

log = logging.getLogger("worker.main")


def register(worker: WorkerApp, intake: Intake) -> None:
    """Install the drain in front of mode's SIGTERM handler when ``worker``'s app starts."""

    @worker.app.task
    async def install_sigterm_drain() -> None:
        install(worker, intake, asyncio.get_running_loop())


def install(worker: WorkerApp, intake: Intake, loop: asyncio.AbstractEventLoop) -> None:
    """Replace the loop's SIGTERM handler (mode's shutdown) with the drain, which calls mode's afterwards."""
    original = compat.mode_sigterm_handler(loop)

    def on_sigterm() -> None:
        loop.remove_signal_handler(signal.SIGTERM)  # a second SIGTERM goes straight to the default
        # held here: the event loop keeps only a weak reference to a task, and a drain collected mid-way
        # would never hand over to mode's shutdown
        task = asyncio.ensure_future(drain_then_stop(worker, intake, original))
        _draining.add(task)
        task.add_done_callback(_draining.discard)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)


#: the drain in progress (see :func:`install`)
_draining: set[asyncio.Future[None]] = set()

#: seconds the goodbye to Redis may take before the worker stops without it (its key then expires)
LEAVE_TIMEOUT_S = 5.0


async def drain_then_stop(worker: WorkerApp, intake: Intake, original: Callable[[], Any] | None) -> None:
    """Drain, commit, say goodbye, then stop: whatever fails or hangs on the way, the worker stops."""
    settings = worker.settings
    rt = intake.runtime()
    try:
        if rt.pipeline is not None:
            log.info(
                "SIGTERM: not taking new tasks; finishing the batch in flight (up to %.0fs)", settings.shutdown_timeout
            )
            finished = await rt.pipeline.drain(settings.shutdown_timeout)
            if not finished:
                log.warning(
                    "Batch in flight did not finish within %.0fs; its tasks will be redelivered",
                    settings.shutdown_timeout,
                )
            await commit_now(worker.app)
        try:
            await asyncio.wait_for(rt.leave(), LEAVE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - stopping anyway; the heartbeat key expires on its own
            log.warning(
                "SIGTERM: removing this worker's heartbeat from Redis failed (%r); it leaves the live list when "
                "the key expires",
                exc,
            )
    except Exception:  # the worker must stop anyway: leaving it up but not taking tasks would stall partitions
        log.exception("SIGTERM: the drain failed; stopping now (unfinished tasks will be redelivered)")
    finally:
        log.info("SIGTERM: stopping the worker")
        if original is not None:
            original()
        else:  # pragma: no cover - no mode worker (e.g. embedded use)
            await worker.app.stop()


async def commit_now(app: Any) -> None:
    """Commit what is acknowledged before leaving: mode's shutdown does not always get to it in time.

    Without it, tasks finished during the drain could be done again by the
    worker that gets the partitions (correct, as vector ids are
    deterministic, but wasted work).
    """
    try:
        committed = await asyncio.wait_for(app.consumer.commit(), timeout=10)
    except Exception as exc:  # noqa: BLE001 - leaving anyway; uncommitted tasks are redelivered
        log.warning("SIGTERM: committing the finished tasks failed (%r); they will be redelivered", exc)
        return
    log.info("SIGTERM: offsets of finished tasks committed%s", "" if committed else " (nothing new)")
