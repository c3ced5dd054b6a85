"""Writes the vectors of finished tasks to every configured store, each store on its own thread."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import PermanentError, cap_message
from core.metadata_contract import MetadataContract
from core.retry import retry_forever
from sinks.base import MAX_TASK_RECORDS, BaseVectorDB, VectorRecord
from tasks.inputs import build_records

if TYPE_CHECKING:
    from core.settings import Settings
    from engine.work import Outcome
    from ops.metrics import Metrics

log = logging.getLogger("worker.task_processor")
T = TypeVar("T")


class StoreWriter:
    """One upsert per collection for a list of finished tasks, into every store in parallel.

    Sets each outcome's ``ids``, ``store_ms`` and, when its write failed for
    good, ``error``. A store that is unavailable is retried without end (the
    tasks are not acknowledged meanwhile); when a store refuses the data of a
    batch of several tasks, they are written one by one so only the task at
    fault fails.
    """

    def __init__(
        self,
        stores: list[BaseVectorDB],
        *,
        settings: Settings,
        metrics: Metrics,
        on_retry: Callable[[int, BaseException], None],
    ) -> None:
        self.stores = stores  # the pipeline's list: the result records name the same stores
        self.settings = settings
        self.metrics = metrics
        self._on_retry = on_retry
        self.contract = MetadataContract.from_settings(settings)  # declared filterable fields (stores.filterable)
        # one thread per store: several databases are written in parallel, each at its own pace
        self._executors = {
            id(store): ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-{store.name}")
            for store in self.stores
        }
        self._last_ok: dict[int, float] = {}  # store -> when a write to it last succeeded
        self._probes: dict[int, asyncio.Future[Any]] = {}  # store -> its health check, queued or running

    async def write(self, outcomes: list[Outcome]) -> None:
        groups: dict[tuple[str, int], list[tuple[Outcome, list[VectorRecord]]]] = defaultdict(list)
        for out in outcomes:
            if out.error is not None or out.vectors is None or out.info is None:
                continue
            collection = out.item.task.collection or self.settings.default_collection
            try:
                records = build_records(
                    out.item.task,
                    out.prepared,
                    out.vectors,
                    model=out.model,
                    worker_id=self.settings.worker_id,
                    contract=self.contract,
                    collection=collection,
                )
            except Exception as exc:  # noqa: BLE001 - a task whose records cannot be built fails alone
                out.error = exc if isinstance(exc, PermanentError) else _unbuildable(out, exc)
                continue
            out.ids = [r.id for r in records]
            groups[(collection, out.info.dim)].append((out, records))
        for (collection, dim), entries in groups.items():
            records = [r for _, rs in entries for r in rs]
            t0 = time.monotonic()
            error, removed = await self._write_all(collection, dim, _dedupe(records))
            if isinstance(error, PermanentError) and len(entries) > 1:
                # one task's data was refused: write task by task so only that task fails
                for out, task_records in entries:
                    out.error, task_removed = await self._write_all(collection, dim, _dedupe(task_records))
                    _note_removed(out, task_removed)
            elif error is not None:
                for out, _ in entries:
                    out.error = error
            else:
                for out, _ in entries:
                    _note_removed(out, removed)
            elapsed = (time.monotonic() - t0) * 1000
            for out, _ in entries:
                out.store_ms = elapsed

    async def _write_all(
        self, collection: str, dim: int, records: list[VectorRecord]
    ) -> tuple[BaseException | None, Removed]:
        """Write to every store in parallel: the first failure or None, and what each store removed as stale."""
        # sized and grouped once for every store: record_bytes serialises each payload
        parts = split_records(records, self.settings.store_batch_points, self.settings.store_batch_bytes)
        fresh: dict[str, set[str]] = defaultdict(set)
        for r in records:
            fresh[str(r.payload.get("task_id"))].add(r.id)
        writes = await asyncio.gather(
            *(self._write(store, collection, dim, parts, fresh) for store in self.stores), return_exceptions=True
        )
        for result in writes:
            if isinstance(result, asyncio.CancelledError):
                raise result
        errors = [w for w in writes if isinstance(w, BaseException)]
        if errors and not isinstance(errors[0], PermanentError):
            log.error("Storing %d vectors in %s failed: %r", len(records), collection, errors[0])
        removed = {
            store.describe(): counts
            for store, counts in zip(self.stores, writes, strict=True)
            if isinstance(counts, dict)
        }
        return (errors[0] if errors else None), removed

    async def _write(
        self,
        store: BaseVectorDB,
        collection: str,
        dim: int,
        parts: list[list[VectorRecord]],
        fresh: dict[str, set[str]],
    ) -> dict[str, int]:
        """Write to one store, then remove what earlier versions of these tasks left there that this version does
        not have (write first: a reader never sees a task without vectors); retried while the store is
        unavailable (the tasks are not acked meanwhile; a crash in between leaves stale extras that the
        redelivery removes). ``parts``: the records in bounded requests; ``fresh``: each task's new ids.
        Returns the stale vectors removed, by task id."""

        def write() -> dict[str, int]:
            store.ensure_collection(collection, dim)
            for part in parts:  # bounded requests; upserts by id, so a retry after a partial write is harmless
                store.upsert(collection, part)
            return remove_stale(store, collection, fresh) if self.settings.replace_stale else {}

        t0 = time.monotonic()
        removed = await retry_forever(
            lambda: self.in_store_thread(write, store),
            what=f"Storing {sum(map(len, parts))} vectors in {collection} on {store.describe()}",
            on_retry=self._on_retry,
        )
        self._last_ok[id(store)] = now = time.monotonic()
        self.metrics.store_seconds.labels(store.name).observe(now - t0)
        return removed

    async def delete_tasks(self, collection: str, task_ids: list[str]) -> Removed:
        """Remove every vector of ``task_ids`` from every store (retried while a store is unavailable); the
        vectors removed, by store, then by task id."""

        async def one(store: BaseVectorDB) -> dict[str, int]:
            return await retry_forever(
                lambda: self.in_store_thread(
                    lambda: remove_stale(store, collection, dict.fromkeys(task_ids, set())), store
                ),
                what=f"Deleting the vectors of {len(task_ids)} task(s) from {collection} on {store.describe()}",
                on_retry=self._on_retry,
            )

        counts = await asyncio.gather(*(one(store) for store in self.stores))
        return {store.describe(): c for store, c in zip(self.stores, counts, strict=True)}

    async def answers(self, store: BaseVectorDB, *, timeout: float = 5.0, fresh: float = 10.0) -> bool:
        """Whether ``store`` answers: a write that succeeded in the last ``fresh`` seconds says so, else its
        ``health()`` within ``timeout``.

        The check runs on the store's own thread (the clients are not all
        thread-safe), behind any write in progress; at most one check is
        queued at a time, so a long write no longer piles up a check every
        two seconds behind it, and a busy store that keeps taking writes is
        not reported down.
        """
        if time.monotonic() - self._last_ok.get(id(store), float("-inf")) < fresh:
            return True
        probe = self._probes.get(id(store))
        if probe is None or probe.done():
            probe = self._probes[id(store)] = asyncio.ensure_future(self.in_store_thread(store.health, store))
        try:
            await asyncio.wait_for(asyncio.shield(probe), timeout)
        except Exception:  # noqa: BLE001 - any failure or a check that takes too long means "not answering"
            return False
        return True

    async def in_store_thread(self, func: Callable[[], T], store: BaseVectorDB) -> T:
        """Run ``func`` on ``store``'s own thread (the adapters block)."""
        return await asyncio.get_running_loop().run_in_executor(self._executors[id(store)], func)

    def close(self) -> None:
        """Stop the store threads after the writes in progress (callers close the stores next)."""
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)


