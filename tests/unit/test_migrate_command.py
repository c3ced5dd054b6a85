"""The migrate command (app/migrate.py) driven with fakes at its ports: in-memory stores (a native-alias one, as
Weaviate/Qdrant, and a pointer one, as Chroma/Milvus), a state log, a producer whose records a fake worker
re-embeds at once, fake heartbeats and a fake model manager. The command on real Kafka and stores is the lead's
integration test; one test here runs ``faust -A app migrate`` as a subprocess for its usage exit code."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import app.migrate as migrate_module
from app.migrate import SCAN_DONE, MigrateOptions, MigratePorts, Timing, reembed_record, run_migrate
from core.errors import ModelLoadError
from core.settings import Settings
from core.versioning import ModelIdentity, physical_name
from engine.migrations import Backfill, Collection, MigrationState, advance
from sinks.base import StoredPoint, VectorRecord
from tasks.reembed import ReembedTask
from tests.fakes import FakeEmbedder, FakeStore

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = SimpleNamespace(
    **{name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()}
    | dict(worker_id="w-test", max_task_bytes=1 << 20, tasks_topic="vectorization-tasks")
)
A = ModelIdentity("org/model-a", "a" * 64, 8, normalize=True, pooling="mean", family="fake")
B = ModelIdentity("org/model-b", "b" * 64, 4, normalize=True, pooling="cls", family="fake")
LIVE = physical_name("docs", A)  # docs__model_a_aaaaaaaa
SHADOW = physical_name("docs", B)  # docs__model_b_bbbbbbbb
FAST = Timing(poll=0.001, report=0.0, progress=0.001, retry=0.001, confirm=0.001)


# -- fakes --------------------------------------------------------------------------------------------------------
class Store(FakeStore):
    """FakeStore with a name and a real nearest-neighbour search (cosine)."""

    def __init__(self, name: str, alias_kind: Any) -> None:
        super().__init__(alias_kind=alias_kind)
        self.name = name
        self.calls: list[tuple[str, Any]] = []

    def search(self, collection: str, vector: Sequence[float], k: int = 10, filter: Any = None) -> list[StoredPoint]:
        points = [p for p in self.collections.get(self._target(collection), {}).values() if p.vector is not None]
        query = np.asarray(vector, dtype=np.float32)
        scored = sorted(
            points,
            key=lambda p: -float(np.dot(query, p.vector) / (np.linalg.norm(query) * np.linalg.norm(p.vector) or 1.0)),
        )
        return scored[:k]

    def scan(self, physical: str, cursor: str | None = None, limit: int = 1000) -> Any:
        self.calls.append(("scan", (physical, cursor)))
        return super().scan(physical, cursor, limit)

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        self.calls.append(("point", (alias, physical)))
        super().point(alias, physical, identity=identity)

    def drop(self, physical: str) -> None:
        self.calls.append(("drop", physical))
        super().drop(physical)


class StateLog:
    """The migrations topic: every state published, the latest per alias; ``crash`` makes one publish fail."""

    def __init__(self, *states: MigrationState) -> None:
        self.latest: dict[str, MigrationState] = {s.alias: s for s in states}
        self.published: list[MigrationState] = []
        self.crash: Any = None  # a predicate on the state about to be published

    def get(self, alias: str) -> MigrationState | None:
        return self.latest.get(alias)

    async def publish(self, state: MigrationState) -> None:
        if self.crash is not None and self.crash(state):
            self.crash = None
            raise Crash(f"killed before publishing {state.phase}")
        self.published.append(state)
        self.latest[state.alias] = state


class Crash(Exception):
    """The command killed mid-way."""


class Manager:
    """ModelPort with FakeEmbedders; a name it does not know fails to load as a missing model does."""

    def __init__(self, *identities: ModelIdentity) -> None:
        self.identities = {i.name: i for i in identities}
        self.embedders = {i.name: FakeEmbedder(i.name, dim=i.dim) for i in identities}
        self.loaded: list[str] = []

    async def get(self, name: str) -> Any:
        if name not in self.embedders:
            raise ModelLoadError(f"Model {name} is not in the models cache and downloads are off")
        self.loaded.append(name)
        return self.embedders[name]

    def identity_record(self, name: str) -> ModelIdentity | None:
        return self.identities.get(name) if name in self.loaded else None

    async def token_lengths(self, name: str, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    async def embed_texts(self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> Any:
        return self.embedders[name].embed_texts(texts, batch_size=batch_size, normalize=True), None


class Worker:
    """The tasks topic and a worker behind it: each reembed record produced is checked against the worker's
    schema (tasks/reembed.py) and, unless ``skip`` names its task, written into its target in every store
    (the new model's vectors, same ids), as the worker does."""

    def __init__(self, stores: list[Store], manager: Manager) -> None:
        self.stores = stores
        self.manager = manager
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.skip: set[str] = set()
        self.too_large: set[str] = set()  # refused by the broker (max.message.bytes)
        self.consumed_answer: bool | None = None  # what the consumer group's committed offsets say (None: unknown)

    async def produce(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
        refused = []
        for key, value in records:
            if key in self.too_large:
                refused.append(key)
                continue
            body = json.loads(value)
            ReembedTask.model_validate(body)  # what the worker parses
            self.sent.append((key, body))
            if key in self.skip:
                self.skip.discard(key)  # lost once: verify sends it again
                continue
            model = self.manager.embedders[body["model_name"]]
            texts = [i for i in body["items"] if i["payload"].get("vector_kind") != "document"]
            vectors = model.embed_texts([i["payload"]["text"] for i in texts], batch_size=8, normalize=True)
            for store in self.stores:
                target = body["migration"]["target"]
                records_ = [
                    VectorRecord(item["id"], vec.tolist(), {**item["payload"], "model": body["model_name"]})
                    for item, vec in zip(texts, vectors, strict=True)
                ]
                for item in body["items"]:
                    if item["payload"].get("vector_kind") == "document":
                        records_.append(VectorRecord(item["id"], vectors.mean(axis=0).tolist(), item["payload"]))
                store.upsert(target, records_)
        return refused

    async def consumed(self) -> bool | None:
        return self.consumed_answer

    def tasks(self) -> list[str]:
        return [key for key, _ in self.sent]


class Workers:
    """Heartbeats: each worker reports the epoch of the latest state, except a lagging one for ``lag`` reads."""

    def __init__(self, log: StateLog, names: Sequence[str] = ("w1", "w2"), lag: dict[str, int] | None = None) -> None:
        self.log = log
        self.names = list(names)
        self.lag = dict(lag or {})
        self.reads = 0

    async def __call__(self) -> list[dict[str, Any]]:
        self.reads += 1
        state = self.log.get("docs")
        beats = []
        for name in self.names:
            epochs = {"docs": state.epoch} if state is not None else {}
            if self.lag.get(name, 0) > 0:
                self.lag[name] -= 1
                epochs = {"docs": state.epoch - 1} if state is not None and state.epoch else {}
            beats.append({"worker_id": name, "migrations": epochs})
        return beats


def seed(store: Store, physical: str, identity: ModelIdentity, tasks: dict[str, list[str]]) -> None:
    """Tasks stored as the worker stores them: one record per text (item_index), a document's chunks plus its own
    vector (tasks named ``doc-*``)."""
    embedder = FakeEmbedder(identity.name, dim=identity.dim)
    store.ensure_collection(physical, identity.dim, identity=identity)
    records = []
    for task_id, texts in tasks.items():
        vectors = embedder.embed_texts(texts, batch_size=8, normalize=True)
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            payload: dict[str, Any] = {
                "task_id": task_id,
                "task_type": "document_vectorization" if task_id.startswith("doc") else "batch_vectorization",
                "model": identity.name,
                "model_revision": identity.record_revision,
                "normalize": True,
                "item_index": i,
                "text": text,
                "content_digest": f"digest-{task_id}-{i}",
                "metadata": {"source": task_id},
            }
            if task_id.startswith("doc"):
                payload |= {"vector_kind": "chunk", "chunk_index": i}
            records.append(VectorRecord(f"{task_id}-{i}", vector.tolist(), payload))
        if task_id.startswith("doc"):
            doc = {"task_id": task_id, "vector_kind": "document", "content_digest": f"digest-{task_id}-doc"}
            records.append(VectorRecord(f"{task_id}-doc", vectors.mean(axis=0).tolist(), doc | {"metadata": {}}))
    store.upsert(physical, records)


TASKS = {
    "t1": ["alpha beta", "gamma"],
    "t2": ["delta epsilon zeta"],
    "t3": ["eta"],
    "doc-1": ["first chunk of a document", "second chunk"],
}


class Rig:
    """Two stores (native + pointer), the state log, the fake worker and heartbeats, and the command's output."""

    def __init__(self, *, legacy: bool = False, state: MigrationState | None = None, **workers: Any) -> None:
        self.stores = [Store("weaviate", "native"), Store("chroma", "pointer")]
        self.manager = Manager(A, B)
        for store in self.stores:
            if legacy:
                seed(store, "docs", A, TASKS)
            else:
                seed(store, LIVE, A, TASKS)
                store.point("docs", LIVE, identity=A)
        if state is None and not legacy:
            state = MigrationState.bound("docs", Collection(LIVE, A), now=1.0)
        self.log = StateLog(*([state] if state is not None else []))
        self.worker = Worker(self.stores, self.manager)
        self.heartbeats = Workers(self.log, **workers)
        self.answers: list[str] = []
        self.ask_answer: bool | None = True

    def ports(self, *, tty: bool = False) -> MigratePorts:
        async def ask(question: str) -> bool:
            self.answers.append(question)
            return bool(self.ask_answer)

        return MigratePorts(
            stores=self.stores,
            state=self.log,
            producer=self.worker,
            heartbeats=self.heartbeats,
            manager=self.manager,
            ask=ask if tty else None,
            timing=FAST,
            owner="migrate@test",
        )

    async def run(self, *, tty: bool = False, **options: Any) -> tuple[int, str]:
        out = io.StringIO()
        options.setdefault("stall_seconds", 0.05)
        code = await run_migrate(SETTINGS, MigrateOptions("docs", **options), out=out, ports=self.ports(tty=tty))  # type: ignore[arg-type]
        return code, out.getvalue()

    def phases(self) -> list[str]:
        return [s.phase for s in self.log.published]

    def state(self) -> MigrationState:
        state = self.log.get("docs")
        assert state is not None
        return state


def ids(store: Store, physical: str) -> set[str]:
    return set(store.collections.get(physical, {}))


# -- the whole way ------------------------------------------------------------------------------------------------
async def test_a_migration_from_plan_to_switch() -> None:
    rig = Rig()
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0, out
    # the plan first: both collections, counts per store, the estimate
    assert out.index("Migration of collection 'docs'") < out.index("Phase shadow_created")
    assert f"live:    {LIVE}, model org/model-a" in out and f"new:     {SHADOW}, model org/model-b" in out
    assert "weaviate: 7 records in docs__model_a_aaaaaaaa (native aliases)" in out
    assert "estimate: about 6 texts to embed again, 14 tokens;" in out and "texts/s (measured here on 6 sample" in out
    # the states, in order, each from the one before
    assert rig.phases() == [
        "shadow_created",
        "dual_write",
        "backfill",
        "backfill",  # the one page scanned
        "verify",
        "verify",  # weaviate switched
        "verify",  # chroma switched
        "switched",
    ]
    epochs = [s.epoch for s in rig.log.published]
    assert epochs == [1, 2, 3, 3, 4, 4, 4, 5]
    assert rig.log.published[3].backfill == Backfill("weaviate", SCAN_DONE, 4)  # the whole collection scanned
    assert [s.switched for s in rig.log.published[5:7]] == [("weaviate",), ("weaviate", "chroma")]
    final = rig.state()
    assert (final.live.physical, final.old.physical if final.old else None) == (SHADOW, LIVE)
    # one reembed record per task, keyed by its task id, with every record of the task
    assert sorted(rig.worker.tasks()) == ["doc-1", "t1", "t2", "t3"]
    doc = dict(rig.worker.sent)["doc-1"]
    assert doc["task_type"] == "reembed" and doc["collection"] == "docs" and doc["model_name"] == "org/model-b"
    assert doc["migration"] == {"epoch": 3, "source": LIVE, "target": SHADOW}
    assert doc["metadata"] == {"source": "doc-1"}
    assert [i["id"] for i in doc["items"]] == ["doc-1-0", "doc-1-1", "doc-1-doc"]  # the document vector last
    assert doc["items"][0]["digest"] == "digest-doc-1-0" and "metadata" not in doc["items"][0]["payload"]
    # every store: the shadow holds every id, the alias points at it
    for store in rig.stores:
        assert ids(store, SHADOW) == ids(store, LIVE)
        assert store.aliases["docs"] == SHADOW and store.pointed["docs"] == B
    assert "Overlap of the top 10 (6 sample queries" in out
    assert "weaviate: docs -> docs__model_b_bbbbbbbb (native alias)" in out
    # the workers were waited for before the backfill
    assert out.index("All 2 live worker(s) apply epoch 2") < out.index("Backfill: scanning")


async def test_a_crashed_command_resumes_the_backfill_at_its_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrate_module, "SCAN_PAGE", 3)  # pages of 3 records: 7 records, 3 pages
    rig = Rig()
    rig.log.crash = lambda s: s.phase == "backfill" and s.backfill.cursor is not None and s.backfill.produced >= 2
    with pytest.raises(Crash):
        await rig.run(to_model="org/model-b", yes=True)
    assert rig.state().phase == "backfill" and rig.state().backfill.cursor is not None
    first_run = list(rig.worker.tasks())
    cursor = rig.state().backfill.cursor
    weaviate = rig.stores[0]
    weaviate.calls.clear()
    code, out = await rig.run(to_model="org/model-b", tty=True)
    assert code == 0, out
    assert rig.answers == ["Resume? [y/N] "] and f"from cursor {cursor!r}" in out
    scans = [args for call, args in weaviate.calls if call == "scan" and args[0] == LIVE]
    assert scans[1] == (LIVE, cursor)  # after the plan's sample, the backfill went on from the stored cursor
    assert set(first_run) | set(rig.worker.tasks()) == {"doc-1", "t1", "t2", "t3"}
    assert rig.state().phase == "switched"


async def test_a_command_stopped_after_its_scan_does_not_scan_again() -> None:
    rig = Rig()
    rig.log.crash = lambda s: s.phase == "verify"  # stopped while it watched the counts, after the whole scan
    with pytest.raises(Crash):
        await rig.run(to_model="org/model-b", yes=True)
    assert rig.state().backfill.cursor == SCAN_DONE
    produced = len(rig.worker.sent)
    weaviate = rig.stores[0]
    weaviate.calls.clear()
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0, out
    assert "Backfill: the scan of docs__model_a_aaaaaaaa was done (4 reembed task(s) produced)" in out
    backfill_scans = [args for call, args in weaviate.calls if call == "scan" and args[0] == LIVE and args[1]]
    assert backfill_scans == [] and len(rig.worker.sent) == produced  # nothing sent twice
    assert rig.state().phase == "switched"


async def test_a_record_only_in_the_new_collection_is_kept_when_its_twin_reaches_the_live_one_later() -> None:
    rig = Rig()
    chroma = rig.stores[1]
    original = chroma.ensure_collection
    diffs = {"n": 0}
    scan_ids = chroma.scan_ids

    def ensure_and_plant(collection: str, dim: int, distance: str = "cosine", identity: Any = None) -> None:
        original(collection, dim, distance, identity)
        if collection == SHADOW:  # a task naming the new model: written there first, its twin to the live one follows
            chroma.collections[SHADOW]["early-0"] = StoredPoint("early-0", {"task_id": "early"}, [1.0, 0, 0, 0])

    def scan_ids_then_twin(physical: str, cursor: Any = None, limit: int = 1000) -> Any:
        if physical == SHADOW:
            diffs["n"] += 1
            if diffs["n"] == 2:  # between the first look and the second: the twin lands in the live collection
                chroma.collections[LIVE]["early-0"] = StoredPoint(
                    "early-0", {"task_id": "early"}, [1.0, 0, 0, 0, 0, 0, 0, 0]
                )
        return scan_ids(physical, cursor, limit)

    chroma.ensure_collection = ensure_and_plant  # type: ignore[method-assign]
    chroma.scan_ids = scan_ids_then_twin  # type: ignore[method-assign]
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0, out
    assert "1 only in it (looked at again)" in out and "deleted" not in out
    assert "early-0" in chroma.collections[SHADOW]


async def test_the_backfill_waits_until_every_worker_applies_the_dual_write_epoch() -> None:
    rig = Rig(lag={"w2": 3})
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0, out
    assert "Waiting for 1 of 2 worker(s) to apply epoch 2: w2 (epoch 1)" in out
    assert out.index("Waiting for 1 of 2") < out.index("All 2 live worker(s) apply epoch 2") < out.index("Backfill")


async def test_a_worker_that_never_applies_the_epoch_stops_the_command_and_a_rerun_resumes() -> None:
    rig = Rig(lag={"w2": 10**9})
    code, out = await rig.run(to_model="org/model-b", yes=True, wait_seconds=0.05)
    assert code == 1
    assert "1 of 2 live worker(s) did not apply epoch 2 of alias 'docs'" in out and "w2 (epoch 1)" in out
    assert rig.state().phase == "dual_write" and rig.worker.sent == []
    rig.heartbeats.lag.clear()
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0, out
    assert rig.phases()[:3] == ["shadow_created", "dual_write", "backfill"]  # nothing published twice
    assert rig.state().phase == "switched"


async def test_no_live_worker_is_a_warning() -> None:
    rig = Rig(names=())
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0 and "Warning: no live worker" in out


class Traffic(Store):
    """A store with traffic going on while the command reads it: every count of the live collection finds one
    record more than the last (a producer keeps sending), and during verify a record is written to the live
    collection just before an id scan, its twin reaching the shadow a moment later (at the next read of the
    shadow), and another record that is deleted from the live collection before the command looks again."""

    def __init__(self, name: str, alias_kind: Any) -> None:
        super().__init__(name, alias_kind)
        self.live_counts = 0
        self.verifying = False
        self.twin: VectorRecord | None = None
        self.written: list[str] = []

    def count(self, collection: str) -> int:
        n = super().count(collection)
        if collection == LIVE:
            self.live_counts += 1
            return n + self.live_counts  # never matched by the shadow's count at one instant
        return n

    def scan_ids(self, collection: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        if self.verifying and collection == LIVE and not self.written:
            late = VectorRecord("late-0", [0.5] * A.dim, {"task_id": "late", "item_index": 0, "text": "late"})
            gone = VectorRecord("gone-0", [0.5] * A.dim, {"task_id": "gone", "item_index": 0, "text": "gone"})
            self.upsert(LIVE, [late, gone])
            self.twin = VectorRecord("late-0", [0.5] * B.dim, late.payload)
            self.written = ["late-0", "gone-0"]
        return super().scan_ids(collection, cursor, limit)

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if collection == SHADOW and self.twin is not None:
            twin, self.twin = self.twin, None
            self.upsert(SHADOW, [twin])  # the twin of the task written meanwhile lands
            self.delete(LIVE, ["gone-0"])  # and the other task is deleted
        return super().retrieve(collection, ids, with_vectors=with_vectors)


async def test_with_traffic_going_on_the_command_goes_on_once_the_workers_consumed_its_reembed_tasks() -> None:
    # the counts never match at one instant and never stand still (a producer keeps sending): the consumer
    # group's committed offsets say the backfill is processed; verify then tells new traffic from lost records
    rig = Rig()
    rig.stores = [Traffic("weaviate", "native"), Traffic("chroma", "pointer")]
    for store in rig.stores:
        seed(store, LIVE, A, TASKS)
        store.point("docs", LIVE, identity=A)
    rig.worker = Worker(rig.stores, rig.manager)
    rig.worker.consumed_answer = True
    real_verify = migrate_module.Migrator.verify

    async def verify(self: Any) -> None:
        for store in rig.stores:
            store.verifying = True  # type: ignore[attr-defined]
        await real_verify(self)

    migrate_module.Migrator.verify = verify  # type: ignore[method-assign]
    try:
        code, out = await asyncio.wait_for(rig.run(to_model="org/model-b", yes=True, stall_seconds=3600), 60)
    finally:
        migrate_module.Migrator.verify = real_verify  # type: ignore[method-assign]
    assert code == 0, out
    assert "The workers have processed every reembed task produced; verify compares the ids." in out
    # the record written meanwhile and the one deleted meanwhile are neither missing nor sent again
    assert "Verify, round" not in out and "missing from it." in out
    assert "0 missing from it" in out and "1 missing" not in out and "2 missing" not in out
    assert "late" not in rig.worker.tasks() and "gone" not in rig.worker.tasks()
    assert rig.state().phase == "switched"


async def test_verify_sends_a_lost_task_again_and_deletes_a_record_absent_from_the_live_collection() -> None:
    rig = Rig()
    rig.worker.skip = {"t2"}  # its reembed record is lost once
    chroma = rig.stores[1]

    original = chroma.ensure_collection

    def ensure_and_plant(collection: str, dim: int, distance: str = "cosine", identity: Any = None) -> None:
        original(collection, dim, distance, identity)
        if collection == SHADOW:  # a record of a task deleted since (the delete missed the shadow)
            chroma.collections[SHADOW]["gone-0"] = StoredPoint("gone-0", {"task_id": "gone"}, [1.0, 0, 0, 0])

    chroma.ensure_collection = ensure_and_plant  # type: ignore[method-assign]
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 0, out
    assert rig.worker.tasks().count("t2") == 2
    assert "Verify: chroma: deleted 1 record(s) of docs__model_b_bbbbbbbb absent from docs__model_a_aaaaaaaa" in out
    assert "Verify, round 1 of 3: sent 1 task(s) again" in out
    for store in rig.stores:
        assert ids(store, SHADOW) == ids(store, LIVE)


async def test_a_task_that_stays_missing_stops_at_verify_with_its_id() -> None:
    rig = Rig()

    class Lossy(Worker):
        async def produce(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
            return await super().produce([(k, v) for k, v in records if k != "t3"])

    rig.worker = Lossy(rig.stores, rig.manager)
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 1
    assert "still lacks records after 3 rounds (weaviate: 1 record(s); chroma: 1 record(s); tasks t3)" in out
    assert "--drop-unmigratable" in out and "--abort" in out
    assert rig.state().phase == "verify" and not rig.state().switched
    # the operator accepts the loss
    code, out = await rig.run(to_model="org/model-b", yes=True, drop_unmigratable=True)
    assert code == 0, out
    assert "switching without 1 unmigratable task(s)" in out and rig.state().phase == "switched"


async def test_a_record_over_the_size_limit_is_listed_as_unmigratable(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig()
    big = SimpleNamespace(**{**vars(SETTINGS), "max_task_bytes": 900})
    out = io.StringIO()
    code = await run_migrate(
        big, MigrateOptions("docs", to_model="org/model-b", yes=True, stall_seconds=0.05), out=out, ports=rig.ports()
    )  # type: ignore[arg-type]
    text = out.getvalue()
    assert code == 1
    assert "Unmigratable: 1 task(s) whose reembed record would be over 900 bytes" in text and "doc-1" in text
    assert "doc-1" not in rig.worker.tasks()


async def test_a_record_the_broker_refuses_for_its_size_is_listed_as_unmigratable() -> None:
    rig = Rig()
    rig.worker.too_large = {"t1"}
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 1
    assert "Backfill: 3 reembed task(s) produced" in out
    assert "still lacks records after 3 rounds (weaviate: 2 record(s); chroma: 2 record(s); tasks t1)" in out
    assert "Unmigratable: 1 task(s)" in out and "max.message.bytes): t1." in out


# -- legacy collections -----------------------------------------------------------------------------------------
async def test_a_legacy_collection_is_not_moved_to_another_model_where_aliases_are_native() -> None:
    rig = Rig(legacy=True)
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 1
    assert "state:   none yet (collection 'docs' was made before migrations: legacy)" in out
    assert "no rollback would be possible. Adopt it first: `faust -A app migrate docs --to-model org/model-a`" in out
    assert rig.log.published == []  # nothing started
    assert all(c[0] not in ("drop", "point") for store in rig.stores for c in store.calls)
    assert all(set(store.collections) == {"docs"} for store in rig.stores)  # no shadow made


async def test_a_legacy_collection_is_adopted_by_its_own_model_dropping_it_where_aliases_are_native() -> None:
    rig = Rig(legacy=True)
    code, out = await rig.run(to_model="org/model-a", yes=True)
    assert code == 0, out
    assert "adoption: the same model, re-embedded into docs__model_a_aaaaaaaa" in out
    assert "Warning: weaviate keep native aliases" in out
    assert [s.phase for s in rig.log.published[:2]] == ["bound", "shadow_created"]
    assert rig.log.published[0].live == Collection("docs", A)
    assert rig.state().live == Collection(LIVE, A) and rig.state().old == Collection("docs", A)
    weaviate, chroma = rig.stores
    # native: the legacy collection dropped, then the alias made; it went last
    assert [c for c in weaviate.calls if c[0] in ("drop", "point")] == [("drop", "docs"), ("point", ("docs", LIVE))]
    assert "docs" not in weaviate.collections
    assert [s.switched for s in rig.log.published if s.phase == "verify" and s.switched] == [
        ("chroma",),
        ("chroma", "weaviate"),
    ]
    for store in rig.stores:
        assert store.aliases["docs"] == LIVE
    # pointer: the pointer made beside the legacy collection, which stays until cleanup
    assert "docs" in chroma.collections
    # no rollback where the old collection is gone, nothing changed
    code, out = await rig.run(rollback=True, yes=True)
    assert code == 1 and "dropped at the switch in weaviate" in out and "Nothing was changed" in out
    assert rig.state().phase == "switched" and chroma.aliases["docs"] == LIVE
    # cleanup drops the legacy collection where it still is (the pointer store), never the native alias
    code, out = await rig.run(cleanup=True, yes=True)
    assert code == 0, out
    assert "docs" not in chroma.collections and chroma.aliases["docs"] == LIVE
    assert weaviate.aliases["docs"] == LIVE and weaviate.calls.count(("drop", "docs")) == 1  # the switch's only
    assert rig.state().phase == "cleaned" and rig.state().live.physical == LIVE


async def test_stores_that_disagree_on_a_legacy_collection_are_refused_by_name() -> None:
    rig = Rig(legacy=True)
    rig.stores[1].bindings["docs"] = B
    code, out = await rig.run(to_model="org/model-b", yes=True)
    assert code == 1
    assert (
        "the stores disagree on the model of collection 'docs' (weaviate: org/model-a" in out
        and "chroma: org/model-b" in out
    )
    assert rig.log.published == []


# -- abort, rollback, cleanup -----------------------------------------------------------------------------------
def migrated_to(phase: str) -> MigrationState:
    state = MigrationState.bound("docs", Collection(LIVE, A), now=1.0)
    steps = ["shadow_created", "dual_write", "backfill", "verify", "switched"]
    for step in steps[: steps.index(phase) + 1]:
        extra: dict[str, Any] = {"shadow": Collection(SHADOW, B)} if step == "shadow_created" else {}
        if step == "switched":
            extra["switched"] = ["weaviate", "chroma"]
        state = advance(state, step, now=2.0, **extra)
    return state


async def test_abort_before_the_switch_keeps_the_shadow_for_cleanup() -> None:
    rig = Rig(state=migrated_to("backfill"))
    for store in rig.stores:
        store.ensure_collection(SHADOW, 4, identity=B)
    code, out = await rig.run(abort=True, tty=True)
    assert code == 0, out
    assert rig.answers == ["Abort the migration of 'docs'? [y/N] "]
    assert rig.phases() == ["aborted"] and "All 2 live worker(s) apply epoch 4" in out
    assert all(SHADOW in s.collections for s in rig.stores)
    code, out = await rig.run(cleanup=True, yes=True)
    assert code == 0, out
    assert rig.phases() == ["aborted", "cleaned"]
    assert all(SHADOW not in s.collections and LIVE in s.collections for s in rig.stores)
    # after the switch, an abort is refused with advance()'s reason
    rig = Rig(state=migrated_to("switched"))
    code, out = await rig.run(abort=True, yes=True)
    assert code == 1 and "Cannot move the migration of alias 'docs' from phase 'switched'" in out


async def test_rollback_points_every_store_back_and_cleanup_drops_the_new_collection() -> None:
    rig = Rig()
    assert (await rig.run(to_model="org/model-b", yes=True))[0] == 0
    code, out = await rig.run(rollback=True, yes=True)
    assert code == 0, out
    assert rig.phases()[-3:] == ["switched", "switched", "rolled_back"]
    assert [s.switched for s in rig.log.published[-3:-1]] == [("chroma",), ()]
    assert all(s.aliases["docs"] == LIVE for s in rig.stores)
    assert rig.state().live == Collection(LIVE, A) and rig.state().shadow == Collection(SHADOW, B)
    code, out = await rig.run(cleanup=True, yes=True)
    assert code == 0, out
    assert all(SHADOW not in s.collections and LIVE in s.collections for s in rig.stores)


async def test_cleanup_after_the_switch_drops_the_old_collection_once_the_workers_stop_writing_it() -> None:
    rig = Rig()
    assert (await rig.run(to_model="org/model-b", yes=True))[0] == 0
    rig.heartbeats.lag = {"w1": 2}
    code, out = await rig.run(cleanup=True, yes=True)
    assert code == 0, out
    assert out.index("Waiting for 1 of 2 worker(s) to apply epoch 6") < out.index("Dropped docs__model_a_aaaaaaaa")
    assert all(LIVE not in s.collections and s.aliases["docs"] == SHADOW for s in rig.stores)
    assert rig.state().phase == "cleaned" and rig.state().old is None


# -- status and refusals ----------------------------------------------------------------------------------------
async def test_status_shows_the_state_the_counts_and_the_workers_epochs() -> None:
    rig = Rig(state=migrated_to("backfill"), lag={"w2": 1})
    code, out = await rig.run(status=True)
    assert code == 0, out
    assert "docs: backfill (re-embedding the stored records into the shadow), epoch 3" in out
    assert "weaviate: live 7, shadow 0 records" in out
    assert "worker w1: epoch 3\n" in out and "worker w2: epoch 2  (behind)" in out
    assert rig.log.published == []


async def test_another_model_while_one_migration_runs_is_refused() -> None:
    rig = Rig(state=migrated_to("dual_write"))
    rig.manager = Manager(A, B, ModelIdentity("org/model-c", "c" * 64, 4))
    code, out = await rig.run(to_model="org/model-c", yes=True)
    assert code == 1
    assert "alias 'docs' is migrating to org/model-b" in out and "--abort" in out
    assert rig.log.published == []


async def test_the_live_model_of_a_versioned_collection_is_refused() -> None:
    rig = Rig()
    code, out = await rig.run(to_model="org/model-a", yes=True)
    assert code == 1 and "already bound to org/model-a" in out and "nothing to migrate" in out
    assert rig.log.published == []


async def test_a_model_that_cannot_load_is_refused_clearly() -> None:
    rig = Rig()
    code, out = await rig.run(to_model="org/nope", yes=True)
    assert code == 1
    assert "cannot load model 'org/nope' in this process (ModelLoadError: Model org/nope is not in the models" in out
    assert rig.log.published == []


async def test_without_a_terminal_the_command_needs_yes() -> None:
    rig = Rig()
    code, out = await rig.run(to_model="org/model-b")
    assert code == 1 and "there is no terminal to ask on. Run it again with --yes" in out
    assert "Migration of collection 'docs'" in out  # the plan was printed first
    assert rig.log.published == []
    rig.ask_answer = False
    code, out = await rig.run(to_model="org/model-b", tty=True)
    assert code == 1 and rig.answers == ["Start? [y/N] "] and rig.log.published == []


async def test_bad_usage_exits_2() -> None:
    rig = Rig()
    assert (await rig.run())[0] == 2
    code, out = await rig.run(to_model="org/model-b", status=True)
    assert code == 2 and "asked for --to-model and --status; give exactly one" in out
    assert (await rig.run(cleanup=True, store="chroma"))[0] == 2


def test_the_reembed_record_carries_a_tasks_own_normalize_only() -> None:
    point = StoredPoint("x-0", {"task_id": "x", "item_index": 0, "text": "t", "normalize": False, "metadata": {"a": 1}})
    body = json.loads(
        reembed_record("x", [point], alias="docs", model="m", epoch=1, source=LIVE, target=SHADOW, live_normalize=True)
    )
    assert body["normalize"] is False and body["metadata"] == {"a": 1}
    body = json.loads(
        reembed_record("x", [point], alias="docs", model="m", epoch=1, source=LIVE, target=SHADOW, live_normalize=False)
    )
    assert "normalize" not in body
    ReembedTask.model_validate(body)


def test_the_faust_command_exits_2_on_bad_usage(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "VECTORIZE_WORKER_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "migrate", "docs", "--abort", "--cleanup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "asked for --abort and --cleanup; give exactly one" in done.stderr
