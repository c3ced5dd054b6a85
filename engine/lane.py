"""The pipelined text lane: gather → model queue → embed → store and report.

The gather stage takes validated tasks as they come (queueing their
``processing`` statuses, cutting documents into chunks) and puts their texts
into the :class:`~engine.model_queue.ModelQueue` with their real token counts
(the model's tokenizer, on the model manager's tokenizer thread; characters /
4 for a model without a fast tokenizer). The embed stage takes model calls of texts of
nearly the same length out of that queue and runs them on the device thread,
one computing and the next one already queued behind it, so the device never
waits for the event loop; a second call is queued only once a whole call's
worth of texts waits, and an idle device takes whatever waits at once (a
lone task is not held back). A task whose texts are all embedded goes to the
store stage, which writes everything finished since its last write in one
batch per collection and delivers the records, while the model goes on.

Backpressure: the texts of unfinished tasks are bounded by
``max_inflight_texts`` (:class:`TextBudget`) and the tasks by
``max_concurrent_tasks``; past either, intake waits and the Kafka agent stops
pulling records (see ``TaskPipeline.intake``). A document counts as one text
there and becomes its chunks here, so the gather stage also waits while the
model queue holds ``max_inflight_texts`` texts. On drain, the queued tasks
the model cannot do in half of ``shutdown_timeout`` leave the queue
unacknowledged.

The gather stage bounds what it takes at once by tokens estimated as
``characters / 4`` (+2 for the special tokens): a bound only needs an
estimate. The model calls are cut by real token counts: sorting by
characters instead (what ``SentenceTransformer.encode`` does) pads about a
quarter more on news sentences, a character count being a poor guess of a
token count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from engine.model_queue import ModelCall, ModelQueue
from engine.work import Outcome, WorkItem

if TYPE_CHECKING:
    from engine.pipeline import TaskPipeline
    from models.base import EmbedderInfo
    from models.manager import ModelManager

log = logging.getLogger("worker.task_processor")
T = TypeVar("T")

#: model calls handed to the device thread at once: one computing, one waiting behind it
CALLS_AHEAD = 2


CallResult = tuple[np.ndarray, "EmbedderInfo", float, float]


async def run_call(manager: ModelManager, call: ModelCall) -> CallResult:
    """Run one model call on the device thread: (vectors, info, started, ended) on the thread's clock."""

    def job() -> CallResult:
        started = time.monotonic()
        vectors, info = manager.embed_texts_sync(
            call.key.model, call.texts, batch_size=len(call.texts), normalize=call.key.normalize
        )
        # read here, where models load and unload: the identity of the model that computed these vectors
        call.identity = manager.identity(call.key.model)
        return vectors, info, started, time.monotonic()

    return await manager.run(job)


