"""The pipelined text lane: gather → model queue → embed → store and report.

The gather stage takes validated tasks as they come (queueing their
``processing`` statuses, cutting documents into chunks) and puts their texts
into the :class:`~engine.model_queue.ModelQueue` with their real token counts
(the model's tokenizer, on the model manager's tokenizer thread; characters /
4 for a model without a fast tokenizer). The embed stage takes model calls of texts of
nearly the same length out of that queue and runs them on the device threads
(``models.parallel_calls``: one call computing on each, models/manager.py),
with the next one already queued behind them, so the device never waits for
the event loop; a call is queued behind busy device threads only once a
whole call's worth of texts waits, and an idle device thread takes whatever
waits at once (a lone task is not held back). A task whose texts are all embedded goes to the
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
from collections import defaultdict
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from core.errors import ModelLoadError, PermanentError
from engine.batcher import Batcher
from engine.model_queue import CallKey, ModelCall, ModelQueue
from engine.stages import LaneBase, Steps
from engine.work import Outcome, WorkItem, estimate_tokens
from tasks import types as task_types
from tasks.inputs import Prepared, TextPreparer, add_document_vectors

if TYPE_CHECKING:
    from models.base import EmbedderInfo
    from models.manager import ModelManager

log = logging.getLogger("worker.task_processor")
T = TypeVar("T")

#: model calls handed to the device threads beyond one per thread, plus one: one computing per device thread
#: (``ModelManager.parallel_calls``) and one waiting behind them
CALLS_AHEAD = 2


CallResult = tuple[np.ndarray, "EmbedderInfo", float, float]
#: a task on its way into the model queue: its outcome, its texts' cache keys, the vectors the cache had
_Pending = tuple[Outcome, list[str | None], dict[int, np.ndarray]]
#: what the cache had for a task's texts as sent: those texts, their keys, the vectors found (index -> vector)
_Found = tuple[list[str], list[str | None], dict[int, np.ndarray]]


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
        self._waiting = 0  # acquirers that found no room (a release wakes them; none: nothing to wake)

    async def acquire(self, n: int) -> None:
        if not self._waiting and (self.held == 0 or self.held + n <= self.limit):
            self.held += n  # room, and nobody before this one: no lock, no wait (twice per one-text task)
            return
        self._waiting += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self.held == 0 or self.held + n <= self.limit)
                self.held += n
        finally:
            self._waiting -= 1

    def release(self, n: int) -> None:
        self.held -= n
        if self._waiting:
            asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class TextLane(LaneBase):
    """The text lane (:class:`~engine.stages.Lane`): text, batch and document tasks, batched across tasks."""

    name = "text"

    def __init__(self, steps: Steps, preparer: TextPreparer) -> None:
        super().__init__(steps, Batcher(weight=lambda i: i.weight, cost=lambda i: i.tokens))
        self.max_batch_tokens: int = self.settings.max_batch_tokens
        self.queue = ModelQueue(max_tokens=self.max_batch_tokens)
        self._preparer = preparer
        self._arrived = asyncio.Event()  # texts were queued
        self._finished: list[Outcome] = []  # tasks whose texts are all embedded (or that failed)
        self._has_finished = asyncio.Event()
        self._computing = 0  # model calls handed to the device thread
        self._room = asyncio.Event()  # the model queue went below its bound
        self.texts_per_s = 0.0  # the model's recent speed (moving average over calls)
        self._stages: list[asyncio.Future[None]] = []
        self._reporting: asyncio.Future[None] | None = None  # the delivery of the last batch written

    # -- the lane interface ----------------------------------------------------------------
    def start(self) -> None:
        if self._stages and not all(stage.done() for stage in self._stages):
            return  # running (after a drain the gather stage alone has ended: the others finish what it left)
        self._stages = [
            asyncio.ensure_future(self._gather()),
            asyncio.ensure_future(self._embed()),
            asyncio.ensure_future(self._store()),
        ]

    async def run(self) -> None:
        """Start the stages and wait for them (a stage ends only on a bug or when draining); cancel to close."""
        self.start()
        try:
            await asyncio.gather(*self._stages)
        finally:
            await self.close()

    def drain(self, seconds: float) -> None:
        """Stop taking tasks; of those queued, keep what the model can do in ``seconds`` at its recent speed.

        The others (none of their texts reached the model) leave the lane
        unacknowledged, for another worker; so a long queue does not hold
        the shutdown up, and a short one is not done twice.
        """
        self._accepting = False
        waiting = self.waiting.clear()
        dropped = self.queue.drop_unstarted(keep_texts=int(self.texts_per_s * seconds))
        if waiting or dropped:
            log.info("Draining: %d queued tasks left unacknowledged for another worker", len(waiting) + len(dropped))
        self._left(len(waiting))
        self._left(len(dropped), active=True)

    async def close(self) -> None:
        stages, self._stages = self._stages, []
        if self._reporting is not None:
            stages.append(self._reporting)
            self._reporting = None
        for stage in stages:
            stage.cancel()
        await asyncio.gather(*stages, return_exceptions=True)

    # -- the stages ---------------------------------------------------------------------------
    async def _gather(self) -> None:
        settings = self.settings
        while self._accepting:
            while self.queue.texts >= settings.max_inflight_texts:  # documents count one text at intake
                self._room.clear()
                await self._room.wait()
            batch = await self.waiting.next_batch(settings.max_batch_size, self._wait, max_cost=self.max_batch_tokens)
            if not self._accepting:  # draining: these stay unacknowledged and go to another worker
                self._left(len(batch))
                break
            ok, live = await self._guard(batch, self._begin(batch))
            if not ok or live is None:
                self._left(len(batch))
                continue
            self._left(len(batch) - len(live))  # expired: failed
            self._active += len(live)
            outcomes = [self._outcome(item) for item in live]
            ok, refused = await self._guard(live, self._enqueue(outcomes))
            if ok:
                self._arrived.set()
                self._finish(refused or [])
            else:
                self._left(len(outcomes), active=True)

    async def _begin(self, batch: list[WorkItem]) -> list[WorkItem]:
        live = await self.steps.expire(batch)
        await self.steps.begin(live)
        return live

    def _wait(self) -> float:
        """Waiting for more tasks pays only while the model is busy anyway; an idle one starts at once."""
        return self.settings.batch_wait_ms / 1000 if self._computing else 0.0

    async def _embed(self) -> None:
        manager = self.steps.manager
        parallel = manager.parallel_calls  # device threads: that many calls compute at once
        ahead = parallel + CALLS_AHEAD - 1
        running: list[tuple[ModelCall, asyncio.Future[CallResult]]] = []
        while True:
            self._arrived.clear()
            while len(running) < ahead:
                # an idle device thread takes whatever waits; a call queued behind busy ones waits to be whole
                call = self.queue.take(full_only=len(running) >= parallel)
                if call is None:
                    break
                running.append((call, asyncio.ensure_future(run_call(manager, call))))
                self._computing += 1
                self._room.set()
            if not running:
                await self._arrived.wait()
                continue
            waits: set[asyncio.Future[object]] = {computing for _, computing in running}
            arrived = None
            if len(running) < ahead:  # wake up for new texts too: they may fill the next call
                arrived = asyncio.ensure_future(self._arrived.wait())
                waits.add(arrived)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if arrived is not None:
                arrived.cancel()
            done = [entry for entry in running if entry[1].done()]
            running = [entry for entry in running if not entry[1].done()]
            for call, computing in done:  # in the order they were taken
                await self._settled(call, computing, beside=min(parallel, len(running) + len(done)))

    async def _settled(self, call: ModelCall, computing: asyncio.Future[CallResult], *, beside: int) -> None:
        """A model call ended (``beside``: the calls that computed at once, itself included): its tasks with every
        vector go on to the store stage, or fail with the call."""
        self._computing -= 1
        result: CallResult | BaseException = computing.exception() or computing.result()
        if not isinstance(result, BaseException):
            rate = beside * len(call.texts) / max(result[3] - result[2], 1e-6)  # the lane's, not one call's
            self.texts_per_s = rate if not self.texts_per_s else 0.8 * self.texts_per_s + 0.2 * rate
        try:
            self._finish(self._settle(call, result))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave tickets hanging
            log.exception("Unexpected error after a model call of %d texts; failing its tasks", len(call.texts))
            failed = self.queue.fail(call, exc)
            await self.steps.fail([o.item for o in failed], exc)
            self._left(len(failed), active=True)

    def _finish(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self._finished.extend(outcomes)
            self._has_finished.set()

    async def _store(self) -> None:
        """Write everything finished since the last write in one batch, one write at a time; a batch's records
        are delivered while the next batch is written (one delivery at most behind the writes).

        The store thread's lookups and the broker's acknowledgements then overlap instead of taking turns: a
        batch of resent one-text tasks spent about 60% of its time in the write (mostly the store's lookup of
        what it holds) and 40% delivering its records. A task's records still follow its write; per task id
        nothing changes (a later version of a task is taken in only after the earlier one is reported)."""
        while True:
            await self._has_finished.wait()
            self._has_finished.clear()
            outcomes, self._finished = self._finished, []
            if not outcomes:
                continue
            ok, _ = await self._guard([o.item for o in outcomes], self.steps.store(outcomes))
            if self._reporting is not None:
                await self._reporting
            if ok:
                self._reporting = asyncio.ensure_future(self._report(outcomes))
            else:  # failed by the guard
                self._left(len(outcomes), active=True)

    async def _report(self, outcomes: list[Outcome]) -> None:
        await self._guard([o.item for o in outcomes], self.steps.reporter.report(outcomes))
        self._left(len(outcomes), active=True)

    async def _guard(self, batch: list[WorkItem], step: Awaitable[T]) -> tuple[bool, T | None]:
        """Await one stage's step; on a bug, fail the batch's unfinished tasks and return (False, None)."""
        try:
            return True, await step
        except Exception as exc:  # noqa: BLE001 - a bug must not leave tickets hanging
            log.exception("Unexpected error in a batch of %d tasks; failing the unfinished ones", len(batch))
            await self.steps.fail(batch, exc)
            return False, None

    # -- into the model queue and out of it -------------------------------------------------
    def _outcome(self, item: WorkItem) -> Outcome:
        return Outcome(item=item, texts=item.texts, model=self.steps.model_for(item.task))

    async def _enqueue(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Fit texts to the model (chunks, long_text) and queue them with their token counts.

        Returns the outcomes finished on the way: failed (their ``error`` set), or
        with every vector from the embedding cache; they go straight to storing
        and reporting, without the model. With the cache, only the texts it lacks
        are queued (and a text already queued by another task follows that one).
        """
        cached: list[Outcome] = []
        early: dict[int, _Found] = {}
        if self.steps.cache is not None:
            outcomes = await self._early_hits(outcomes, cached, early)
        await self._preparer.prepare(outcomes)
        groups: dict[CallKey, list[Outcome]] = defaultdict(list)
        refused: list[Outcome] = []
        for out in outcomes:
            if out.error is None and not out.texts:
                out.error = PermanentError(
                    f"Task {out.item.task.task_id} ({out.item.task.task_type}) has no text to embed after "
                    "preparation; send non-empty text (the schema refuses empty texts, so this is a bug: report it)."
                )
            if out.error is not None:  # refused while preparing (e.g. a text over the model's limit)
                refused.append(out)
                continue
            task = out.item.task
            batch_size = min(
                getattr(task, "batch_size", None) or self.settings.default_batch_size, self.settings.max_batch_size
            )
            groups[CallKey(out.model, task.normalize, batch_size)].append(out)
        counted: list[tuple[CallKey, list[_Pending], list[int]]] = []
        for key, members in groups.items():
            try:
                pending = await self._look_up(key, members, cached, early)
            except PermanentError as exc:  # a model that cannot load fails these tasks, never the worker
                for out in members:
                    out.error = exc
                refused.extend(members)
                continue
            texts = [text for out, _, known in pending for i, text in enumerate(out.texts) if i not in known]
            if not texts:
                continue
            lengths = await self._count_tokens(key, pending, texts, refused)
            if lengths is not None:
                counted.append((key, pending, lengths))
        # only now into the queue: nothing above may leave part of the batch queued and part failed
        cache = self.steps.cache
        for key, pending, lengths in counted:
            offset = 0
            for out, text_keys, known in pending:
                n = len(out.texts) - len(known)
                followed = self.queue.add(
                    out, key, lengths[offset : offset + n], text_keys=text_keys or None, known=known
                )
                offset += n
                if text_keys and cache is not None:
                    cache.count(inflight=followed, misses=n - followed)
        add_document_vectors(cached)
        return refused + cached

    async def _count_tokens(
        self, key: CallKey, pending: list[_Pending], texts: list[str], refused: list[Outcome]
    ) -> list[int] | None:
        """The texts' real token counts (an estimate if counting fails); None when the model refuses them all."""
        try:
            lengths = await self.steps.manager.token_lengths(key.model, texts)
        except PermanentError as exc:
            for out, _, _ in pending:
                out.error = exc
            refused.extend(out for out, _, _ in pending)
            return None
        except Exception:  # noqa: BLE001 - counting only sorts the texts: estimate instead
            log.warning(
                "Counting the tokens of %d texts with %s failed; sorting them by an estimate",
                len(texts),
                key.model,
                exc_info=True,
            )
            lengths = None
        return lengths if lengths is not None else [estimate_tokens(t) for t in texts]

    async def _early_hits(
        self, outcomes: list[Outcome], cached: list[Outcome], early: dict[int, _Found]
    ) -> list[Outcome]:
        """Look tasks whose texts are embedded as sent (text, batch, plugin types with ``fitted_texts``) up in the
        embedding cache, before fitting them to the model: a task whose every text is found goes to ``cached``
        without the tokenizer (a text the cache holds was embedded as it is, so it fits the model whose identity
        is in its key), and so do the tasks of a model that cannot load, failed. Returns the other outcomes;
        what was found for them is kept in ``early`` (by ``id``) so their texts are not looked up twice."""
        groups: dict[tuple[str, bool | None], list[Outcome]] = defaultdict(list)
        for out in outcomes:
            if out.error is None and out.texts and task_types.of(out.item.task).fitted_texts:
                groups[(out.model, out.item.task.normalize)].append(out)
        served: set[int] = set()
        for (model, normalize), members in groups.items():
            try:
                known = await self._identify(model)
            except PermanentError as exc:  # the model cannot load: these tasks fail now, without a second attempt
                for out in members:
                    out.error = exc
                    served.add(id(out))
                cached.extend(members)
                continue
            if known is None:  # no cache identity for this model: the usual path
                continue
            identity, info = known
            assert self.steps.cache is not None
            found = await self.steps.cache.lookup_texts(identity, normalize, info.dim, [out.texts for out in members])
            for out, (text_keys, vectors) in zip(members, found, strict=True):
                if len(vectors) < len(out.texts):
                    early[id(out)] = (list(out.texts), text_keys, vectors)
                    continue
                out.vectors = _rows([vectors[i] for i in range(len(out.texts))])
                out.info, out.embed_ms, out.prepared = info, 0.0, Prepared(texts=out.texts)
                cached.append(out)
                served.add(id(out))
        return [out for out in outcomes if id(out) not in served] if served else outcomes

    async def _identify(self, model: str) -> tuple[str, EmbedderInfo] | None:
        """The model's identity (the cache's key part) and info; None without one. Raises PermanentError for a
        model that cannot load."""
        try:
            identity, info = await self.steps.manager.identify(model)
        except PermanentError:
            raise
        except Exception:  # noqa: BLE001 - the cache only saves work: the model call that follows says what is wrong
            log.warning("Looking up the model %s for the embedding cache failed", model, exc_info=True)
            return None
        return (identity, info) if identity is not None else None

    async def _look_up(
        self, key: CallKey, members: list[Outcome], cached: list[Outcome], early: dict[int, _Found]
    ) -> list[_Pending]:
        """Fill ``members`` from the embedding cache: those with every vector found go to ``cached``; returns the
        others with their texts' cache keys and the vectors found. Raises PermanentError for a model that cannot
        load (that is when the model loads). A text :meth:`_early_hits` looked up as it is now is not asked again."""
        cache = self.steps.cache
        if cache is None:
            return [(out, [], {}) for out in members]
        try:
            identity, info = await self.steps.manager.identify(key.model)
        except PermanentError:
            raise
        except Exception:  # noqa: BLE001 - the cache only saves work: the model call that follows says what is wrong
            log.warning("Looking up the model %s for the embedding cache failed", key.model, exc_info=True)
            identity = None
        if identity is None:  # the model's identity could not be computed (logged at load): no cache for it
            return [(out, [], {}) for out in members]
        asks: list[list[int]] = []  # per member: the indices of its texts to look up now
        for out in members:
            before = early.get(id(out))
            if before is None or len(before[0]) != len(out.texts):
                asks.append(list(range(len(out.texts))))
            else:  # fitting changed only the texts it cut: those are new to the cache
                asks.append([i for i, text in enumerate(out.texts) if text != before[0][i]])
        found = await cache.lookup_texts(
            identity,
            key.normalize,
            info.dim,
            [[out.texts[i] for i in ask] for out, ask in zip(members, asks, strict=True)],
        )
        pending: list[_Pending] = []
        for out, ask, (asked_keys, asked_known) in zip(members, asks, found, strict=True):
            before = early.get(id(out))
            if before is not None and len(before[0]) == len(out.texts):
                text_keys, known = list(before[1]), dict(before[2])
                for j, i in enumerate(ask):
                    text_keys[i] = asked_keys[j]
                    known.pop(i, None)
                    if j in asked_known:
                        known[i] = asked_known[j]
            else:
                text_keys, known = asked_keys, asked_known
            if len(known) < len(out.texts):
                pending.append((out, text_keys, known))
                continue
            out.vectors = _rows([known[i] for i in range(len(out.texts))])
            out.info, out.embed_ms = info, 0.0
            cached.append(out)
        return pending

    def _settle(self, call: ModelCall, result: CallResult | BaseException) -> list[Outcome]:
        """Hand a model call's vectors (or its error) to its tasks; returns the tasks now finished."""
        model = call.key.model
        if isinstance(result, BaseException):
            if not isinstance(result, PermanentError):
                log.error("Embedding %d texts with %s failed", len(call.texts), model, exc_info=result)
            # a model that cannot load fails every task waiting for it, not one call after the other
            return self.queue.fail(call, result, whole_key=isinstance(result, ModelLoadError))
        vectors, info, started, ended = result
        metrics, cache = self.steps.metrics, self.steps.cache
        metrics.batch_size.observe(len(call.texts))
        metrics.inference_seconds.labels(model).observe(ended - started)
        finished = self.queue.complete(call, vectors, info, started, ended)
        if cache is not None and call.identity is not None and len(vectors) == len(call.texts):
            cache.store(cache.text_keys(call.identity, call.key.normalize, call.texts), vectors)
        add_document_vectors(finished)
        return finished


def _rows(vectors: list[np.ndarray]) -> np.ndarray:
    """The cached vectors of one task as a float32 matrix of its own (a copy: the cache keeps its vectors); one
    vector, a one-text task's, without ``np.stack``'s cost (a few microseconds per task, resends are all hits)."""
    if len(vectors) == 1:
        return vectors[0].reshape(1, -1).astype(np.float32)
    return np.stack(vectors).astype(np.float32)
