"""What every lane does around its model step, and the interface every lane offers the pipeline.

A lane (:class:`Lane`) takes validated tasks of its kind (:meth:`Lane.submit`), embeds them and hands
each finished task to :meth:`Steps.finish`, which writes its vectors and delivers its records; the
task's completion (its ticket's acknowledgement) travels with it from there, through the reporter.
The lanes share the steps through one :class:`Steps` object and know nothing of the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from core.errors import PermanentError
from engine.batcher import Batcher

if TYPE_CHECKING:
    from core.settings import Settings
    from engine.embedding_cache import EmbeddingCache
    from engine.reporting import Reporter
    from engine.store_writer import StoreWriter
    from engine.work import Outcome, WorkItem
    from models.manager import ModelManager
    from ops.metrics import Metrics
    from tasks.schema import Task

log_main = logging.getLogger("worker.main")
log_proc = logging.getLogger("worker.task_processor")


class Lane(Protocol):
    """A typed lane: its own queue, batching and model step between intake and :meth:`Steps.finish`.

    Every submitted task leaves the lane exactly once: finished (stored and reported, or failed and
    dead-lettered) or, on :meth:`drain`, dropped unacknowledged for another worker.
    """

    name: str

    def start(self) -> None:
        """Start the lane's stages (idempotent); they run until :meth:`close`."""

    async def run(self) -> None:
        """:meth:`start`, then wait for the stages (they end only on a bug, raising it); cancel to close."""

    async def submit(self, item: WorkItem) -> None:
        """Queue a validated task; the lane counts it as pending until it leaves."""

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet left the lane."""

    @property
    def active(self) -> int:
        """Tasks taken out of the queue and being processed."""

    async def settled(self) -> None:
        """Wait until no task is pending (returns at once when none is)."""

    def drain(self, seconds: float) -> None:
        """Stop taking tasks; drop the queued ones that cannot be done within ``seconds`` (unacknowledged)."""

    async def close(self) -> None:
        """Cancel the stages and wait for them; tasks pending stay pending (start again to resume)."""


class LaneBase:
    """What every lane does alike: its queue of waiting tasks, and counting each task from submit until it leaves."""

    name = "lane"

    def __init__(self, steps: Steps, waiting: Batcher[WorkItem]) -> None:
        self.steps = steps
        self.settings = steps.settings
        self.waiting = waiting  # submitted, not yet taken by the lane
        self._pending = 0  # submitted and not left
        self._active = 0  # of those, taken from the queue and started on
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True

    async def submit(self, item: WorkItem) -> None:
        await self.submit_later(item)

    def submit_later(self, item: WorkItem) -> Awaitable[None]:
        """Count ``item`` as pending now; the awaitable returned queues it (a migration's twin, made by a stage
        that must not wait for room in the queue)."""
        self._pending += 1
        self._idle.clear()
        return self.waiting.put(item)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def active(self) -> int:
        return self._active

    async def settled(self) -> None:
        await self._idle.wait()

    def _left(self, n: int, *, active: bool = False) -> None:
        """``n`` tasks left the lane (``active``: after they were started on)."""
        self._pending -= n
        if active:
            self._active -= n
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()


class Steps:
    """The steps every lane shares: expire, begin, finish, fail; and what the lanes compute with."""

    def __init__(
        self,
        *,
        settings: Settings,
        manager: ModelManager,
        metrics: Metrics,
        reporter: Reporter,
        writer: StoreWriter,
        cache: EmbeddingCache | None,
        after_write: Callable[[list[Outcome]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.after_write = after_write  # the pipeline's dual write of migrating collections (engine/pipeline.py)
        self.manager = manager
        self.metrics = metrics
        self.reporter = reporter
        self.writer = writer
        self.cache = cache  # the embedding cache (engine/embedding_cache.py); None: every input goes to the model

    def model_for(self, task: Task) -> str:
        """The text model of ``task``: the one it names, else the model its collection is bound to by a migration
        (after a switch, tasks that name no model get the new one), else the worker's default model."""
        if task.model_name:
            return task.model_name
        state = self.writer.migrations.get(task.collection or self.settings.default_collection)
        return state.live.identity.name if state is not None else self.settings.default_model

    async def expire(self, batch: list[WorkItem]) -> list[WorkItem]:
        """Fail the tasks that waited longer than task_timeout, hand over those whose partition was revoked while
        they waited (not embedded: their next owner does it); return the others."""
        started = time.monotonic()
        live = []
        for item in batch:
            waited = started - item.received_at
            if item.ticket.revoked:
                self.reporter.closing(item)
                await self.reporter.handed_over(item.ticket, item.task.task_id)
            elif waited > self.settings.task_timeout:
                error = PermanentError(
                    f"Task {item.task.task_id} waited {waited:.0f}s, over task_timeout "
                    f"({self.settings.task_timeout:.0f}s, VECTORIZE_WORKER_TASK_TIMEOUT); resend it or raise the limit."
                )
                await self.reporter.fail_item(item, error)
            else:
                live.append(item)
        return live

    async def begin(self, items: list[WorkItem]) -> None:
        """Queue the ``processing`` status of tasks the lane starts on."""
        for item in items:
            log_main.info("Processing task %s of type %s", item.task.task_id, item.task.task_type)
            await self.reporter.early_status(item, "processing")

    async def finish(self, outcomes: list[Outcome]) -> None:
        """Write the outcomes' vectors (those without an error) and deliver every outcome's records."""
        await self.store(outcomes)
        await self.reporter.report(outcomes)

    async def store(self, outcomes: list[Outcome]) -> None:
        """:meth:`finish`'s first half: write the outcomes' vectors (a migration's dual write follows); their
        records are delivered by ``reporter.report`` after it."""
        await self.writer.write(outcomes)
        if self.after_write is not None:
            self.after_write(outcomes)

    async def fail(self, batch: list[WorkItem], exc: BaseException) -> None:
        """Dead-letter every task of a broken batch that has no final status yet.

        If even that fails, the worker exits: its records are not acknowledged,
        so another worker gets them, and no stuck ticket blocks the commits.
        """
        self.metrics.errors.labels("internal").inc()
        try:
            for item in batch:
                if not item.ticket.done:
                    await self.reporter.fail_item(item, exc)
        except Exception:  # noqa: BLE001 - last resort
            log_proc.critical(
                "Cannot fail a broken batch either; exiting so another worker takes the tasks", exc_info=True
            )
            os._exit(70)
