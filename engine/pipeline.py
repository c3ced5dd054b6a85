"""The Kafka-free heart of the worker: validate, batch, embed, store, report.

Agents hand every source record to :meth:`TaskPipeline.intake` together with
a :class:`~engine.acks.Ticket`; the pipeline calls ``on_done(ticket)`` once the
task's vectors are stored and its status/result records are delivered (or,
for a task that cannot succeed, once its ``failed`` status and dead letter
are delivered). Only then may the source offset be acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from core.errors import InvalidTaskError, ModelLoadError, PermanentError, cap_message
from engine.acks import Ticket
from engine.batcher import Batcher
from engine.embedding_cache import EmbeddingCache
from engine.image_lane import ImageLane
from engine.lane import CallResult, TextBudget, TextLane, run_call
from engine.model_queue import CallKey, ModelCall, ModelQueue
from engine.publisher import RecordPublisher
from engine.reporting import Reporter
from engine.store_writer import StoreWriter
from engine.work import Outcome, Source, WorkItem, estimate_tokens
from models.manager import ModelManager
from ops.metrics import Metrics
from sinks.base import BaseVectorDB
from tasks.inputs import TextPreparer, add_document_vectors
from tasks.schema import DeleteTask, ImageTask, Limits, parse_task, tombstone

log_main = logging.getLogger("worker.main")
log_proc = logging.getLogger("worker.task_processor")
T = TypeVar("T")
#: a task on its way into the model queue: its outcome, its texts' cache keys, the vectors the cache had
_Pending = tuple[Outcome, list[str | None], dict[int, np.ndarray]]


class TaskPipeline:
    """Validates tasks, batches texts across tasks, embeds, stores and reports."""

    def __init__(
        self,
        *,
        settings: Any,
        manager: ModelManager,
        stores: Sequence[BaseVectorDB],
        publisher: RecordPublisher,
        on_done: Callable[[Ticket], Awaitable[None]],
        metrics: Metrics | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.cache = cache  # the embedding cache (engine/embedding_cache.py); None: every text goes to the model
        self.manager = manager
        self.stores = list(stores)
        self.publisher = publisher
        self._notify_done = on_done
        # max_concurrent_tasks bounds the records this worker holds unfinished:
        # a slot is taken at intake and given back when the record is done.
        # max_inflight_texts bounds their texts. Both make intake wait (backpressure).
        self._slots = asyncio.Semaphore(settings.max_concurrent_tasks)
        self._texts = TextBudget(settings.max_inflight_texts)
        self._bytes = TextBudget(settings.max_inflight_bytes)  # record bytes, the same waiting rule
        self._held: dict[int, tuple[int, int]] = {}  # id(ticket) -> (texts, bytes) it holds of the budgets
        self.limits = Limits.of(settings)
        # per task id, in partition order: tasks taken in and not done, and deletes running (see intake)
        self._active: dict[str, int] = {}
        self._task_of: dict[int, str] = {}  # id(ticket) -> task id
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._deletes: set[asyncio.Future[None]] = set()
        self._ids_changed = asyncio.Condition()
        self._delete_waiters = 0
        self.max_batch_tokens: int = settings.max_batch_tokens
        self._text_lane: Batcher[WorkItem] = Batcher(weight=lambda i: i.weight, cost=lambda i: i.tokens)
        self._in_flight = 0  # gathered batches and tasks in the text lane; drain waits for 0
        self._lane: TextLane | None = None
        self._images = ImageLane(self)
        self._preparer = TextPreparer(manager, settings)
        self.reporter = Reporter(
            publisher, stores=self.stores, settings=settings, metrics=self.metrics, on_done=self._on_done
        )
        self.writer = StoreWriter(
            self.stores, settings=settings, metrics=self.metrics, on_retry=self.reporter.count_retry
        )
        self.active_tasks = 0
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def processed(self) -> int:
        return self.reporter.processed

    @property
    def failed(self) -> int:
        return self.reporter.failed

    @property
    def recent_failures(self) -> deque[dict[str, Any]]:
        return self.reporter.recent_failures

    # -- intake ------------------------------------------------------------------------
    async def intake(
        self, raw: bytes | str | None, ticket: Ticket, source: Source | None = None, key: bytes | None = None
    ) -> None:
        """Validate one record and route it; waits while the text lane is full (backpressure).

        A record without a value and with a key (a tombstone) deletes the task the key names. Per task id, the
        records of a partition take effect in order: a delete waits for the earlier tasks of its id to finish,
        and a task waits for an earlier delete of its id. While the worker drains for shutdown this waits
        forever: the record stays unacknowledged and goes to another worker.
        """
        if not self.accepting:
            await asyncio.Event().wait()
        await self._slots.acquire()  # waits while max_concurrent_tasks records are unfinished
        size = len(raw) if raw is not None else 0
        await self._bytes.acquire(size)  # waits while max_inflight_bytes record bytes are unfinished
        self._held[id(ticket)] = (0, size)
        try:
            task = tombstone(key) if raw is None and key is not None else parse_task(raw, limits=self.limits)
            if isinstance(task, DeleteTask):
                self._start_delete(task, raw, ticket, source)
                return
            item = WorkItem(task=task, raw=raw, ticket=ticket, source=source)
        except Exception as exc:  # noqa: BLE001 - whatever a record holds, it can fail only itself
            error = exc if isinstance(exc, InvalidTaskError) else _unreadable(exc)
            task_id = error.task_id or _fallback_task_id(source)
            log_main.warning("Rejected record %s as task %s: %s", _where(source), task_id, error)
            await self.reporter.fail(task_id, None, raw, error, ticket, source)
            return
        if task.task_id in self._deleting:  # a delete of this id came first: it takes effect first
            await asyncio.shield(self._deleting[task.task_id])
        self._task_of[id(ticket)] = task.task_id
        self._active[task.task_id] = self._active.get(task.task_id, 0) + 1
        await self.reporter.early_status(item, "received")
        if isinstance(task, ImageTask):
            await self._images.put(item)
            return
        await self._texts.acquire(item.weight)  # waits while max_inflight_texts texts are unfinished
        self._held[id(ticket)] = (item.weight, size)
        await self._text_lane.put(item)

    async def run_lanes(self) -> None:
        """Run the text and the image lane until cancelled."""
        await asyncio.gather(self.run_text_lane(), self._images.run())

    # -- text lane -----------------------------------------------------------------------
    async def run_text_lane(self) -> None:
        """Process text batches forever, pipelined (see :mod:`engine.lane`); cancel to stop."""
        self._lane = TextLane(self)
        await self._lane.run()

    def _work_started(self, n: int = 1) -> None:
        self._in_flight += n
        self._idle.clear()

    def _work_finished(self, n: int = 1, *, active: int = 0) -> None:
        """``n`` units (a gathered batch, or tasks) left the lane; ``active`` of them were counted by :meth:`prepare`."""
        self._in_flight -= n
        self.active_tasks -= active
        if self._in_flight <= 0:
            self._in_flight = 0
            self._idle.set()

    async def _fail_unfinished(self, batch: list[WorkItem], exc: BaseException) -> None:
        """Dead-letter every task of a broken batch that has no final status yet.

        If even that fails, the worker exits: its records are not acknowledged,
        so another worker gets them, and no stuck ticket blocks the commits.
        """
        self.metrics.errors.labels("internal").inc()
        try:
            for item in batch:
                if not item.ticket.done:
                    task = item.task
                    await self.reporter.fail(task.task_id, task.task_type, item.raw, exc, item.ticket, item.source)
        except Exception:  # noqa: BLE001 - last resort
            log_proc.critical(
                "Cannot fail a broken batch either; exiting so another worker takes the tasks", exc_info=True
            )
            os._exit(70)

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and let the tasks the model has started on finish; True when they did within ``timeout``.

        Tasks still queued, and those in the model queue none of whose texts
        has reached the model yet beyond what the model can do in half of
        ``timeout``, stay unacknowledged and are redelivered to another worker.
        """
        self.accepting = False
        if self._lane is not None:
            self._lane.drop_unstarted(seconds=timeout / 2)  # half the time: storing and reporting follow
        try:
            await asyncio.wait_for(
                asyncio.gather(self._idle.wait(), self._images.idle.wait(), *list(self._deletes)), timeout
            )
        except TimeoutError:
            return False
        return True

    async def process_text_batch(self, batch: list[WorkItem]) -> None:
        """Embed, store and report one batch, one stage after the other (the lane overlaps them)."""
        outcomes = await self.prepare(batch)
        try:
            if outcomes:
                await self.embed(outcomes)
                await self.store_and_report(outcomes)
        finally:
            self.active_tasks -= len(outcomes)

    async def prepare(self, batch: list[WorkItem]) -> list[Outcome]:
        """Fail the tasks that waited over task_timeout; queue ``processing`` for the others."""
        live = await self._drop_expired(batch)
        for item in live:
            log_main.info("Processing task %s of type %s", item.task.task_id, item.task.task_type)
            await self.reporter.early_status(item, "processing")
        self.active_tasks += len(live)
        return [self._outcome(item) for item in live]

    async def _drop_expired(self, batch: list[WorkItem]) -> list[WorkItem]:
        """Fail the tasks that waited longer than task_timeout; return the others."""
        started = time.monotonic()
        live = []
        for item in batch:
            if started - item.received_at > self.settings.task_timeout:
                error = PermanentError(
                    f"Task {item.task.task_id} waited {started - item.received_at:.0f}s, over task_timeout "
                    f"({self.settings.task_timeout:.0f}s, VECTORIZE_WORKER_TASK_TIMEOUT); resend it or raise the limit."
                )
                await self.reporter.fail(
                    item.task.task_id, item.task.task_type, item.raw, error, item.ticket, item.source, item.pending
                )
            else:
                live.append(item)
        return live

    async def embed(self, outcomes: list[Outcome]) -> None:
        """Embed ``outcomes`` one model call after the other (the lane overlaps calls with everything else)."""
        queue = ModelQueue(max_tokens=self.max_batch_tokens)
        await self.enqueue(outcomes, queue)
        while (call := queue.take()) is not None:
            try:
                result: CallResult | BaseException = await run_call(self.manager, call)
            except Exception as exc:  # noqa: BLE001 - settle() fails the call's tasks
                result = exc
            self.settle(queue, call, result)

    async def enqueue(self, outcomes: list[Outcome], queue: ModelQueue) -> list[Outcome]:
        """Fit texts to the model (chunks, long_text) and queue them with their token counts.

        Returns the outcomes finished on the way: failed (their ``error`` set), or
        with every vector from the embedding cache; they go straight to storing
        and reporting, without the model. With the cache, only the texts it lacks
        are queued (and a text already queued by another task follows that one).
        """
        await self._preparer.prepare(outcomes)
        groups: dict[CallKey, list[Outcome]] = defaultdict(list)
        refused: list[Outcome] = []
        cached: list[Outcome] = []
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
                pending = await self._look_up(key, members, cached)
            except PermanentError as exc:  # a model that cannot load fails these tasks, never the worker
                for out in members:
                    out.error = exc
                refused.extend(members)
                continue
            texts = [text for out, _, known in pending for i, text in enumerate(out.texts) if i not in known]
            if not texts:
                continue
            try:
                lengths = await self.manager.token_lengths(key.model, texts)
            except PermanentError as exc:
                for out, _, _ in pending:
                    out.error = exc
                refused.extend(out for out, _, _ in pending)
                continue
            except Exception:  # noqa: BLE001 - counting only sorts the texts: estimate instead
                log_proc.warning(
                    "Counting the tokens of %d texts with %s failed; sorting them by an estimate",
                    len(texts),
                    key.model,
                    exc_info=True,
                )
                lengths = None
            counted.append((key, pending, lengths if lengths is not None else [estimate_tokens(t) for t in texts]))
        # only now into the queue: nothing above may leave part of the batch queued and part failed
        for key, pending, lengths in counted:
            offset = 0
            for out, text_keys, known in pending:
                n = len(out.texts) - len(known)
                followed = queue.add(out, key, lengths[offset : offset + n], text_keys=text_keys or None, known=known)
                offset += n
                if text_keys and self.cache is not None:
                    self.cache.count(inflight=followed, misses=n - followed)
        add_document_vectors(cached)
        return refused + cached

    async def _look_up(self, key: CallKey, members: list[Outcome], cached: list[Outcome]) -> list[_Pending]:
        """Fill ``members`` from the embedding cache: those with every vector found go to ``cached``; returns the
        others with their texts' cache keys and the vectors found. Raises PermanentError for a model that cannot
        load (that is when the model loads)."""
        if self.cache is None:
            return [(out, [], {}) for out in members]
        try:
            identity, info = await self.manager.identify(key.model)
        except PermanentError:
            raise
        except Exception:  # noqa: BLE001 - the cache only saves work: the model call that follows says what is wrong
            log_proc.warning("Looking up the model %s for the embedding cache failed", key.model, exc_info=True)
            identity = None
        if identity is None:  # the model's identity could not be computed (logged at load): no cache for it
            return [(out, [], {}) for out in members]
        found = await self.cache.lookup_texts(identity, key.normalize, info.dim, [out.texts for out in members])
        pending: list[_Pending] = []
        for out, (text_keys, known) in zip(members, found, strict=True):
            if len(known) < len(out.texts):
                pending.append((out, text_keys, known))
                continue
            out.vectors = np.stack([known[i] for i in range(len(out.texts))]).astype(np.float32)
            out.info, out.embed_ms = info, 0.0
            cached.append(out)
        return pending

    def settle(self, queue: ModelQueue, call: ModelCall, result: CallResult | BaseException) -> list[Outcome]:
        """Hand a model call's vectors (or its error) to its tasks; returns the tasks now finished."""
        model = call.key.model
        if isinstance(result, BaseException):
            if not isinstance(result, PermanentError):
                log_proc.error("Embedding %d texts with %s failed", len(call.texts), model, exc_info=result)
            # a model that cannot load fails every task waiting for it, not one call after the other
            return queue.fail(call, result, whole_key=isinstance(result, ModelLoadError))
        vectors, info, started, ended = result
        self.metrics.batch_size.observe(len(call.texts))
        self.metrics.inference_seconds.labels(model).observe(ended - started)
        finished = queue.complete(call, vectors, info, started, ended)
        if self.cache is not None and call.identity is not None and len(vectors) == len(call.texts):
            self.cache.store(self.cache.text_keys(call.identity, call.key.normalize, call.texts), vectors)
        add_document_vectors(finished)
        return finished

    async def store_and_report(self, outcomes: list[Outcome]) -> None:
        await self.writer.write(outcomes)
        await self.reporter.report(outcomes)

    def _outcome(self, item: WorkItem) -> Outcome:
        return Outcome(item=item, texts=item.texts, model=item.task.model_name or self.settings.default_model)

    def _start_delete(self, task: DeleteTask, raw: bytes | str | None, ticket: Ticket, source: Source | None) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deleting[task.task_id] = done
        job = asyncio.ensure_future(self._delete(task, raw, ticket, source, done))
        self._deletes.add(job)
        job.add_done_callback(self._deletes.discard)

    async def _delete(
        self,
        task: DeleteTask,
        raw: bytes | str | None,
        ticket: Ticket,
        source: Source | None,
        done: asyncio.Future[None],
    ) -> None:
        """Remove every vector of the task from every store, after the earlier tasks of its id, and report it."""
        task_id = task.task_id
        received = time.monotonic()
        try:
            if self._active.get(task_id):
                self._delete_waiters += 1
                try:
                    async with self._ids_changed:
                        await self._ids_changed.wait_for(lambda: not self._active.get(task_id))
                finally:
                    self._delete_waiters -= 1
            collection = task.collection or self.settings.default_collection
            removed = await self.writer.delete_tasks(collection, [task_id])
            counts = {store: by_task.get(task_id, 0) for store, by_task in removed.items()}
            log_main.info("Task %s deleted: %s", task_id, counts)
            await self.reporter.deleted(task, collection, counts, ticket, received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a delete that cannot be done fails alone
            await self.reporter.fail(task_id, task.task_type, raw, exc, ticket, source)
        finally:
            if not done.done():
                done.set_result(None)
            if self._deleting.get(task_id) is done:
                del self._deleting[task_id]

    async def _on_done(self, ticket: Ticket) -> None:
        task_id = self._task_of.pop(id(ticket), None)
        if task_id is not None:
            left = self._active.pop(task_id, 1) - 1
            if left > 0:
                self._active[task_id] = left
            if self._delete_waiters:
                async with self._ids_changed:
                    self._ids_changed.notify_all()
        self._slots.release()
        texts, size = self._held.pop(id(ticket), (0, 0))
        if texts:
            self._texts.release(texts)
        if size:
            self._bytes.release(size)
        await self._notify_done(ticket)

    async def in_store_thread(self, func: Callable[[], T], store: BaseVectorDB) -> T:
        """Run ``func`` on ``store``'s own thread (the adapters block)."""
        return await self.writer.in_store_thread(func, store)

    def close(self) -> None:
        """Stop the store threads after the writes in progress (callers close the stores next)."""
        self.writer.close()


def _unreadable(exc: BaseException) -> InvalidTaskError:
    """An unexpected exception while reading a record, as that record's own error (a bug to report)."""
    return InvalidTaskError(
        cap_message(
            f"Invalid task: the worker could not read the record ({type(exc).__name__}: {exc}); "
            "check the payload against docs/task.schema.json, and report this message: the validator should "
            "have named the problem."
        )
    )


def _fallback_task_id(source: Source | None) -> str:
    # Deterministic, so a redelivered bad record maps to the same id.
    return f"invalid-{source[0]}-{source[1]}-{source[2]}" if source else f"invalid-{time.time_ns()}"


def _where(source: Source | None) -> str:
    return f"{source[0]}[{source[1]}]@{source[2]}" if source else "(no source)"
