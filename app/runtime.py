"""Everything one worker process holds: model manager, stores, publisher, pipeline.

Created lazily inside the worker (importing :mod:`app` stays light, so
``faust -A app send`` does not load torch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.acks import AckTracker, Ticket
from app.pipeline import TaskPipeline
from app.settings import Settings
from models.device import resolve_device
from models.families import make_loader
from models.manager import ModelManager
from sinks.base import BaseVectorDB
from sinks.publisher import RecordPublisher, SendPort
from sinks.registry import create_stores

log = logging.getLogger("worker.main")


class WorkerRuntime:
    """Builds and owns the worker's parts; :meth:`start` blocks until they are ready."""

    def __init__(self, settings: Settings, send: SendPort) -> None:
        self.settings = settings
        self._send = send
        self.tracker = AckTracker()
        self.device = "cpu"
        self.manager: ModelManager | None = None
        self.stores: list[BaseVectorDB] = []
        self.pipeline: TaskPipeline | None = None
        self._acker: Callable[[list[Ticket]], Awaitable[None]] | None = None
        self._lane: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        if self.pipeline is not None:
            return
        s = self.settings
        loop = asyncio.get_running_loop()
        self.device = await loop.run_in_executor(None, resolve_device, s.device)
        self.manager = ModelManager(
            make_loader(device=self.device, cache_dir=s.models_cache_dir, allow_download=s.models_allow_download),
            max_loaded=s.max_loaded_models,
        )
        self.stores = await loop.run_in_executor(None, create_stores, s)
        publisher = RecordPublisher(
            self._send,
            worker_id=s.worker_id,
            status_topic=s.status_topic,
            results_topic=s.results_topic,
            dlq_topic=s.dlq_topic,
        )
        self.pipeline = TaskPipeline(
            settings=s, manager=self.manager, stores=self.stores, publisher=publisher, on_done=self._done
        )
        log.info(
            "Worker %s starting: device=%s stores=%s default model=%s",
            s.worker_id,
            self.device,
            ", ".join(st.describe() for st in self.stores),
            s.default_model,
        )
        try:
            await self.manager.get(s.default_model)
        except Exception as exc:  # noqa: BLE001 - the worker still serves other models
            log.error("Default model could not be loaded; tasks that use it will fail: %s", exc)
        self._started.set()

    def ensure_lane(self) -> None:
        """(Re)start the text lane task if it is not running."""
        assert self.pipeline is not None
        if self._lane is None or self._lane.done():
            self._lane = asyncio.ensure_future(self.pipeline.run_text_lane())

    def set_acker(self, acker: Callable[[list[Ticket]], Awaitable[None]]) -> None:
        self._acker = acker

    async def _done(self, ticket: Ticket) -> None:
        ready = self.tracker.complete(ticket)
        if ready and self._acker is not None:
            await self._acker(ready)

    async def stop(self) -> None:
        if self._lane is not None:
            self._lane.cancel()
            await asyncio.gather(self._lane, return_exceptions=True)
            self._lane = None
        if self.pipeline is not None:
            self.pipeline.close()
        for store in self.stores:
            store.close()
        if self.manager is not None:
            self.manager.close()
        self.pipeline = None
        self.stores = []
        self.manager = None

    def state(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            "worker_id": self.settings.worker_id,
            "device": self.device,
            "processed": p.processed if p else 0,
            "failed": p.failed if p else 0,
            "active_tasks": p.active_tasks if p else 0,
            "in_flight": self.tracker.in_flight(),
            "loaded_models": [m.name for m in self.manager.loaded()] if self.manager else [],
        }
