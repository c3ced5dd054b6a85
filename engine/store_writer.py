"""Writes the vectors of finished tasks to every configured store, each store on its own thread."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from collections.abc import Collection as Many
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from core.errors import PermanentError, StoreRejectedError, cap_message
from core.metadata_contract import MetadataContract
from core.retry import retry_forever
from core.versioning import ModelIdentity, mismatch_message, physical_name
from engine.migrations import Collection, MigrationState, MigrationView
from sinks.base import MAX_TASK_RECORDS, BaseVectorDB, VectorRecord
from tasks.inputs import build_records
from tasks.reembed import ReembedTask

if TYPE_CHECKING:
    from core.settings import Settings
    from engine.work import Outcome
    from ops.metrics import Metrics

log = logging.getLogger("worker.task_processor")
T = TypeVar("T")


class StoreWriter:
    """One upsert per collection for a list of finished tasks, into every store in parallel.

    Sets each outcome's ``ids``, ``store_ms``, ``identity`` and, when its
    write failed for good, ``error``. A store that is unavailable is retried
    without end (the tasks are not acknowledged meanwhile); when a store
    refuses the data of a batch of several tasks, they are written one by one
    so only the task at fault fails.

    Each task's records carry the identity of the model that made its vectors
    (``identities``: the model manager's :meth:`~models.manager.ModelManager.identity_record`),
    and the collection is ensured with it: a collection bound to another model
    refuses the write (:mod:`core.versioning`), and only the tasks of that model
    fail. With several stores, every store's collection is ensured before any
    is written, so a task one store refuses leaves no vectors in the others.

    A task whose partition was revoked in a rebalance (its ticket ``revoked``; a migration twin's: its task's) is
    handed over: its new owner
    processes it again from the committed offset, so it is not written here (``handed_over``), and a write of it
    already in progress is what :meth:`settled` waits for. Each attempt drops such tasks' records on the store's
    thread, just before its requests, so a write retried through a store outage, or queued behind another, never
    lands after the new owner's write of a later version of the same id.
    """

    def __init__(
        self,
        stores: list[BaseVectorDB],
        *,
        settings: Settings,
        metrics: Metrics,
        on_retry: Callable[[int, BaseException], None],
        identities: Callable[[str], ModelIdentity | None] | None = None,
        migrations: MigrationView | None = None,
        bind: Callable[[MigrationState], Awaitable[Any]] | None = None,
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
        self._identities = identities
        # the migration states (engine/migrations.py): which physical collection an alias's tasks are written to
        self.migrations = migrations if migrations is not None else MigrationView()
        # a new collection is made behind an alias (its physical collection named after the model) and its state
        # published (bind: app/migration_state.py's writer); None: collections are made under their own name
        self.bind = bind
        self._placing: dict[str, asyncio.Lock] = {}
        self._own_name: set[str] = set()  # aliases found as plain collections (made before aliases): kept as they are
        self._placed: set[str] = set()  # aliases this process has made sure of (made, or found in every store)
        self._binds: dict[int, bool] = {}  # store -> whether its ensure_collection takes identity=
        self._last_ok: dict[int, float] = {}  # store -> when a write to it last succeeded
        self._probes: dict[int, asyncio.Future[Any]] = {}  # store -> its health check, queued or running
        self._writing: Counter[Hashable] = Counter()  # partition -> writes and deletes in progress with its tasks
        self._quieter: list[asyncio.Future[None]] = []  # settled() waiting for the next one to end

    def _begin(self, tickets: Iterable[Any]) -> set[Hashable]:
        """Count a write or delete in progress for the partitions of ``tickets``; :meth:`_end` with the result."""
        tps = {ticket.source_tp for ticket in tickets}
        self._writing.update(tps)
        return tps

    def _end(self, tps: set[Hashable]) -> None:
        self._writing.subtract(tps)
        for tp in tps:
            if self._writing[tp] <= 0:
                del self._writing[tp]
        waiters, self._quieter = self._quieter, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _in_store_for(self, tickets: Iterable[Any], func: Callable[[], T], store: BaseVectorDB) -> T:
        """:meth:`in_store_thread`, counted as a store call under way for the partitions of ``tickets`` (what
        :meth:`settled` waits for) while it is queued or runs on the store's thread; not while a retry waits."""
        busy = self._begin(tickets)
        try:
            return await self.in_store_thread(func, store)
        finally:
            self._end(busy)

    async def settled(self, tps: Many[Hashable], timeout: float) -> bool:
        """Wait until no store call (a write or delete attempt) holding a task of ``tps`` is queued or running (their tasks were handed over
        in a rebalance: nothing of theirs may reach a store after the new owner's writes); False after
        ``timeout`` seconds with one still running."""
        deadline = time.monotonic() + timeout
        while any(tp in self._writing for tp in tps):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waiter = asyncio.get_running_loop().create_future()
            self._quieter.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                return False
        return True

    def physical(self, alias: str, identity: ModelIdentity | None = None) -> str:
        """The physical collection a task of ``alias`` whose vectors ``identity``'s model made is written to: the
        live one of its migration state, or during a migration the other collection when it is that model's (a
        task embedded just before a switch or a rollback goes where its model belongs; its twin then goes to the
        live one); an alias without a state: the collection of that name."""
        state = self.migrations.get(alias)
        if state is None:
            return alias
        if identity is not None:  # the live collection first; the shadow or the old one exist until cleanup
            for kept in (state.live, state.shadow, state.old):
                if kept is not None and kept.identity.accepts(identity):
                    return kept.physical
        return state.live.physical

    async def write(self, outcomes: list[Outcome]) -> None:
        for out in outcomes:  # revoked before their write began: the partition's new owner writes them
            out.handed_over = out.item.ticket.revoked and out.error is None
        await self._write_outcomes([out for out in outcomes if not out.handed_over])
        for out in outcomes:  # revoked during the write: what of theirs was written, the new owner finds unchanged
            if out.item.ticket.revoked and out.error is None:
                out.handed_over = True

    async def _write_outcomes(self, outcomes: list[Outcome]) -> None:
        groups: dict[Group, list[tuple[Outcome, list[VectorRecord]]]] = defaultdict(list)
        if self.bind is not None:  # a collection's first write makes it behind an alias
            firsts: dict[str, tuple[ModelIdentity, int]] = {}
            for out in outcomes:
                if out.error is None and out.vectors is not None and out.info is not None and reembed_of(out) is None:
                    if out.identity is None and self._identities is not None:
                        out.identity = self._identities(out.model)
                    alias = out.item.task.collection or self.settings.default_collection
                    if out.identity is not None and alias not in self._placed:
                        firsts.setdefault(alias, (out.identity, out.info.dim))
            for alias, (identity, dim) in firsts.items():
                await self._place(alias, identity, dim)
        for out in outcomes:
            if out.error is not None or out.vectors is None or out.info is None:
                continue
            task = out.item.task
            collection = task.collection or self.settings.default_collection
            source: str | None = None
            reembed = reembed_of(out)
            if reembed is not None:  # a migration's: written to its target, if the migration still wants it
                out.ids = [item.id for item in reembed.items]
                if not self.wanted(reembed):
                    out.skipped = True
                    continue
                physical = reembed.migration.target
                source = reembed.migration.source if reembed.migration.check_source else None
            if out.identity is None and self._identities is not None:
                out.identity = self._identities(out.model)
            if reembed is None:
                physical = self.physical(collection, out.identity)
                refusal = self._refusal(collection, physical, out.identity)
                if refusal is not None:  # a collection behind an alias, of another model: said with its name
                    out.error = refusal
                    continue
            try:
                records = build_records(
                    out.item.task,
                    out.prepared,
                    out.vectors,
                    model=out.model,
                    worker_id=self.settings.worker_id,
                    contract=self.contract,
                    collection=collection,
                    identity=out.identity,
                )
            except Exception as exc:  # noqa: BLE001 - a task whose records cannot be built fails alone
                out.error = exc if isinstance(exc, PermanentError) else _unbuildable(out, exc)
                continue
            out.ids = [r.id for r in records]
            out.records, out.physical = records, physical
            # one write per model: a collection bound to another model refuses that model's tasks only
            groups[(physical, out.info.dim, out.identity, source)].append((out, records))
        for (collection, dim, identity, source), entries in groups.items():
            records = [r for _, rs in entries for r in rs]
            check = _source_check(entries) if source is not None else None
            owners = {r.id: out.item.ticket for out, rs in entries for r in rs}  # whose partition each record is
            t0 = time.monotonic()
            error, removed = await self._write_all(collection, dim, _dedupe(records), identity, check, owners)
            if isinstance(error, PermanentError) and len(entries) > 1:
                # one task's data was refused: write task by task so only that task fails
                for out, task_records in entries:
                    one = _source_check([(out, task_records)]) if source is not None else None
                    out.error, task_removed = await self._write_all(
                        collection, dim, _dedupe(task_records), identity, one, owners
                    )
                    _note_removed(out, task_removed)
                    if one is not None and one.changed:
                        out.skipped = True
            elif error is not None:
                for out, _ in entries:
                    out.error = error
            else:
                for out, _ in entries:
                    _note_removed(out, removed)
            if check is not None:
                for out, _ in entries:
                    out.skipped = out.skipped or out.item.task.task_id in check.changed
            elapsed = (time.monotonic() - t0) * 1000
            for out, _ in entries:
                out.store_ms = elapsed

    def _refusal(self, alias: str, physical: str, identity: ModelIdentity | None) -> StoreRejectedError | None:
        """The refusal of a task whose model is not the one of the collection the alias names (known from its
        migration state, without asking the stores), with the way out: another collection, or a migration."""
        state = self.migrations.get(alias)
        if state is None or identity is None or physical == alias:
            return None
        bound = next((c.identity for c in (state.live, state.shadow, state.old) if c and c.physical == physical), None)
        if bound is None or bound.accepts(identity):
            return None
        return StoreRejectedError(
            mismatch_message(collection=alias, store="every store", bound=bound, wanted=identity)
            + f" Or change its model: `faust -A app migrate {alias} --to-model {identity.name}` (docs/migration.md)."
        )

    async def _place(self, alias: str, identity: ModelIdentity, dim: int) -> None:
        """Before the first write of ``alias`` (no migration state): a collection none of the stores has yet is
        made behind the alias, as ``<alias>__<slug>_<rev8>`` bound to ``identity``, the alias (Weaviate, Qdrant)
        or pointer (Chroma, Milvus) made in every store, and the state ``bound`` published and applied; an alias
        some store already holds as a plain collection (made before aliases), or whose alias points elsewhere,
        is written under its own name as before (its first migration puts it behind an alias)."""
        if alias in self._own_name or alias in self._placed or identity.partial:
            return
        async with self._placing.setdefault(alias, asyncio.Lock()):
            if alias in self._own_name or alias in self._placed:
                return
            state = self.migrations.get(alias)
            if state is not None:  # known: in a store added since (or emptied), the bound alias is made again
                if state.phase in ("bound", "cleaned"):
                    await self._repoint(alias, state.live, dim)
                self._placed.add(alias)
                return
            try:
                physical = physical_name(alias, identity)
            except ValueError:
                self._own_name.add(alias)
                return
            if any(store.alias_kind == "none" for store in self.stores):  # an adapter without aliases or pointers
                self._own_name.add(alias)
                return
            found = await asyncio.gather(
                *(
                    self._retried(store, f"Looking up collection {alias}", self._lookup(store, alias))
                    for store in self.stores
                )
            )
            ours = [store.store_name(physical).lower() for store in self.stores]
            elsewhere = any(t is not None and t.lower() != mine for (_, t), mine in zip(found, ours, strict=True))
            if any(plain for plain, _ in found) or elsewhere:
                self._own_name.add(alias)
                return
            for store in self.stores:
                await self._ensure(store, physical, dim, identity)
                await self._retried(
                    store,
                    f"Pointing alias {alias} at {physical}",
                    lambda store=store: store.point(alias, physical, identity=identity),
                )
            state = MigrationState.bound(alias, Collection(physical, identity), owner=self.settings.worker_id)
            bind = self.bind
            assert bind is not None
            await retry_forever(lambda: bind(state), what=f"Publishing the binding of {alias}", on_retry=self._on_retry)
            self.migrations.apply(state, "this worker")
            self._placed.add(alias)
            log.info("Collection %s made behind an alias: %s, model %s", alias, physical, identity.describe())

    async def _repoint(self, alias: str, live: Collection, dim: int) -> None:
        """Make ``alias`` point at its live collection in every store where it points at nothing and is no
        collection itself (a store added to vector_dbs since, or a fresh embedded store)."""
        for store in self.stores:
            if store.alias_kind == "none":
                continue
            plain, target = await self._retried(store, f"Looking up collection {alias}", self._lookup(store, alias))
            if plain or target is not None:
                continue
            if dim == live.identity.dim:
                await self._ensure(store, live.physical, dim, live.identity)
            await self._retried(
                store,
                f"Pointing alias {alias} at {live.physical}",
                lambda store=store: store.point(alias, live.physical, identity=live.identity),
            )
            log.info("Alias %s made again on %s: %s", alias, store.describe(), live.physical)

    @staticmethod
    def _lookup(store: BaseVectorDB, alias: str) -> Callable[[], tuple[bool, str | None]]:
        return lambda: (store.has_collection(alias), store.resolve(alias))

    async def _retried(self, store: BaseVectorDB, what: str, func: Callable[[], T]) -> T:
        return await retry_forever(
            lambda: self.in_store_thread(func, store), what=f"{what} on {store.describe()}", on_retry=self._on_retry
        )

    def wanted(self, task: ReembedTask) -> bool:
        """Whether the migration of ``task``'s alias still writes to its target: a backfill's reembed reads the
        live collection and writes the shadow (dual write, backfill, verify) or the old collection (switched); a
        twin writes any collection the alias writes to now. Else the migration was aborted, switched, rolled back
        or cleaned since the task was made: nothing to do."""
        migration = task.migration
        targets = self.migrations.targets(task.collection)
        if not migration.check_source:  # a twin: wherever the alias writes now (the live one after a switch)
            return any(t.physical == migration.target for t in targets)
        return targets[0].physical == migration.source and any(t.physical == migration.target for t in targets[1:])

    async def _write_all(
        self,
        collection: str,
        dim: int,
        records: list[VectorRecord],
        identity: ModelIdentity | None = None,
        check: SourceCheck | None = None,
        owners: dict[str, Any] | None = None,
    ) -> tuple[BaseException | None, Removed]:
        """Write to every store in parallel: the first failure or None, and what each store removed as stale.

        With several stores, each one's collection is ensured first (created, bound, checked; retried while
        a store is unavailable), so that a store refusing the model writes nothing into the others."""
        if len(self.stores) > 1:
            ensured = await asyncio.gather(
                *(self._ensure(store, collection, dim, identity) for store in self.stores), return_exceptions=True
            )
            for result in ensured:
                if isinstance(result, asyncio.CancelledError):
                    raise result
            refused = [e for e in ensured if isinstance(e, BaseException)]
            if refused:
                return refused[0], {}
        # digested and weighed once for every store (both serialise each payload)
        if len(records) > DIGEST_INLINE:  # ~30 µs a record: a large write is digested off the event loop
            digested = await asyncio.get_running_loop().run_in_executor(None, lambda: [with_digest(r) for r in records])
        else:
            digested = [with_digest(r) for r in records]
        fresh: dict[str, set[str]] = defaultdict(set)
        for r in records:
            fresh[str(r.payload.get("task_id"))].add(r.id)
        writes = await asyncio.gather(
            *(self._write(store, collection, dim, digested, fresh, identity, check, owners) for store in self.stores),
            return_exceptions=True,
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

    async def _ensure(self, store: BaseVectorDB, collection: str, dim: int, identity: ModelIdentity | None) -> None:
        """Ensure ``collection`` on ``store`` for ``identity``'s vectors, retried while the store is unavailable."""
        await retry_forever(
            lambda: self.in_store_thread(lambda: self.ensure(store, collection, dim, identity), store),
            what=f"Preparing collection {collection} on {store.describe()}",
            on_retry=self._on_retry,
        )

    def ensure(self, store: BaseVectorDB, collection: str, dim: int, identity: ModelIdentity | None) -> None:
        """``store.ensure_collection`` with the model's identity, when the adapter takes one (an adapter written
        before bindings does not: its collections are not bound, said once in the log). Blocks on the store."""
        binds = self._binds.get(id(store))
        if binds is None:
            binds = self._binds[id(store)] = _takes_identity(store)
            if not binds:
                log.warning(
                    "The %s adapter's ensure_collection takes no identity= argument: its collections are not bound "
                    "to a model, and tasks of several models can mix in one collection there. Update the adapter "
                    "(docs/stores.md, 'One model per collection').",
                    store.name,
                )
        if identity is not None and binds:
            store.ensure_collection(collection, dim, identity=identity)
        else:
            store.ensure_collection(collection, dim)

    async def _write(
        self,
        store: BaseVectorDB,
        collection: str,
        dim: int,
        digested: list[tuple[VectorRecord, int]],
        fresh: dict[str, set[str]],
        identity: ModelIdentity | None = None,
        check: SourceCheck | None = None,
        owners: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        """Write to one store, then remove what earlier versions of these tasks left there that this version does
        not have (write first: a reader never sees a task without vectors); retried while the store is
        unavailable (the tasks are not acked meanwhile; a crash in between leaves stale extras that the
        redelivery removes). ``digested``: the records with their content digest and weight; ``fresh``: each
        task's new ids. Records whose digest the store already holds are not written (``skip_unchanged``).
        ``check`` (a migration's reembed): a task whose source records in this store are no longer those it
        carries is left alone (its update or delete has written or will write the target itself).
        ``owners``: each record's ticket; the records of tasks handed over in a rebalance are dropped on the
        store's thread before each request (see the class).
        Returns the stale vectors removed, by task id."""
        s = self.settings
        skipped = 0
        sent = False  # whether the attempt that succeeded reached the store (not if it found only handed-over tasks)
        tickets = {*owners.values()} if owners else set()

        def handed_over() -> set[str]:
            return {rid for rid, ticket in owners.items() if ticket.revoked} if owners else set()

        def without_handed_over() -> bool:
            """Drop the handed-over tasks' records; False when nothing is left to write."""
            nonlocal digested, fresh
            gone = handed_over()
            if gone:
                digested = [(r, w) for r, w in digested if r.id not in gone]
                fresh = {t: kept for t, ids in fresh.items() if (kept := ids - gone)}
            return bool(fresh)

        def write() -> dict[str, int]:
            nonlocal skipped, digested, fresh, sent
            skipped, sent = 0, False  # of the attempt that succeeds
            if not without_handed_over():
                return {}
            sent = True
            if check is not None:
                changed = check.changed_in(store)
                if changed:
                    digested = [(r, w) for r, w in digested if r.payload.get("task_id") not in changed]
                    fresh = {t: ids for t, ids in fresh.items() if t not in changed}
                if not fresh:
                    return {}
            self.ensure(store, collection, dim, identity)  # remembered by the adapter: no request after the first
            # one lookup serves both: what is unchanged (not written) and what is stale (deleted after the write)
            known = task_records(store, collection, fresh) if s.replace_stale or s.skip_unchanged else {}
            stored = {rid: d for recs in known.values() for rid, d in recs.items()} if s.skip_unchanged else {}
            todo = [(r, w) for r, w in digested if stored.get(r.id) != r.payload[DIGEST_KEY]]
            skipped = len(digested) - len(todo)
            # bounded requests; upserts by id, so a retry after a partial write is harmless (and finds the part
            # written unchanged)
            for part in split_records(
                [r for r, _ in todo], s.store_batch_points, s.store_batch_bytes, weights=[w for _, w in todo]
            ):
                gone = handed_over()
                part = [r for r in part if r.id not in gone]  # noqa: PLW2901 - a task revoked between requests
                if part:
                    store.upsert(collection, part)
            if not without_handed_over():
                return {}
            if not s.replace_stale:
                return {}
            # only the tasks still written here (a task missing from ``fresh`` would lose every record)
            return delete_stale(store, collection, {t: recs for t, recs in known.items() if t in fresh}, fresh)

        t0 = time.monotonic()
        removed = await retry_forever(
            lambda: self._in_store_for(tickets, write, store),
            what=f"Storing {len(digested)} vectors in {collection} on {store.describe()}",
            on_retry=self._on_retry,
        )
        if not sent:  # every task handed over before a request: says nothing of the store
            return removed
        self._last_ok[id(store)] = now = time.monotonic()
        self.metrics.store_seconds.labels(store.name).observe(now - t0)
        if skipped:
            self.metrics.store_unchanged.labels(store.name).inc(skipped)
        return removed

    async def delete_tasks(self, collection: str, task_ids: list[str], ticket: Any = None) -> Removed | None:
        """Remove every vector of ``task_ids`` from every store (retried while a store is unavailable); the
        vectors removed from the live collection, by store, then by task id. During a migration the other
        collection of the alias (shadow or old) loses them too. None when ``ticket``'s partition was revoked
        first (handed over, see the class): each attempt checks on the store's thread before its requests."""
        if ticket is not None and ticket.revoked:
            return None
        physicals = [t.physical for t in self.migrations.targets(collection)]
        counts = await asyncio.gather(
            *(self._remove(store, physical, task_ids, ticket) for physical in physicals for store in self.stores)
        )
        if ticket is not None and ticket.revoked:
            return None  # revoked meanwhile: the new owner deletes (again); what was removed here stays removed
        live = counts[: len(self.stores)]
        return {store.describe(): c for store, c in zip(self.stores, live, strict=True)}

    async def delete_from(self, physical: str, task_ids: list[str], ticket: Any = None) -> None:
        """Remove every vector of ``task_ids`` from the physical collection ``physical`` in every store (a failed
        twin's target: an older version of the task must not stay there); nothing once ``ticket`` (the task's) is
        handed over: its next owner writes or undoes the twin itself."""
        await asyncio.gather(*(self._remove(store, physical, task_ids, ticket) for store in self.stores))

    async def _remove(
        self, store: BaseVectorDB, physical: str, task_ids: list[str], ticket: Any = None
    ) -> dict[str, int]:
        """Every vector of ``task_ids`` out of ``physical`` on ``store``, retried while it is unavailable; the
        vectors removed, by task id (nothing once ``ticket`` is handed over)."""

        def remove() -> dict[str, int]:
            if ticket is not None and ticket.revoked:
                return {}
            return remove_stale(store, physical, dict.fromkeys(task_ids, set()))

        return await retry_forever(
            lambda: self._in_store_for([ticket] if ticket is not None else [], remove, store),
            what=f"Deleting the vectors of {len(task_ids)} task(s) from {physical} on {store.describe()}",
            on_retry=self._on_retry,
        )

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
#: one write: physical collection, dimension, the model's identity, and the source a reembed checks (or None)
Group = tuple[str, int, "ModelIdentity | None", "str | None"]


class SourceCheck:
    """What a migration's reembed tasks carry of their source (record ids and content digests, by task), and
    which tasks a store holds otherwise now (changed or deleted since they were read: left alone there)."""

    def __init__(self, source: str, expected: dict[str, dict[str, str | None]]) -> None:
        self.source = source
        self.expected = expected
        self.changed: set[str] = set()  # the tasks left alone in at least one store

    def changed_in(self, store: BaseVectorDB) -> set[str]:
        """The tasks whose records in ``store``'s source differ from those carried; blocks on the store."""
        found = task_records(store, self.source, self.expected)
        changed = {task_id for task_id, records in self.expected.items() if found.get(task_id, {}) != records}
        self.changed |= changed
        return changed


def _source_check(entries: list[tuple[Outcome, list[VectorRecord]]]) -> SourceCheck:
    expected: dict[str, dict[str, str | None]] = {}
    source = ""
    for out, _ in entries:
        task = reembed_of(out)
        assert task is not None
        source = task.migration.source
        expected[task.task_id] = {item.id: item.digest for item in task.items}
    return SourceCheck(source, expected)


def reembed_of(out: Outcome) -> ReembedTask | None:
    """The migration reembed an outcome carries out: its task, or the one an image task stands for."""
    task = out.item.task
    return out.item.reembed if out.item.reembed is not None else (task if isinstance(task, ReembedTask) else None)


#: task ids asked of a store at once when looking up their records
TASKS_PER_LOOKUP = 64
#: the most records digested on the event loop itself (a larger write is digested on a thread)
DIGEST_INLINE = 256
#: ids deleted in one request
IDS_PER_DELETE = 1000
#: the payload key holding a record's content digest (a worker field: native in every store)
DIGEST_KEY = "content_digest"
#: payload keys that differ between two writes of the same content: left out of the digest
VOLATILE_KEYS = frozenset({"worker_id", "created_at", DIGEST_KEY})
#: changes when what the digest covers changes, so records digested the old way are written again
DIGEST_VERSION = b"vw-content-1"


def with_digest(record: VectorRecord) -> tuple[VectorRecord, int]:
    """``record`` with its content digest in the payload, and about what it weighs in a store request.

    The digest covers what a store keeps of the record except the volatile keys: the vector (as float32, as
    the model and the embedding cache produce it), the payload (text, metadata, chunk fields, model name)
    and the declared filterable values; a record whose digest a store already holds under its id is not
    written again (``stores.skip_unchanged``).
    """
    stable = {k: v for k, v in record.payload.items() if k not in VOLATILE_KEYS}
    body = json.dumps(stable, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")
    digest = hashlib.blake2b(DIGEST_VERSION, digest_size=16)
    digest.update(float32_bytes(record.vector))
    digest.update(body)
    if record.filterable:
        digest.update(json.dumps(sorted(record.filterable.items()), default=str).encode("utf-8"))
    payload = {**record.payload, DIGEST_KEY: digest.hexdigest()}
    return replace(record, payload=payload), 12 * len(record.vector) + len(body) + VOLATILE_BYTES


def float32_bytes(vector: Sequence[float]) -> bytes:
    """``vector`` as float32 bytes, exactly what ``np.asarray(vector, dtype=np.float32).tobytes()`` gives.

    A record's vector is a list of Python floats; ``struct`` packs one of 384 in ~3 µs against numpy's ~16 µs
    (a resent one-text task spends ~0.5 ms of worker CPU in all). A value beyond float32's range (numpy makes it
    infinite; ``struct`` refuses it) or anything not a list goes through numpy.
    """
    if type(vector) is list:
        try:
            return struct.pack(f"{len(vector)}f", *vector)
        except (OverflowError, struct.error):
            pass
    return np.asarray(vector, dtype=np.float32).tobytes()


#: about what the volatile keys add to a payload's JSON (worker id, time, digest)
VOLATILE_BYTES = 160


def task_records(store: BaseVectorDB, collection: str, task_ids: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """Every record of each task (its id and stored content digest), asked ``TASKS_PER_LOOKUP`` tasks at a time;
    a lookup that may have been cut at the store's window is asked again task by task. Blocks on the store."""
    ids = sorted(task_ids)
    found: dict[str, dict[str, str | None]] = {}
    for start in range(0, len(ids), TASKS_PER_LOOKUP):
        chunk = ids[start : start + TASKS_PER_LOOKUP]
        part = store.task_records(collection, chunk)
        if len(chunk) > 1 and sum(map(len, part.values())) >= MAX_TASK_RECORDS:
            part = {}  # the lookup may have been cut at its window: ask task by task
            for task_id in chunk:
                part |= store.task_records(collection, [task_id])
        found |= part
    return found


def delete_stale(
    store: BaseVectorDB, collection: str, known: dict[str, dict[str, str | None]], fresh: dict[str, set[str]]
) -> dict[str, int]:
    """Delete the ``known`` records of each task in ``fresh`` whose id is not among its fresh ids (all of them for
    an empty set: a delete); blocks on the store. The stale vectors removed, by task id."""
    stale = {task_id: set(records) - fresh.get(task_id, set()) for task_id, records in known.items()}
    doomed = sorted(i for ids in stale.values() for i in ids)
    for start in range(0, len(doomed), IDS_PER_DELETE):
        store.delete(collection, doomed[start : start + IDS_PER_DELETE])
    return {task_id: len(ids) for task_id, ids in stale.items() if ids}


def remove_stale(store: BaseVectorDB, collection: str, fresh: dict[str, set[str]]) -> dict[str, int]:
    """Look up the records of each task in ``fresh`` and delete those not among its fresh ids; blocks."""
    return delete_stale(store, collection, task_records(store, collection, fresh), fresh)


def _note_removed(out: Outcome, removed: Removed) -> None:
    task_id = out.item.task.task_id
    deleted = {store: counts.get(task_id, 0) for store, counts in removed.items()}
    out.deleted = deleted if any(deleted.values()) else {}  # in the result only when an update removed something


def record_bytes(record: VectorRecord) -> int:
    """About what a record weighs in a store request: its vector as JSON numbers and its payload as JSON."""
    return 12 * len(record.vector) + len(json.dumps(record.payload, ensure_ascii=False, default=str).encode("utf-8"))


def split_records(
    records: list[VectorRecord], max_points: int, max_bytes: int, *, weights: Sequence[int] | None = None
) -> list[list[VectorRecord]]:
    """``records`` in order, in parts of at most ``max_points`` records and about ``max_bytes`` bytes each
    (a single record larger than ``max_bytes`` goes alone); ``weights``: each record's, when already known
    (else :func:`record_bytes`)."""
    parts: list[list[VectorRecord]] = []
    part: list[VectorRecord] = []
    size = 0
    for index, record in enumerate(records):
        weight = weights[index] if weights is not None else record_bytes(record)
        if part and (len(part) >= max_points or size + weight > max_bytes):
            parts.append(part)
            part, size = [], 0
        part.append(record)
        size += weight
    if part:
        parts.append(part)
    return parts


def _takes_identity(store: BaseVectorDB) -> bool:
    """Whether ``store.ensure_collection`` accepts ``identity=`` (every built-in adapter does)."""
    try:
        parameters = inspect.signature(store.ensure_collection).parameters
    except (TypeError, ValueError):  # not introspectable: assume the current port
        return True
    return "identity" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


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