class TextBudget:
    """Bounds the texts held by unfinished tasks (backpressure on intake).

    :meth:`acquire` waits while taking ``n`` more would exceed ``limit``; a
    task larger than the limit still goes through when nothing else is held.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.held == 0 or self.held + n <= self.limit)
            self.held += n

    def release(self, n: int) -> None:
        self.held -= n
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class TextLane:
    """Runs the stages of the text lane until cancelled or the pipeline drains."""

    def __init__(self, pipeline: TaskPipeline) -> None:
        self.p = pipeline
        self.queue = ModelQueue(max_tokens=pipeline.max_batch_tokens)
        self._arrived = asyncio.Event()  # texts were queued
        self._finished: list[Outcome] = []  # tasks whose texts are all embedded (or that failed)
        self._has_finished = asyncio.Event()
        self._computing = 0  # model calls handed to the device thread
        self._room = asyncio.Event()  # the model queue went below its bound
        self.texts_per_s = 0.0  # the model's recent speed (moving average over calls)

    async def run(self) -> None:
        stages = [
            asyncio.ensure_future(self._gather()),
            asyncio.ensure_future(self._embed()),
            asyncio.ensure_future(self._store()),
        ]
        try:
            await asyncio.gather(*stages)
        finally:
            for stage in stages:
                stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)

    async def _gather(self) -> None:
        p = self.p
        while p.accepting:
            while self.queue.texts >= p.settings.max_inflight_texts:  # documents count one text at intake
                self._room.clear()
                await self._room.wait()
            batch: list[WorkItem] = await p._text_lane.next_batch(
                p.settings.max_batch_size, self._wait, on_first=p._work_started, max_cost=p.max_batch_tokens
            )
            if not p.accepting:  # draining: these stay unacknowledged and go to another worker
                p._work_finished(1)
                break
            ok, outcomes = await self._guard(batch, p.prepare(batch))
            if ok and outcomes:
                p._work_started(len(outcomes))  # each task is in flight until it is reported
                ok, refused = await self._guard(batch, p.enqueue(outcomes, self.queue))
                if ok:
                    self._arrived.set()
                    self._finish(refused or [])
                else:
                    p._work_finished(len(outcomes), active=len(outcomes))
            p._work_finished(1)  # the gathered batch itself

    def _wait(self) -> float:
        """Waiting for more tasks pays only while the model is busy anyway; an idle one starts at once."""
        return self.p.settings.batch_wait_ms / 1000 if self._computing else 0.0

    async def _embed(self) -> None:
        running: deque[tuple[ModelCall, asyncio.Future[CallResult]]] = deque()
        while True:
            self._arrived.clear()
            while len(running) < CALLS_AHEAD:
                call = self.queue.take(full_only=bool(running))
                if call is None:
                    break
                running.append((call, asyncio.ensure_future(run_call(self.p.manager, call))))
                self._computing += 1
                self._room.set()
            if not running:
                await self._arrived.wait()
                continue
            call, computing = running[0]
            if len(running) < CALLS_AHEAD:  # wake up for new texts too: they may fill the next call
                arrived = asyncio.ensure_future(self._arrived.wait())
                await asyncio.wait({computing, arrived}, return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
                if not computing.done():
                    continue
            else:
                await asyncio.wait({computing})
            running.popleft()
            self._computing -= 1
            result: CallResult | BaseException = computing.exception() or computing.result()
            if not isinstance(result, BaseException):
                rate = len(call.texts) / max(result[3] - result[2], 1e-6)
                self.texts_per_s = rate if not self.texts_per_s else 0.8 * self.texts_per_s + 0.2 * rate
            try:
                self._finish(self.p.settle(self.queue, call, result))
            except Exception as exc:  # noqa: BLE001 - a bug must not leave tickets hanging
                log.exception("Unexpected error after a model call of %d texts; failing its tasks", len(call.texts))
                failed = self.queue.fail(call, exc)
                await self.p._fail_unfinished([o.item for o in failed], exc)
                self.p._work_finished(len(failed), active=len(failed))

    def drop_unstarted(self, seconds: float) -> None:
        """On drain: keep the queued tasks the model can do in ``seconds`` at its recent speed, oldest first.

        The others (none of their texts reached the model) leave the lane
        unacknowledged, for another worker; so a long queue does not hold
        the shutdown up, and a short one is not done twice.
        """
        dropped = self.queue.drop_unstarted(keep_texts=int(self.texts_per_s * seconds))
        if dropped:
            log.info("Draining: %d queued tasks left unacknowledged for another worker", len(dropped))
            self.p._work_finished(len(dropped), active=len(dropped))

    def _finish(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self._finished.extend(outcomes)
            self._has_finished.set()

    async def _store(self) -> None:
        while True:
            await self._has_finished.wait()
            self._has_finished.clear()
            outcomes, self._finished = self._finished, []
            if not outcomes:
                continue
            await self._guard([o.item for o in outcomes], self.p.store_and_report(outcomes))
            self.p._work_finished(len(outcomes), active=len(outcomes))

    async def _guard(self, batch: list[WorkItem], step: Awaitable[T]) -> tuple[bool, T | None]:
        """Await one stage's step; on a bug, fail the batch's unfinished tasks and return (False, None)."""
        try:
            return True, await step
        except Exception as exc:  # noqa: BLE001 - a bug must not leave tickets hanging
            log.exception("Unexpected error in a batch of %d tasks; failing the unfinished ones", len(batch))
            await self.p._fail_unfinished(batch, exc)
            return False, None
