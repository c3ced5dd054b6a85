"""The Kafka-free heart of the worker: validate, batch, embed, store, report.

Agents hand every source record to :meth:`TaskPipeline.intake` together with
a :class:`~engine.acks.Ticket`; the pipeline calls ``on_done(ticket)`` once the
task's vectors are stored and its status/result records are delivered (or,
for a task that cannot succeed, once its ``failed`` status and dead letter
are delivered). Only then may the source offset be acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from core.errors import InvalidTaskError, PermanentError, cap_message
from core.settings import Settings
from engine.acks import Ticket
from engine.embedding_cache import EmbeddingCache
from engine.image_lane import ImageLane
from engine.lane import TextBudget, TextLane
from engine.migrations import MigrationState, MigrationView
from engine.publisher import RecordPublisher
from engine.reporting import Reporter
from engine.stages import Lane, Steps
from engine.store_writer import StoreWriter
from engine.work import Outcome, Source, WorkItem
from models.manager import ModelManager
from ops.metrics import Metrics
from sinks.base import BaseVectorDB
from tasks import types as task_types
from tasks.inputs import TextPreparer
from tasks.reembed import ReembedTask, image_task, twin_of
from tasks.schema import DeleteTask, Limits, Task, parse_task, tombstone

log_main = logging.getLogger("worker.main")
log_proc = logging.getLogger("worker.task_processor")
T = TypeVar("T")


class TaskPipeline:
    """Takes records in (validation, backpressure, per-id order), routes each task to its lane, drains."""

    def __init__(
        self,
        *,
        settings: Settings,
        manager: ModelManager,
        stores: Sequence[BaseVectorDB],
        publisher: RecordPublisher,
        on_done: Callable[[Ticket], Awaitable[None]],
        metrics: Metrics | None = None,
        cache: EmbeddingCache | None = None,
        migrations: MigrationView | None = None,
        bind: Callable[[MigrationState], Awaitable[Any]] | None = None,
    ) -> None:
        self.settings = settings
        # the migration state of every alias (app/migration_state.py feeds it): where writes go, and the twins
        self.migrations = migrations if migrations is not None else MigrationView()
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
        self._id_waiters = 0  # deletes and tasks waiting for earlier tasks of their id
        self._held_deletes: set[asyncio.Future[None]] = set()  # deletes waiting for earlier tasks of their id
        self.reporter = Reporter(
            publisher, stores=self.stores, settings=settings, metrics=self.metrics, on_done=self._on_done
        )
        self.writer = StoreWriter(
            self.stores,
            settings=settings,
            metrics=self.metrics,
            on_retry=self.reporter.count_retry,
            identities=manager.identity_record,  # each task's vectors are written under their model's identity
            migrations=self.migrations,
            bind=bind,  # new collections behind an alias (stores.aliases)
        )
        # the dual write: a task of a migrating alias is acknowledged once its twin is written too (see _dual_write)
        # id(twin ticket) -> (resolved when the twin is done, its task id, the collection it writes)
        self._twin_of: dict[int, tuple[asyncio.Future[None], str, str]] = {}
        self._deferred: set[int] = set()  # id(task ticket) of tasks done but for their twins
        self._twin_waits: dict[int, asyncio.Future[None]] = {}  # id(task ticket) -> the job acknowledging it
        self._abandoned: set[int] = set()  # id(task ticket) of tasks left unacknowledged by a drain
        self._twins: dict[int, list[asyncio.Future[None]]] = {}  # id(task ticket) -> its twins
        self._jobs: set[asyncio.Future[None]] = set()
        # which migration epochs this worker applies: every record taken in before it saw them is done
        self._generation = 0
        self._epochs_at: list[tuple[int, dict[str, int]]] = [(0, self.migrations.epochs())]
        self._in_generation: Counter[int] = Counter()
        self._generation_of: dict[int, int] = {}  # id(ticket) -> the generation it was taken in under
        self.migrations.subscribe(self._migration_changed)
        self.steps = Steps(
            settings=settings,
            manager=manager,
            metrics=self.metrics,
            reporter=self.reporter,
            writer=self.writer,
            cache=cache,
            after_write=self._dual_write,
        )
        self.text = TextLane(self.steps, TextPreparer(manager, settings))
        self.images = ImageLane(self.steps)
        self.lanes: tuple[Lane, ...] = (self.text, self.images)
        self._lane_named: dict[str, Lane] = {lane.name: lane for lane in self.lanes}
        self.accepting = True

    @property
    def processed(self) -> int:
        return self.reporter.processed

    @property
    def failed(self) -> int:
        return self.reporter.failed

    @property
    def recent_failures(self) -> deque[dict[str, Any]]:
        return self.reporter.recent_failures

    @property
    def active_tasks(self) -> int:
        """Tasks the lanes have started on and not finished."""
        return sum(lane.active for lane in self.lanes)

    def lane_for(self, task: Task) -> Lane:
        """The lane a task runs in, as its type says (tasks/types.py): ``"text"`` (text, batch and document tasks,
        plugin text types) or ``"image"``."""
        lane = task_types.of(task).lane
        found = self._lane_named.get(lane)
        if found is None:
            raise ValueError(f"Task {task.task_id} ({task.task_type}) runs in lane {lane!r}, which has no queue here")
        return found

    # -- intake ------------------------------------------------------------------------
    async def intake(
        self, raw: bytes | str | None, ticket: Ticket, source: Source | None = None, key: bytes | None = None
    ) -> None:
        """Validate one record and route it; waits while the text lane is full (backpressure).

        A record without a value and with a key (a tombstone) deletes the task the key names. Per task id, the
        records of a partition take effect in order: a delete waits for the earlier tasks of its id to finish,
        a task waits for an earlier delete of its id, and a task waits for an earlier version of itself (else a
        later version whose texts are all cached could be stored first and then overwritten by the earlier one).
        While the worker drains for shutdown this waits forever: the record stays unacknowledged and goes to
        another worker.
        """
        if not self.accepting:
            await asyncio.Event().wait()
        self._generation_of[id(ticket)] = self._generation
        self._in_generation[self._generation] += 1
        await self._slots.acquire()  # waits while max_concurrent_tasks records are unfinished
        size = len(raw) if raw is not None else 0
        await self._bytes.acquire(size)  # waits while max_inflight_bytes record bytes are unfinished
        self._held[id(ticket)] = (0, size)
        task: Task | None = None
        try:
            task = tombstone(key) if raw is None and key is not None else parse_task(raw, limits=self.limits)
            if task_types.of(task).lane == "delete":  # no model: the store writer removes the task's vectors
                assert isinstance(task, DeleteTask)  # the registry lets only DeleteTask models run there
                self._start_delete(task, raw, ticket, source)
                return
            if isinstance(task, ReembedTask) and not self.writer.wanted(task):  # its migration moved on
                item = None
            else:
                item = _work_item(task, raw, ticket, source)
        except Exception as exc:  # noqa: BLE001 - whatever a record holds, it can fail only itself
            # an installed task type that cannot load raises UnsupportedTaskError, a PermanentError too
            error = exc if isinstance(exc, PermanentError) else _unreadable(exc)
            task_id = error.task_id or _fallback_task_id(source)
            log_main.warning("Rejected record %s as task %s: %s", _where(source), task_id, error)
            kind = task.task_type if task is not None else _declared_reembed(raw)
            await self.reporter.fail(task_id, kind, raw, error, ticket, source)
            return
        if item is None:  # a migration's reembed with nothing to do: not embedded at all
            self.metrics.migration_tasks.labels("skipped").inc()
            await self._on_done(ticket)
            return
        if task.task_id in self._deleting:  # a delete of this id came first: it takes effect first
            await asyncio.shield(self._deleting[task.task_id])
        if self._active.get(task.task_id):  # an earlier version of this task is in work: this one is stored after it
            await self._wait_for_id(task.task_id)
        self._task_of[id(ticket)] = task.task_id
        self._active[task.task_id] = self._active.get(task.task_id, 0) + 1
        await self.reporter.early_status(item, "received")
        lane = self.lane_for(item.task)
        if lane is self.text:
            await self._texts.acquire(item.weight)  # waits while max_inflight_texts texts are unfinished
            self._held[id(ticket)] = (item.weight, size)
        if not self.accepting:  # the drain began while this record waited for room: another worker gets it
            await asyncio.Event().wait()
        await lane.submit(item)

    # -- the lanes ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start every lane (idempotent)."""
        for lane in self.lanes:
            lane.start()
        self.reporter.resume_sweeping()

    async def run_lanes(self) -> None:
        """Run every lane until cancelled (or until a lane fails on a bug: the caller starts them again)."""
        try:
            await asyncio.gather(*(lane.run() for lane in self.lanes))
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel the lanes' stages; tasks still pending stay pending until :meth:`start`."""
        await asyncio.gather(*(lane.close() for lane in self.lanes))
        await self.reporter.stop_sweeping()

    async def settled(self) -> None:
        """Wait until every task taken in has left its lane, every delete is done and every task waiting for its
        migration twin is acknowledged."""
        while True:
            await asyncio.gather(*(lane.settled() for lane in self.lanes))
            if self._deletes:
                await asyncio.wait(set(self._deletes))
            if self._jobs:
                await asyncio.wait(set(self._jobs))
            if not any(lane.pending for lane in self.lanes) and not self._deletes and not self._jobs:
                return

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and let the tasks the model has started on finish; True when they did within ``timeout``.

        Tasks still queued, and those in the model queue none of whose texts
        has reached the model yet beyond what the model can do in half of
        ``timeout``, stay unacknowledged and are redelivered to another worker.
        """
        self.accepting = False
        for lane in self.lanes:
            lane.drain(seconds=timeout / 2)  # half the time: storing and reporting follow
        # tasks whose migration twin is still to run: the lanes take no more work, so they stay unacknowledged and
        # another worker does them again (the live write finds them unchanged, the twin is made there)
        waiting = list(self._twin_waits.values())
        for job in waiting:
            job.cancel()
        if waiting:
            log_main.info("Draining: %d task(s) waiting for their migration twin left unacknowledged", len(waiting))
        # a delete still waiting for an earlier task of its id may wait for one the drain just left to another
        # worker: it stays unacknowledged too, and that worker does both, in order
        for held in list(self._held_deletes):
            held.cancel()
        try:
            await asyncio.wait_for(self.settled(), timeout)
        except TimeoutError:
            return False
        return True

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
                me = asyncio.current_task()
                if me is not None:
                    self._held_deletes.add(me)
                try:
                    await self._wait_for_id(task_id)
                finally:
                    self._held_deletes.discard(me)  # type: ignore[arg-type]
            collection = task.collection or self.settings.default_collection
            removed = await self.writer.delete_tasks(collection, [task_id], ticket)
            if removed is None:  # its partition was revoked first: the new owner deletes it
                await self.reporter.handed_over(ticket, task_id)
                return
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

    async def _wait_for_id(self, task_id: str) -> None:
        """Wait until no task of ``task_id`` taken in earlier is unfinished."""
        self._id_waiters += 1
        try:
            async with self._ids_changed:
                await self._ids_changed.wait_for(lambda: not self._active.get(task_id))
        finally:
            self._id_waiters -= 1

    # -- migrations: the dual write, and the epochs applied ---------------------------------------------
    def _dual_write(self, outcomes: list[Outcome]) -> None:
        """After the live write: each task of an alias whose migration writes to two collections gets a twin,
        its records embedded with the other collection's model (tasks/reembed.py), queued in the text lane; the
        task is acknowledged once the twin is done too (:meth:`_on_done`)."""
        for out in outcomes:
            task = out.item.task
            if out.error is not None or out.handed_over or out.records is None or out.physical is None:
                continue
            if isinstance(task, ReembedTask) or out.item.reembed is not None:  # a twin or a backfill's: no twin of it
                continue
            alias = task.collection or self.settings.default_collection
            state = self.migrations.get(alias)
            if state is None:
                continue
            if not self.accepting:  # draining: no twin can run now; another worker does the task again, both writes
                if any(t.physical != out.physical for t in self.migrations.targets(alias)):
                    self._abandoned.add(id(out.item.ticket))
                continue
            # every collection the alias writes to now, but the one just written: the state may have moved since
            # the task was embedded (a switch, a rollback), and then the live collection gets the twin
            others = [t for t in self.migrations.targets(alias) if t.physical != out.physical]
            for other in others:
                if other.identity is None:
                    continue
                twin = twin_of(
                    task_id=task.task_id,
                    collection=alias,
                    model=other.identity.name,
                    epoch=state.epoch,
                    source=out.physical,
                    target=other.physical,
                    records=out.records,
                    normalize=task.normalize,
                )
                ticket = Ticket(("twin", alias), -1, parent=out.item.ticket)  # handed over with its task
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._twin_of[id(ticket)] = (done, task.task_id, other.physical)
                self._twins.setdefault(id(out.item.ticket), []).append(done)
                try:
                    if self.lane_for(task) is self.images:  # the image read again, embedded with the other model
                        again = task.model_copy(update={"model_name": other.identity.name})
                        item = WorkItem(task=again, raw=None, ticket=ticket, source=out.item.source, reembed=twin)
                    else:
                        item = WorkItem(task=twin, raw=None, ticket=ticket, source=out.item.source)
                except Exception as exc:  # noqa: BLE001 - a twin that cannot be made fails alone, not the task
                    self._spawn(self.reporter.fail(task.task_id, "reembed", None, exc, ticket, out.item.source))
                    continue
                lane = self.images if item.reembed is not None else self.text
                self._spawn(lane.submit_later(item))  # pending in the lane from now on (settled, drain)

    def _spawn(self, work: Awaitable[None]) -> None:
        job = asyncio.ensure_future(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _migration_changed(self, alias: str, state: object) -> None:
        self._generation += 1
        self._epochs_at.append((self._generation, self.migrations.epochs()))

    def applied_epochs(self) -> dict[str, int]:
        """The migration epoch of each alias this worker applies: every record it took in before it saw that
        epoch is done (the migrate command waits for every worker before the backfill and before a cleanup)."""
        oldest = min(self._in_generation) if self._in_generation else self._generation
        seen = [entry for entry in self._epochs_at if entry[0] <= oldest]
        self._epochs_at = seen[-1:] + [entry for entry in self._epochs_at if entry[0] > oldest]
        return dict(seen[-1][1])

    async def _on_done(self, ticket: Ticket) -> None:
        twin = self._twin_of.pop(id(ticket), None)
        if twin is not None:  # a twin of the dual write: its task may be acknowledged now
            ticket.done = True
            done, task_id, target = twin
            if ticket.failed:  # an earlier version of the task must not stay in the twin's collection
                self._spawn(self._undo_twin(done, task_id, target, ticket.parent))
            elif not done.done():
                done.set_result(None)
            return
        if id(ticket) in self._deferred:  # already done, waiting for its twins (a bug path may report it twice)
            return
        if id(ticket) in self._abandoned:  # its twin could not run (drain): unacknowledged, for another worker
            return
        twins = self._twins.pop(id(ticket), None)
        if twins and not all(t.done() for t in twins):
            self._deferred.add(id(ticket))
            job = asyncio.ensure_future(self._after_twins(ticket, twins))
            self._twin_waits[id(ticket)] = job
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
            job.add_done_callback(lambda _, key=id(ticket): self._twin_waits.pop(key, None))
            return
        await self._done(ticket)

    async def _after_twins(self, ticket: Ticket, twins: list[asyncio.Future[None]]) -> None:
        await asyncio.gather(*twins)
        self._deferred.discard(id(ticket))
        await self._done(ticket)

    async def _undo_twin(
        self, done: asyncio.Future[None], task_id: str, target: str, task_ticket: Ticket | None = None
    ) -> None:
        """A twin failed: its task's records leave the twin's collection (the migration's verify then finds them
        missing and sends the task again), then its task may be acknowledged. Not once the task is handed over
        (``task_ticket`` revoked): its next owner writes the twin again, or undoes it."""
        try:
            await self.writer.delete_from(target, [task_id], task_ticket)
        finally:
            if not done.done():
                done.set_result(None)

    async def _done(self, ticket: Ticket) -> None:
        generation = self._generation_of.pop(id(ticket), None)
        if generation is not None:
            left = self._in_generation[generation] - 1
            if left > 0:
                self._in_generation[generation] = left
            else:
                del self._in_generation[generation]
        task_id = self._task_of.pop(id(ticket), None)
        if task_id is not None:
            left = self._active.pop(task_id, 1) - 1
            if left > 0:
                self._active[task_id] = left
            if self._id_waiters:
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


def _work_item(task: Task, raw: bytes | str | None, ticket: Ticket, source: Source | None) -> WorkItem:
    """The work a validated task makes; a migration's reembed of an image record is that image read again."""
    if isinstance(task, ReembedTask):
        image = image_task(task)
        if image is not None:
            return WorkItem(task=image, raw=raw, ticket=ticket, source=source, reembed=task)
    return WorkItem(task=task, raw=raw, ticket=ticket, source=source)


def _declared_reembed(raw: bytes | str | None) -> str | None:
    """``"reembed"`` when an unreadable record declares that type (it is then dead-lettered without a status under
    the user's task id), else None (a hostile type name never becomes a metric label)."""
    if not raw or "reembed" not in (raw if isinstance(raw, str) else raw.decode("utf-8", "replace")):
        return None
    try:
        value = json.loads(raw)
    except Exception:  # noqa: BLE001 - anything a hostile record holds (RecursionError for a deep one): not ours
        return None
    return "reembed" if isinstance(value, dict) and value.get("task_type") == "reembed" else None


def _fallback_task_id(source: Source | None) -> str:
    # Deterministic, so a redelivered bad record maps to the same id.
    return f"invalid-{source[0]}-{source[1]}-{source[2]}" if source else f"invalid-{time.time_ns()}"


def _where(source: Source | None) -> str:
    return f"{source[0]}[{source[1]}]@{source[2]}" if source else "(no source)"