#: what each store removed, by store (describe()), then by task id
Removed = dict[str, dict[str, int]]
#: task ids asked of a store at once when looking for stale vectors
TASKS_PER_LOOKUP = 64


def remove_stale(store: BaseVectorDB, collection: str, fresh: dict[str, set[str]]) -> dict[str, int]:
    """Delete the records of each task in ``fresh`` whose id is not among its fresh ids (all of them for an empty
    set: a delete); blocks on the store. The stale vectors removed, by task id."""
    removed: dict[str, int] = {}
    task_ids = sorted(fresh)
    for start in range(0, len(task_ids), TASKS_PER_LOOKUP):
        chunk = task_ids[start : start + TASKS_PER_LOOKUP]
        found = store.task_record_ids(collection, chunk)
        if len(chunk) > 1 and sum(map(len, found.values())) >= MAX_TASK_RECORDS:
            found = {}  # the lookup may have been cut at its window: ask task by task
            for task_id in chunk:
                found |= store.task_record_ids(collection, [task_id])
        stale = {task_id: ids - fresh[task_id] for task_id, ids in found.items()}
        doomed = sorted(i for ids in stale.values() for i in ids)
        if doomed:
            store.delete(collection, doomed)
        removed |= {task_id: len(ids) for task_id, ids in stale.items() if ids}
    return removed


def _note_removed(out: Outcome, removed: Removed) -> None:
    task_id = out.item.task.task_id
    deleted = {store: counts.get(task_id, 0) for store, counts in removed.items()}
    out.deleted = deleted if any(deleted.values()) else {}  # in the result only when an update removed something


def record_bytes(record: VectorRecord) -> int:
    """About what a record weighs in a store request: its vector as JSON numbers and its payload as JSON."""
    return 12 * len(record.vector) + len(json.dumps(record.payload, ensure_ascii=False, default=str).encode("utf-8"))


def split_records(records: list[VectorRecord], max_points: int, max_bytes: int) -> list[list[VectorRecord]]:
    """``records`` in order, in parts of at most ``max_points`` records and about ``max_bytes`` bytes each
    (a single record larger than ``max_bytes`` goes alone)."""
    parts: list[list[VectorRecord]] = []
    part: list[VectorRecord] = []
    size = 0
    for record in records:
        weight = record_bytes(record)
        if part and (len(part) >= max_points or size + weight > max_bytes):
            parts.append(part)
            part, size = [], 0
        part.append(record)
        size += weight
    if part:
        parts.append(part)
    return parts


def _unbuildable(out: Outcome, exc: BaseException) -> PermanentError:
    task = out.item.task
    return PermanentError(
        cap_message(
            f"Task {task.task_id} ({task.task_type}): building its vector records failed "
            f"({type(exc).__name__}: {exc}); this is a bug, report it with the task's dead letter."
        )
    )


def _dedupe(records: list[VectorRecord]) -> list[VectorRecord]:
    """One record per id (the last wins): a task delivered twice into one batch must not send an id twice."""
    return list({r.id: r for r in records}.values())
