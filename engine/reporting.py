"""Results, statuses and dead letters: what a task's end looks like on Kafka, delivered before its ack."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from core.errors import PermanentError, RetryableError
from core.retry import retry_forever
from engine.publisher import RecordPublisher
from tasks import types as task_types
from tasks.records import ErrorInfo, ModelIdentityInfo, ResultRecord, Status, Timings

if TYPE_CHECKING:
    from core.settings import Settings
    from engine.acks import Ticket
    from engine.work import Outcome, Source, WorkItem
    from ops.metrics import Metrics
    from tasks.schema import Task

log_main = logging.getLogger("worker.main")
log_proc = logging.getLogger("worker.task_processor")


def _note_delivered(future: asyncio.Future[Any], name: str, delivered: set[str]) -> None:
    if not future.cancelled() and future.exception() is None:
        delivered.add(name)


class _Minimal(Exception):
    """An error reduced to its record form (kind, class, message already cut), for the smallest dead letter."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.kind = info.kind
        self.error_class = info.error_class


class DeliveryError(RetryableError):
    kind = "kafka_unavailable"


class RecordRejectedError(PermanentError):
    """Kafka refused a record for good (e.g. larger than the broker's limit)."""

    kind = "record_rejected"


def _retriable(exc: BaseException) -> bool:
    """False when the failure (or what it wraps) is a Kafka error marked not retriable."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if getattr(err, "retriable", True) is False and type(err).__module__.startswith("aiokafka"):
            return False
        stack.extend(e for e in (err.__cause__, err.__context__, *err.args) if isinstance(e, BaseException))
    return True


def _reports(task_type: str | None) -> bool:
    """Whether tasks of ``task_type`` publish status and result records (all but a migration's ``reembed``)."""
    if task_type is None:
        return True
    try:
        return task_types.get(task_type).reports
    except Exception:  # noqa: BLE001 - an unknown or broken type is reported like any failed task
        return True


class Reporter:
    """Delivers each task's final records and counts the outcomes; ``on_done`` acknowledges the task after."""

    def __init__(
        self,
        publisher: RecordPublisher,
        *,
        stores: list[Any],
        settings: Settings,
        metrics: Metrics,
        on_done: Callable[[Ticket], Awaitable[None]],
    ) -> None:
        self.publisher = publisher
        self.stores = stores  # the pipeline's list: named in every result record
        self.settings = settings
        self.metrics = metrics
        self._on_done = on_done
        self.processed = 0
        self.failed = 0
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=20)
        #: tasks with statuses held back (kafka.status_delay_ms), in intake order, and the task that sweeps them
        self._held: deque[weakref.ref[WorkItem]] = deque()
        self._sweeper: asyncio.Future[None] | None = None
        self._sweeping_stopped = False
        # per task type: the completed counter and the duration histogram (labels() costs a lock and a lookup)
        self._completed: dict[str, tuple[Any, Any]] = {}
        self._identity_info: dict[Any, ModelIdentityInfo] = {}  # per model identity: its form in result records

    async def report(self, outcomes: list[Outcome]) -> None:
        """Deliver every task's result and ``completed`` status, awaiting the broker once per batch.

        All records are queued first and their delivery awaited together; a
        task whose records did not all arrive goes through :meth:`_deliver`
        again on its own (retried; refused for good → the task fails).
        """
        now = time.monotonic()
        done: list[tuple[Outcome, ResultRecord, float]] = []
        for out in outcomes:
            item, task = out.item, out.item.task
            self.closing(item)
            if out.handed_over or (item.ticket.revoked and out.error is None):  # revoked since the write: not reported
                await self.handed_over(item.ticket, task.task_id)
                continue
            if not _reports(item.kind):  # a migration's reembed: silent on success, dead-lettered on failure
                await self._quietly_done(out)
                continue
            if out.error is not None:
                await self.fail(
                    task.task_id, task.task_type, item.raw, out.error, item.ticket, item.source, item.pending
                )
                continue
            total_ms = (now - item.received_at) * 1000
            done.append((out, self._result(out, total_ms), total_ms))
        if not done:
            return
        await asyncio.gather(*(f for out, _, _ in done for f in out.item.pending), return_exceptions=True)
        queued: list[list[Awaitable[Any]] | None] = []
        for out, result, _ in done:
            try:
                queued.append(await self._send_completed(result, out.item.task))
            except self.publisher.errors:
                queued.append(None)
        flat = [f for futures in queued if futures for f in futures]
        outcomes_of = iter(await asyncio.gather(*flat, return_exceptions=True))
        for (out, result, total_ms), futures in zip(done, queued, strict=True):
            item, task = out.item, out.item.task
            arrived = [next(outcomes_of) for _ in futures or ()]
            delivered = futures is not None and not any(isinstance(a, BaseException) for a in arrived)
            if not delivered:
                try:
                    await self._deliver(
                        lambda result=result, task=task: self._send_completed(result, task),
                        [],
                        what=f"publishing the result of task {task.task_id}",
                    )
                except RecordRejectedError as exc:
                    hint = " (processing.include_vectors puts every vector into it)" if result.vectors else ""
                    error = RecordRejectedError(f"Task {task.task_id}: the result record was refused{hint}: {exc}")
                    await self.fail(task.task_id, task.task_type, item.raw, error, item.ticket, item.source)
                    continue
            self._count_completed(task.task_type, total_ms)
            log_proc.info("Task %s completed successfully in %.2fs", task.task_id, total_ms / 1000)
            await self._on_done(item.ticket)

    async def handed_over(self, ticket: Ticket, task_id: str) -> None:
        """A task whose partition was revoked before it was written or failed: done here, unacknowledged and
        unreported (the partition's new owner processes it from the committed offset and reports it)."""
        self.metrics.handed_over.inc()
        log_proc.info(
            "Task %s: its partition was revoked in a rebalance; the worker that gets it processes the task again",
            task_id,
        )
        await self._on_done(ticket)

    async def _quietly_done(self, out: Outcome) -> None:
        """A task that publishes nothing of its own (:attr:`tasks.types.TaskType.reports` false) is done."""
        item, task = out.item, out.item.task
        if out.error is not None:
            await self.fail(task.task_id, item.kind, item.raw, out.error, item.ticket, item.source, item.pending)
            return
        outcome = "skipped" if out.skipped else "written"
        self.metrics.migration_records.labels(outcome).inc(len(out.ids))
        self.metrics.migration_tasks.labels(outcome).inc()
        log_proc.debug("Re-embedded task %s (%s, %d records)", task.task_id, outcome, len(out.ids))
        await self._on_done(item.ticket)

    def _result(self, out: Outcome, total_ms: float) -> ResultRecord:
        task = out.item.task
        return ResultRecord(
            task_id=task.task_id,
            status="completed",
            worker_id=self.settings.worker_id,
            task_type=task.task_type,
            model=out.model,
            dimension=out.info.dim if out.info else None,
            model_identity=self._identity_record(out.identity) if out.identity is not None else None,
            count=len(out.ids),
            vector_ids=out.ids,
            collection=task.collection or self.settings.default_collection,
            stores=[s.describe() for s in self.stores],
            timings=Timings(
                queue_ms=max(0.0, total_ms - out.embed_ms - out.store_ms),
                embed_ms=out.embed_ms,
                store_ms=out.store_ms,
                total_ms=total_ms,
            ),
            vectors=out.vectors.tolist() if self.settings.include_vectors and out.vectors is not None else None,
            truncated_items=out.prepared.truncated if out.prepared else [],
            chunks=len(out.prepared.chunks) if out.prepared and out.prepared.chunks is not None else None,
            deleted=out.deleted or None,
        )

    def _identity_record(self, identity: Any) -> ModelIdentityInfo:
        info = self._identity_info.get(identity)
        if info is None:
            info = self._identity_info[identity] = ModelIdentityInfo(**identity.to_dict())
        return info

    async def deleted(
        self, task: Task, collection: str, counts: dict[str, int], ticket: Ticket, received_at: float
    ) -> None:
        """A delete task's result (the vectors each store removed) and ``completed`` status, delivered; then done."""
        total_ms = (time.monotonic() - received_at) * 1000
        result = ResultRecord(
            task_id=task.task_id,
            status="completed",
            worker_id=self.settings.worker_id,
            task_type=task.task_type,
            collection=collection,
            stores=[s.describe() for s in self.stores],
            timings=Timings(store_ms=total_ms, total_ms=total_ms),
            deleted=counts,
        )
        await self._deliver(
            lambda: self._send_completed(result, task), [], what=f"publishing the result of delete task {task.task_id}"
        )
        self._count_completed(task.task_type, total_ms)
        await self._on_done(ticket)

    def _count_completed(self, task_type: str, total_ms: float) -> None:
        children = self._completed.get(task_type)
        if children is None:
            m = self.metrics
            children = self._completed[task_type] = (
                m.tasks_processed.labels(task_type, "completed"),
                m.task_seconds.labels(task_type),
            )
        self.processed += 1
        children[0].inc()
        children[1].observe(total_ms / 1000)

    async def _send_completed(self, result: ResultRecord, task: Task) -> list[Awaitable[Any]]:
        return [
            await self.publisher.result(result),
            await self.publisher.status(task.task_id, "completed", task_type=task.task_type),
        ]

    # -- failures and delivery -------------------------------------------------------------
    async def fail_item(self, item: WorkItem, error: BaseException) -> None:
        """:meth:`fail` for a task the pipeline holds: no held early status may follow its ``failed`` one, and
        its final records wait for the statuses it already queued."""
        self.closing(item)
        await self.fail(item.task.task_id, item.kind, item.raw, error, item.ticket, item.source, item.pending)

    async def fail(
        self,
        task_id: str,
        task_type: str | None,
        raw: bytes | str | None,
        error: BaseException,
        ticket: Ticket,
        source: Source | None,
        pending: list[Awaitable[Any]] | None = None,
    ) -> None:
        """Failed status + failed result + dead letter, delivered; then the ticket is done.

        A broker that refuses these records for good (over its size limit) gets them again with the
        dead letter's payload cut to 4 KiB, then as a minimal set: no payload, the error cut to 512
        characters, the record's topic/partition/offset, so the record can be read from there.

        A task whose partition was revoked meanwhile is handed over instead: the worker that gets the partition
        processes it again and fails it there (one dead letter, not one per worker).
        """
        if ticket.revoked:
            await self.handed_over(ticket, task_id)
            return
        info = ErrorInfo.of(error)
        ticket.failed = True
        reports = _reports(task_type)
        tiers = [(raw, error, "full"), ((raw or b"")[:4096], error, "payload cut to 4 KiB")]
        tiers.append((None, _Minimal(ErrorInfo.of(error, limit=512)), "minimal: no payload, error cut to 512 chars"))
        delivered: set[str] = set()  # records of this task already accepted: a later attempt skips them
        for number, (payload, err, how) in enumerate(tiers):

            async def send(payload: bytes | str | None = payload, err: BaseException = err) -> list[Awaitable[Any]]:
                result = ResultRecord(
                    task_id=task_id,
                    status="failed",
                    worker_id=self.settings.worker_id,
                    task_type=task_type,
                    error=ErrorInfo.of(err),
                )
                makers = {
                    "dead_letter": lambda: self.publisher.dead_letter(payload, err, task_id=task_id, source=source),
                    "result": lambda: self.publisher.result(result),
                    "status": lambda: self.publisher.status(task_id, "failed", task_type=task_type, error=err),
                }
                if not reports:  # a migration's reembed: the user's task id has its own status; a dead letter only
                    del makers["result"], makers["status"]
                futures = []
                for name, make in makers.items():
                    if name not in delivered:
                        future = asyncio.ensure_future(await make())
                        future.add_done_callback(lambda f, name=name: _note_delivered(f, name, delivered))
                        futures.append(future)
                return futures

            try:
                what = f"dead-lettering task {task_id} ({how})"
                await self._deliver(send, (pending or []) if number == 0 else [], what=what)
                break
            except RecordRejectedError as exc:
                if number == len(tiers) - 1:
                    # nothing smaller to send: the record stays at its source offset, the log says where
                    log_proc.error(
                        "Kafka refused even a minimal dead letter for task %s from %s (%s); the task is "
                        "acknowledged as failed without records: check the output topics' max.message.bytes",
                        task_id,
                        source,
                        exc,
                    )
        if not reports:
            self.metrics.migration_tasks.labels("failed").inc()
        self.failed += 1
        self.metrics.tasks_processed.labels(task_type or "invalid", "failed").inc()
        self.metrics.errors.labels(info.kind).inc()
        self.recent_failures.appendleft(
            {
                "task_id": task_id,
                "task_type": task_type,
                "error": info.message[:300],
                "kind": info.kind,
                "at": time.time(),
            }
        )
        log_proc.warning("Task %s failed: %s", task_id, info.message)
        await self._on_done(ticket)

    async def _deliver(
        self, send: Callable[[], Awaitable[list[Awaitable[Any]]]], pending: list[Awaitable[Any]], *, what: str
    ) -> None:
        # Earlier records of the task (received/processing) go first; a lost one
        # of those is not worth blocking the task, the final records are.
        await asyncio.gather(*pending, return_exceptions=True)

        async def attempt() -> None:
            try:
                await RecordPublisher.delivered(await send())
            except self.publisher.errors as exc:
                if not _retriable(exc):
                    raise RecordRejectedError(f"Kafka refused a record for good while {what}: {exc!r}") from exc
                raise DeliveryError(f"Kafka did not accept records while {what}: {exc!r}") from exc

        await retry_forever(attempt, what=what, on_retry=self.count_retry)

    def count_retry(self, attempt: int, exc: BaseException) -> None:
        self.metrics.errors.labels(ErrorInfo.of(exc).kind).inc()

    async def early_status(self, item: WorkItem, status: Status) -> None:
        """received/processing are best effort: failing to queue them never stops the task; with
        ``kafka.status_updates: terminal`` they are not sent.

        With ``kafka.status_delay_ms`` they are held back that long from the task's intake: a task finished
        sooner gets only its final status; one still unfinished then gets the held ones at once, in order, and
        later ones as they happen. Every one is queued before the task's final status (they are in
        ``item.pending``, which the final records wait for), never after it."""
        if self.settings.status_updates == "terminal" or not _reports(item.kind) or item.closing or item.ticket.revoked:
            return  # (revoked: handed over, its next owner sends its statuses; one sent now could outlast them)
        delay = self.settings.status_delay_ms / 1000
        if delay > 0 and not item.statuses_due:
            if item.received_at + delay > time.monotonic():
                if not item.held_statuses:  # its first held status: it joins the sweep
                    self._held.append(weakref.ref(item))  # a finished task is not kept for the sweep's sake
                    if not self._sweeping_stopped and (self._sweeper is None or self._sweeper.done()):
                        self._sweeper = asyncio.ensure_future(self._sweep(delay))
                item.held_statuses.append(status)
                return
            item.statuses_due = True  # it waited past the delay before its first status (an earlier version)
        if item.status_sender is not None and not item.status_sender.done():
            item.held_statuses.append(status)  # after the held ones still being queued
            return
        await self._queue_status(item, status)

    async def _sweep(self, delay: float) -> None:
        """Hand the held statuses of each task still unfinished ``delay`` after its intake to
        :meth:`_statuses_due`; drop finished tasks. One task for all of them (a timer per task cost a one-text
        task more of the event loop), in the order they joined (nearly intake order: a task that waited for an
        earlier version of itself joins later, and is sent at most ``delay`` late); it ends when none is held."""
        held = self._held
        while held:
            now = time.monotonic()
            while held:
                item = held[0]()
                if item is not None and not item.closing and item.received_at + delay > now:
                    break
                held.popleft()
                if item is not None:
                    self._statuses_due(item)
            if held:
                await asyncio.sleep(max(0.005, item.received_at + delay - now))  # type: ignore[union-attr]

    async def stop_sweeping(self) -> None:
        """Stop the sweep (the lanes stop); statuses still held stay held until :meth:`resume_sweeping`."""
        self._sweeping_stopped = True
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and not sweeper.done():
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    def resume_sweeping(self) -> None:
        """Sweep again (the lanes start), the statuses held meanwhile first."""
        self._sweeping_stopped = False
        if self._held and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.ensure_future(self._sweep(self.settings.status_delay_ms / 1000))

    def _statuses_due(self, item: WorkItem) -> None:
        if item.closing or item.ticket.failed or item.ticket.done or item.ticket.forgotten:
            return
        item.statuses_due = True
        if item.held_statuses:
            item.status_sender = asyncio.ensure_future(self._send_held(item))
            item.pending.append(item.status_sender)

    async def _send_held(self, item: WorkItem) -> None:
        """Queue the held statuses in order and wait for the broker to have them (the final records wait for
        this task, as they wait for statuses sent at once); a status held while it waited is sent after them."""
        while True:
            first = len(item.pending)
            while item.held_statuses and not (item.closing or item.ticket.failed):
                await self._queue_status(item, item.held_statuses.pop(0))
            await asyncio.gather(*item.pending[first:], return_exceptions=True)
            if not item.held_statuses or item.closing or item.ticket.failed:
                return

    async def _queue_status(self, item: WorkItem, status: Status) -> None:
        try:
            item.pending.append(await self.publisher.status(item.task.task_id, status, task_type=item.task.task_type))
        except self.publisher.errors as exc:
            log_main.warning("Could not queue the %s status of task %s: %r", status, item.task.task_id, exc)

    @staticmethod
    def closing(item: WorkItem) -> None:
        """``item``'s final records are about to be queued: statuses held back are dropped, none is sent after."""
        item.closing = True
        item.held_statuses.clear()
