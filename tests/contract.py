"""The behaviour every vector database adapter must show; subclass and provide the store hooks.

Every store is built with :data:`CONTRACT` (declared filterable fields for all
collections). Beside the fixtures, a subclass implements what can only be said
with the store's own client: :meth:`VectorDBContract.native_fields` (the
fields the database holds for a collection: its schema, or what stands for it
in a schemaless store), :meth:`VectorDBContract.legacy_upsert` (records written
the way the adapter did before the metadata contract, every scalar flattened
into a field), :meth:`VectorDBContract.drop` and
:meth:`VectorDBContract.drop_behind` (a collection deleted with the store's own
client, behind the adapter, which still remembers it).

The model binding (docs/stores.md, "One model per collection") is checked with
two made-up model identities, :data:`MODEL_A` and :data:`MODEL_B`, of the same
dimension, so that only the binding can refuse the second.

Aliases and pointers, dropping and reading back (docs/stores.md, "Aliases and
pointers") are checked on physical collections named by
:func:`core.versioning.physical_name` for :data:`MODEL_A` and :data:`MODEL_WIDE`
(another dimension), and cleaned up by the test (alias first, then the
collections).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from core.errors import StoreRejectedError, StoreUnavailableError
from core.metadata_contract import MetadataContract, native_name
from core.versioning import ModelIdentity, physical_name
from engine.store_writer import with_digest
from sinks.base import MISSING_LIMIT, PAYLOAD_KEY, WORKER_FIELDS, BaseVectorDB, VectorRecord
from sinks.filters import InvalidFilterError

DIM = 8
DECLARED = {
    "lang": "string",
    "year": "int",
    "score": "float",
    "ok": "bool",
    "when": "datetime",
    "tags": "string_list",
}
CONTRACT = MetadataContract({"*": DECLARED})
DECLARED_NATIVE = {native_name(n) for n in DECLARED}


def _vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def worker_payload(task: str, metadata: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """A payload shaped like tasks.inputs.build_records' for a text task."""
    return {
        "task_id": task,
        "task_type": "text",
        "model": "test-model",
        "worker_id": "contract",
        "created_at": 1_700_000_000.5,
        "metadata": dict(metadata),
        "item_index": index,
        "text": f"text of {task}",
    }


def _revision(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


MODEL_A = ModelIdentity("contract/model-a", _revision("a"), DIM, normalize=True, pooling="mean", family="contract")
MODEL_B = ModelIdentity("contract/model-b", _revision("b"), DIM, normalize=None, pooling=None, family="contract")
#: a model of another dimension, for an alias switched between collections of two dimensions
WIDE = DIM + 4
MODEL_WIDE = ModelIdentity("contract/Wide-Model.v2", _revision("w"), WIDE, normalize=True, family="contract")


def _wide_vec(seed: int) -> list[float]:
    v = np.random.default_rng(1000 + seed).normal(size=WIDE)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def versioned_record(rid: str, seed: int, model: str, revision: str | None, task: str = "t") -> VectorRecord:
    """A record as the worker writes it with ``model`` (``revision``: its model_revision; None: as written before
    revisions existed)."""
    payload = {**worker_payload(task, {}), "model": model}
    if revision is not None:
        payload |= {"model_revision": revision[:16], "normalize": True}
    return VectorRecord(rid, _vec(seed), payload)


def record(collection: str, rid: str, seed: int, metadata: Mapping[str, Any], task: str = "t") -> VectorRecord:
    """A record as the worker builds it: the declared fields checked and carried beside the whole payload."""
    filterable = CONTRACT.extract(metadata, collection=collection, task_id=task)
    return VectorRecord(rid, _vec(seed), worker_payload(task, metadata), filterable=filterable)


def old_flatten(payload: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """How the adapters flattened a payload before the metadata contract: every scalar under its dotted path."""
    for key, value in payload.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from old_flatten(value, f"{path}.")
        elif isinstance(value, str | int | float | bool):
            yield path, value


#: the filter language's cases: metadata of six records, then filter -> indices of the records it matches
FILTER_DATA: list[dict[str, Any]] = [
    {"lang": "en", "year": 2019, "score": 0.5, "ok": True, "when": "2020-01-01T00:00:00Z", "tags": ["a"]},
    {"lang": "fr", "year": 2020, "score": 1.5, "ok": False, "when": "2021-06-01T12:00:00+02:00", "tags": ["a", "b"]},
    {"lang": "en", "year": 2021, "score": 2.5, "ok": True, "when": "2022-01-01", "tags": ["b"]},
    {"lang": "de", "year": 2022, "score": 3.5, "ok": False, "when": "2023-03-03T03:03:03Z", "tags": []},
    {"other": "no declared field at all", "lang": None},
    {"lang": "en", "year": 2024, "score": -1, "ok": True, "when": "2024-12-31T23:59:59.999999Z", "tags": ["c"]},
    {"lang": 'a "quoted" \\ back-slashed, ü', "tags": ["it's", 'say "x"']},
]
FILTER_CASES: list[tuple[dict[str, Any], set[int]]] = [
    ({"lang": "en"}, {0, 2, 5}),
    ({"lang": {"eq": "fr"}}, {1}),
    ({"lang": {"in": ["fr", "de"]}}, {1, 3}),
    ({"year": {"gte": 2020, "lt": 2022}}, {1, 2}),
    ({"year": 2022}, {3}),
    ({"year": {"in": [2019, 2024]}}, {0, 5}),
    ({"year": {"gt": 2021}}, {3, 5}),
    ({"year": {"lte": 2019}}, {0}),
    ({"score": {"gt": 1.5}}, {2, 3}),
    ({"score": {"lte": 0.5}}, {0, 5}),
    ({"score": 2.5}, {2}),
    ({"score": {"in": [1.5, 3.5]}}, {1, 3}),
    ({"ok": True}, {0, 2, 5}),
    ({"ok": False}, {1, 3}),
    ({"when": {"gte": "2021-06-01T10:00:00Z"}}, {1, 2, 3, 5}),
    ({"when": {"lt": "2021-06-01T10:00:00Z"}}, {0}),
    ({"when": "2022-01-01T00:00:00+00:00"}, {2}),
    ({"when": {"gt": "2024-12-31T23:59:59.999998Z"}}, {5}),
    ({"tags": "a"}, {0, 1}),
    ({"tags": {"in": ["b", "c"]}}, {1, 2, 5}),
    ({"lang": "en", "year": {"gt": 2019}, "ok": True}, {2, 5}),
    ({"lang": "xx"}, set()),
    ({"lang": 'a "quoted" \\ back-slashed, ü'}, {6}),
    ({"tags": {"in": ['say "x"', "z"]}}, {6}),
    ({"lang": {"in": ["de", 'a "quoted" \\ back-slashed, ü']}}, {3, 6}),
]
#: metadata keys no store field may ever be made of
AWKWARD_KEYS = ["a.b", "x.y.z", "with space", "$dollar", "", "ünï €", "__proto__", "-dash", "0digit", "meta_lang"]


class VectorDBContract:
    """Inherit in ``test_<db>.py``; implement :meth:`make_store` and the hooks, define ``unreachable``."""

    #: top-level fields a store lists beside the payload fields (Qdrant's payload keeps "metadata" as JSON)
    extra_fields: frozenset[str] = frozenset()
    #: a field the old layout made of metadata {"lang": ...} (see legacy_upsert)
    legacy_field: str = "metadata__lang"

    def make_store(self) -> BaseVectorDB:  # pragma: no cover - overridden
        """A new store instance (another worker's view of the same database), built with CONTRACT."""
        raise NotImplementedError

    def second_store(self, store: BaseVectorDB) -> BaseVectorDB:
        """Another worker on the same database, with nothing cached."""
        return self.make_store()

    def native_fields(self, store: BaseVectorDB, collection: str) -> set[str]:  # pragma: no cover - overridden
        """The fields the database holds for ``collection`` beside id and vector, read with its own client."""
        raise NotImplementedError

    def legacy_upsert(self, store: BaseVectorDB, collection: str, records: list[VectorRecord]) -> None:
        """Create ``collection`` and write ``records`` as the adapter did before the contract."""
        raise NotImplementedError  # pragma: no cover - overridden

    def drop(self, store: BaseVectorDB, collection: str) -> None:
        """Remove ``collection`` from a shared server after the test (nothing for a temporary folder)."""

    def drop_behind(self, store: BaseVectorDB, collection: str) -> None:  # pragma: no cover - overridden
        """Delete ``collection`` with the store's own client, as a person or another tool would: not through the
        adapter, which keeps what it remembered of it."""
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Iterator[BaseVectorDB]:
        store = self.make_store()
        yield store
        store.close()

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def collection(self, store: BaseVectorDB) -> Iterator[str]:
        name = f"Contract_{uuid.uuid4().hex[:10]}"
        yield name
        self.drop(store, name)

    def test_create_upsert_count(self, store: BaseVectorDB, collection: str) -> None:
        assert store.count(collection) == 0
        store.ensure_collection(collection, DIM)
        store.ensure_collection(collection, DIM)  # idempotent
        ids = _ids(3)
        store.upsert(collection, [VectorRecord(i, _vec(n), {"n": n}) for n, i in enumerate(ids)])
        assert store.count(collection) == 3

    def test_upsert_same_ids_replaces(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(2)
        store.upsert(collection, [VectorRecord(i, _vec(n), {"v": 1}) for n, i in enumerate(ids)])
        store.upsert(collection, [VectorRecord(i, _vec(n + 100), {"v": 2}) for n, i in enumerate(ids)])
        assert store.count(collection) == 2
        got = {p.id: p for p in store.retrieve(collection, ids)}
        for n, i in enumerate(ids):
            assert got[i].payload["v"] == 2
            assert np.allclose(got[i].vector, _vec(n + 100), atol=1e-5)

    def test_delete(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(3)
        store.upsert(collection, [VectorRecord(i, _vec(n)) for n, i in enumerate(ids)])
        store.delete(collection, ids[:2] + [str(uuid.uuid4())])
        assert store.count(collection) == 1
        assert [p.id for p in store.retrieve(collection, ids)] == [ids[2]]

    def test_task_record_ids_finds_every_record_of_a_task_and_nothing_else(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        """What an update's stale records and a delete are found by: the task_id field, matched exactly."""
        assert store.task_record_ids(collection, ["t-a"]) == {}  # no collection yet
        store.ensure_collection(collection, DIM)
        ids = _ids(6)
        tasks = ["t-a", "t-a", "t-a", "t-a b", "t-b", 'q"uo\\te']
        store.upsert(
            collection, [record(collection, i, n, {}, task=t) for n, (i, t) in enumerate(zip(ids, tasks, strict=True))]
        )
        found = store.task_record_ids(collection, ["t-a", 'q"uo\\te', "t-unknown"])
        assert found == {"t-a": set(ids[:3]), 'q"uo\\te': {ids[5]}}
        assert store.task_record_ids(collection, []) == {}
        store.delete(collection, sorted(found["t-a"]))
        assert store.task_record_ids(collection, ["t-a", "t-a b"]) == {"t-a b": {ids[3]}}

    def test_task_records_return_each_records_content_digest(self, store: BaseVectorDB, collection: str) -> None:
        """What the writer skips unchanged records by: the digest written with a record comes back with its id
        (None for a record written without one)."""
        store.ensure_collection(collection, DIM)
        ids = _ids(3)
        digested = [with_digest(record(collection, i, n, {"k": n}, task="t-d"))[0] for n, i in enumerate(ids[:2])]
        store.upsert(collection, [*digested, record(collection, ids[2], 2, {}, task="t-d")])
        found = store.task_records(collection, ["t-d"])
        assert found == {"t-d": {r.id: r.payload["content_digest"] for r in digested} | {ids[2]: None}}

    def test_search_nearest_first(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(5)
        store.upsert(collection, [VectorRecord(i, _vec(n), {"n": n}) for n, i in enumerate(ids)])
        hits = store.search(collection, _vec(3), k=3)
        assert hits[0].id == ids[3] and len(hits) == 3
        assert hits[0].score >= hits[1].score >= hits[2].score

    def test_metadata_round_trip(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        metadata = {
            "tags": ["a", "é"],
            "nested": {"x": 1.5, "ok": True, "deeper": {"$k": None}},
            **{key: f"value of {key!r}" for key in AWKWARD_KEYS},
            "lang": "zh",
        }
        payload = {"text": "向量化 ✓ café", "metadata": metadata}
        rid = str(uuid.uuid4())
        store.upsert(collection, [VectorRecord(rid, _vec(1), payload, filterable={"lang": "zh"})])
        [point] = store.retrieve(collection, [rid])
        assert point.payload == payload
        [hit] = store.search(collection, _vec(1), k=1)
        assert hit.payload == payload

    def test_filter_language(self, store: BaseVectorDB, collection: str) -> None:
        """Equality, ranges and ``in`` over every declared type give the same records in every store."""
        store.ensure_collection(collection, DIM)
        ids = _ids(len(FILTER_DATA))
        store.upsert(collection, [record(collection, i, n, FILTER_DATA[n]) for n, i in enumerate(ids)])
        for filter, expected in FILTER_CASES:
            hits = store.search(collection, _vec(0), k=len(ids) + 2, filter=filter)
            assert {ids.index(h.id) for h in hits} == expected, filter

    def test_invalid_filters_are_refused_clearly(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        cases = [
            ({"metadata.lang": "en"}, "only declared metadata fields"),
            ({"task_id": "t"}, "only declared metadata fields"),
            ({"year": {"like": 3}}, "unknown operator 'like'"),
            ({"lang": {"gt": "a"}}, "gt needs an int, float or datetime field"),
            ({"year": "2020"}, r"must be int but is a string \('2020'\)"),
            ({"year": True}, "must be int but is a bool"),
            ({"when": {"gte": "yesterday"}}, "not an ISO 8601 date-time"),
            ({"tags": {"in": []}}, "'in' takes a list"),
            ({"ok": None}, "must be bool but is null"),
        ]
        for filter, message in cases:
            with pytest.raises(InvalidFilterError, match=message) as info:
                store.search(collection, _vec(0), k=3, filter=filter)
            assert collection in str(info.value)

    def test_metadata_never_changes_the_schema(self, store: BaseVectorDB, collection: str) -> None:
        """10,000 distinct undeclared keys over 1,000 records, awkward keys and a key that changes type: the
        store's fields stay as created, every write succeeds, and the store keeps answering."""
        store.ensure_collection(collection, DIM)
        first = record(collection, str(uuid.uuid4()), 0, FILTER_DATA[0], task="first")
        store.upsert(collection, [first])
        before = self.native_fields(store, collection)
        assert before - self.extra_fields <= set(WORKER_FIELDS) | DECLARED_NATIVE | {PAYLOAD_KEY}, before
        shifting: list[Any] = [1, "one", [1, "x"], {"n": 1}, True, 1.5, None, "2020-01-01", -7, []]
        records = []
        for n in range(1000):
            metadata: dict[str, Any] = {f"key_{n}_{j}": n * 10 + j for j in range(10)}  # 10,000 distinct keys
            metadata |= {key: n for key in AWKWARD_KEYS}
            metadata |= {"shifty": shifting[n % len(shifting)], "nested": {"a.b": {"$c": n}, "": [n]}}
            metadata |= {"lang": "bulk", "year": 3000 + n}
            records.append(record(collection, str(uuid.uuid4()), n + 1, metadata, task=f"bulk-{n}"))
        for start in range(0, len(records), 250):
            store.upsert(collection, records[start : start + 250])
        assert self.native_fields(store, collection) == before
        assert store.count(collection) == 1001
        sample = [records[0], records[3], records[999]]
        got = {p.id: p.payload for p in store.retrieve(collection, [r.id for r in sample], with_vectors=False)}
        assert got == {r.id: r.payload for r in sample}
        hits = store.search(collection, _vec(0), k=5, filter={"lang": "en"})
        assert [h.id for h in hits] == [first.id]
        hits = store.search(collection, records[500].vector, k=3, filter={"year": {"gte": 3500}, "lang": "bulk"})
        assert hits[0].id == records[500].id and len(hits) == 3

    def test_legacy_collection_keeps_reading(self, store: BaseVectorDB, collection: str) -> None:
        """A collection written by the old flattening: old records read back whole; new records use the new
        layout there, and only the declared fields are added to what the store holds."""
        old = [
            VectorRecord(i, _vec(n), worker_payload("old", {"lang": "en", "deep": {"k": n}}, n))
            for n, i in enumerate(_ids(3))
        ]
        self.legacy_upsert(store, collection, old)
        fields_before = self.native_fields(store, collection)
        assert self.legacy_field in fields_before, fields_before
        store.ensure_collection(collection, DIM)
        new = [record(collection, i, 10 + n, {"lang": "en", "year": 2030, "x.y": n}) for n, i in enumerate(_ids(2))]
        store.upsert(collection, new)
        every = old + new
        got = {p.id: p.payload for p in store.retrieve(collection, [r.id for r in every])}
        assert got == {r.id: r.payload for r in every}
        assert {h.id for h in store.search(collection, _vec(0), k=10, filter={"year": 2030})} == {r.id for r in new}
        added = self.native_fields(store, collection) - fields_before
        assert added <= DECLARED_NATIVE | set(WORKER_FIELDS), added

    def test_losing_the_creation_race_is_success(self, store: BaseVectorDB, collection: str) -> None:
        """Workers that looked a new collection up before another created it go on to create it too: for
        them "already exists" is success, and the collection they then use is the one that exists."""
        store.ensure_collection(collection, DIM)
        other = self.second_store(store)
        try:
            other._create_collection(collection, DIM, "cosine")  # type: ignore[attr-defined]
            other.ensure_collection(collection, DIM)
            other.upsert(collection, [record(collection, str(uuid.uuid4()), 1, {"lang": "en"})])
            assert store.count(collection) == 1
        finally:
            if other is not store:
                other.close()
        late = self.second_store(store)
        try:
            with pytest.raises(StoreRejectedError, match="dimension"):
                late._create_collection(collection, DIM + 1, "cosine")  # type: ignore[attr-defined]
                late.ensure_collection(collection, DIM + 1)
        finally:
            if late is not store:
                late.close()

    def test_workers_creating_one_collection_at_once(self, store: BaseVectorDB, collection: str) -> None:
        """Three workers starting on a new collection at the same moment all succeed."""
        workers = [self.second_store(store) for _ in range(3)]
        barrier = threading.Barrier(len(workers))
        errors: list[BaseException] = []

        def start(worker: BaseVectorDB) -> None:
            barrier.wait()
            try:
                worker.ensure_collection(collection, DIM)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for worker in workers:
            if worker is not store:
                worker.close()
        assert not errors, [repr(e) for e in errors]
        store.ensure_collection(collection, DIM)
        assert store.count(collection) == 0

    def test_dimension_mismatch_is_permanent_and_clear(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        with pytest.raises(StoreRejectedError, match=rf"dimension.*{DIM}|{DIM}.*dimension"):
            store.ensure_collection(collection, DIM + 1)
        with pytest.raises(StoreRejectedError, match="dimension"):
            store.upsert(collection, [VectorRecord(str(uuid.uuid4()), [0.1] * (DIM + 2))])

    # -- one model per collection -------------------------------------------------------------------------
    def _other(self, store: BaseVectorDB, check: Callable[[BaseVectorDB], None]) -> None:
        """Run ``check`` with another worker's view of the database (nothing cached), then close it."""
        other = self.second_store(store)
        try:
            check(other)
        finally:
            if other is not store:
                other.close()

    @staticmethod
    def _refused(store: BaseVectorDB, collection: str, wanted: ModelIdentity, bound: ModelIdentity) -> str:
        """``wanted`` is refused in ``collection`` (bound to ``bound``) by a message that names the collection, the
        store, both models (name, 12 hex of the revision, dimension) and the way out; the message."""
        with pytest.raises(StoreRejectedError) as info:
            store.ensure_collection(collection, wanted.dim, identity=wanted)
        message = str(info.value)
        for part in (
            repr(collection),
            store.describe(),
            f"{bound.name} (rev {bound.revision[:12]}, dim {bound.dim})",
            f"{wanted.name} (rev {wanted.revision[:12]}, dim {wanted.dim})",
            "Send the task to another collection (its `collection` field)",
            f"delete collection {collection!r} and send its tasks again",
        ):
            assert part in message, (part, message)
        assert "migrat" not in message.lower()
        return message

    def test_a_new_collection_is_bound_to_the_model_it_is_made_for(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        store.ensure_collection(collection, DIM, identity=MODEL_A)  # the same model again: fine
        store.upsert(collection, [versioned_record(str(uuid.uuid4()), 0, MODEL_A.name, MODEL_A.revision)])
        assert store.bound_identity(collection) == MODEL_A
        store.ensure_collection(collection, DIM)  # without an identity (an older caller): unchecked, as before

        def another_worker(other: BaseVectorDB) -> None:
            assert other.bound_identity(collection) == MODEL_A  # read from the database itself
            other.ensure_collection(collection, DIM, identity=MODEL_A)
            other.upsert(collection, [versioned_record(str(uuid.uuid4()), 1, MODEL_A.name, MODEL_A.revision)])

        self._other(store, another_worker)
        assert store.count(collection) == 2
        assert store.bound_identity(f"{collection}_missing") is None

    def test_another_model_is_refused_naming_both(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        self._refused(store, collection, MODEL_B, MODEL_A)  # this worker: from what it remembers

        def another_worker(other: BaseVectorDB) -> None:
            self._refused(other, collection, MODEL_B, MODEL_A)  # read from the database
            retrained = replace(MODEL_A, revision=_revision("a, fine-tuned"))  # same name, other weights
            self._refused(other, collection, retrained, MODEL_A)
            wider = replace(MODEL_B, dim=DIM + 1)  # another dimension too: still both models named
            self._refused(other, collection, wider, MODEL_A)
            other.ensure_collection(collection, DIM, identity=MODEL_A)

        self._other(store, another_worker)
        assert store.bound_identity(collection) == MODEL_A  # a refusal changes nothing

    def test_the_binding_check_costs_no_request_once_known(self, store: BaseVectorDB, collection: str) -> None:
        """Every request of an adapter goes through its ``_call``: after the first ensure, ensuring the same
        collection again with its model (the writer does before every write) makes none. A refusal is
        confirmed by the store first (what the adapter remembers may be stale), so it costs requests."""
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        calls: list[str] = []
        real = store._call  # type: ignore[attr-defined]

        def counting(what: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            return real(what, *args, **kwargs)

        store._call = counting  # type: ignore[attr-defined]
        try:
            for _ in range(20):
                store.ensure_collection(collection, DIM, identity=MODEL_A)
            assert calls == []
            with pytest.raises(StoreRejectedError, match=MODEL_B.name):
                store.ensure_collection(collection, DIM, identity=MODEL_B)
            assert calls, "a refusal by the remembered binding is confirmed by the store"
        finally:
            del store._call  # type: ignore[attr-defined]

    def test_an_unbound_collection_is_bound_at_its_first_write(self, store: BaseVectorDB, collection: str) -> None:
        """A collection made before bindings (here: ensured without an identity) holding records of the model,
        written before revisions: bound where the store can keep a binding on an existing collection (Milvus
        cannot: its records say which model it holds), and another model refused from then on."""
        store.ensure_collection(collection, DIM)
        store.upsert(collection, [versioned_record(str(uuid.uuid4()), 0, MODEL_A.name, None, task="old")])
        assert store.bound_identity(collection) is None

        def first_write(worker: BaseVectorDB) -> None:
            worker.ensure_collection(collection, DIM, identity=MODEL_A)
            worker.upsert(collection, [versioned_record(str(uuid.uuid4()), 1, MODEL_A.name, MODEL_A.revision)])

        self._other(store, first_write)
        expected = MODEL_A if store.binds_existing_collections else None
        assert store.bound_identity(collection) == expected

        if store.binds_existing_collections:
            self._other(store, lambda worker: self._refused(worker, collection, MODEL_B, MODEL_A))
        else:  # what the one record read says: the model's name, and no revision for a record from before them
            self._other(store, lambda worker: _refused_by_record(worker, collection))
        self._other(store, lambda worker: worker.ensure_collection(collection, DIM, identity=MODEL_A))

    def test_an_unbound_collection_of_another_model_is_refused_not_bound(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        store.ensure_collection(collection, DIM)
        store.upsert(collection, [versioned_record(str(uuid.uuid4()), 0, MODEL_B.name, MODEL_B.revision, task="b")])

        def first_write(worker: BaseVectorDB) -> None:
            with pytest.raises(StoreRejectedError) as info:
                worker.ensure_collection(collection, DIM, identity=MODEL_A)
            message = str(info.value)
            assert f"holds vectors of model {MODEL_B.name} (rev {MODEL_B.revision[:12]}, dim {DIM})" in message
            assert f"{MODEL_A.name} (rev {MODEL_A.revision[:12]}, dim {DIM})" in message and collection in message
            worker.ensure_collection(collection, DIM, identity=MODEL_B)  # its own model is welcome

        self._other(store, first_write)
        expected = MODEL_B if store.binds_existing_collections else None
        assert store.bound_identity(collection) == expected

    def test_workers_binding_one_collection_at_once(self, store: BaseVectorDB, collection: str) -> None:
        """Three workers starting on a new collection with the same model at the same moment, then three on an
        unbound one: all succeed and leave one binding. (Workers that share one client, as in embedded modes
        that lock their folder, take turns: the worker calls a store from its one store thread.)"""
        unbound = f"{collection}_u"
        store.ensure_collection(unbound, DIM)
        try:
            for name in (collection, unbound):
                workers = [self.second_store(store) for _ in range(3)]
                errors = _at_once(workers, lambda w, name=name: w.ensure_collection(name, DIM, identity=MODEL_A))
                for worker in workers:
                    if worker is not store:
                        worker.close()
                assert not errors, [repr(e) for e in errors]
            assert store.bound_identity(collection) == MODEL_A
            assert store.bound_identity(unbound) == (MODEL_A if store.binds_existing_collections else None)
            self._other(store, lambda worker: self._refused(worker, collection, MODEL_B, MODEL_A))
        finally:
            self.drop(store, unbound)

    # -- a collection deleted behind the adapter ----------------------------------------------------------------
    def test_a_collection_deleted_after_a_refusal_takes_the_new_model(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        """The way out of a model mismatch the refusal names, taken by hand: once the collection is deleted, the
        same adapter (a running worker that remembered the old binding) makes it again for the new model, no
        restart; and it follows a collection another worker made again for another model."""
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        store.upsert(collection, [versioned_record(str(uuid.uuid4()), 0, MODEL_A.name, MODEL_A.revision)])
        self._refused(store, collection, MODEL_B, MODEL_A)
        self.drop_behind(store, collection)
        store.ensure_collection(collection, DIM, identity=MODEL_B)
        written = versioned_record(str(uuid.uuid4()), 1, MODEL_B.name, MODEL_B.revision)
        store.upsert(collection, [written])
        assert [p.id for p in store.retrieve(collection, [written.id])] == [written.id]
        assert store.count(collection) == 1 and store.bound_identity(collection) == MODEL_B
        self._refused(store, collection, MODEL_A, MODEL_B)  # the new binding holds

        self.drop_behind(store, collection)

        def made_again_for_a(other: BaseVectorDB) -> None:
            other.ensure_collection(collection, DIM, identity=MODEL_A)
            other.upsert(collection, [versioned_record(str(uuid.uuid4()), 2, MODEL_A.name, MODEL_A.revision)])

        self._other(store, made_again_for_a)
        store.ensure_collection(collection, DIM, identity=MODEL_A)  # this adapter remembered MODEL_B: read again
        store.upsert(collection, [versioned_record(str(uuid.uuid4()), 3, MODEL_A.name, MODEL_A.revision)])
        assert store.count(collection) == 2 and store.bound_identity(collection) == MODEL_A
        self._refused(store, collection, MODEL_B, MODEL_A)

    @pytest.mark.parametrize("call", ["task_records", "upsert", "delete"])
    def test_a_collection_deleted_behind_the_adapter_is_made_again_at_the_retry(
        self, store: BaseVectorDB, collection: str, call: str
    ) -> None:
        """A write call on a collection deleted since the adapter made sure of it raises StoreUnavailableError
        and forgets it, so the writer's retry (ensure_collection, the lookup, the write) makes it again, bound
        to the model, instead of failing every later task or retrying for ever."""
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        first = versioned_record(str(uuid.uuid4()), 0, MODEL_A.name, MODEL_A.revision, task="t-1")
        store.upsert(collection, [first])
        self.drop_behind(store, collection)
        again = versioned_record(str(uuid.uuid4()), 1, MODEL_A.name, MODEL_A.revision, task="t-1")
        calls: dict[str, Callable[[], Any]] = {
            "task_records": lambda: store.task_records(collection, ["t-1"]),
            "upsert": lambda: store.upsert(collection, [again]),
            "delete": lambda: store.delete(collection, [first.id]),
        }
        with pytest.raises(StoreUnavailableError, match="not found during") as info:
            calls[call]()
        assert store.describe() in str(info.value) and "will retry" in str(info.value)
        # the writer's retry
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        assert store.task_records(collection, ["t-1"]) == {}
        store.upsert(collection, [again])
        assert store.task_record_ids(collection, ["t-1"]) == {"t-1": {again.id}}
        assert store.count(collection) == 1 and store.bound_identity(collection) == MODEL_A
        self._refused(store, collection, MODEL_B, MODEL_A)

    def test_a_collection_that_keeps_vanishing_is_refused_not_retried_for_ever(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        """When the collection is gone again each time the retry has made it again, the write gives up after
        MISSING_LIMIT tries with a permanent refusal that says so (the task fails alone); a write that then
        succeeds starts the count again."""
        rec = versioned_record(str(uuid.uuid4()), 0, MODEL_A.name, MODEL_A.revision)
        for attempt in range(1, MISSING_LIMIT + 1):
            store.ensure_collection(collection, DIM, identity=MODEL_A)  # the writer's retry makes it again
            self.drop_behind(store, collection)  # and something drops it at once
            if attempt < MISSING_LIMIT:
                with pytest.raises(StoreUnavailableError, match="not found during"):
                    store.upsert(collection, [rec])
            else:
                with pytest.raises(StoreRejectedError, match=f"{MISSING_LIMIT} times in a row") as info:
                    store.upsert(collection, [rec])
                assert "Find what drops it" in str(info.value) and store.describe() in str(info.value)
        store.ensure_collection(collection, DIM, identity=MODEL_A)
        store.upsert(collection, [rec])
        assert store.count(collection) == 1
        self.drop_behind(store, collection)
        with pytest.raises(StoreUnavailableError):  # counted from one again
            store.upsert(collection, [rec])

    # -- aliases and pointers, dropping, reading back ---------------------------------------------------------
    @pytest.fixture
    def two_models(self, store: BaseVectorDB, collection: str) -> Iterator[tuple[str, str, str]]:
        """(alias, a, b): the physical collections of ``collection`` for MODEL_A (3 records, dimension DIM) and
        MODEL_WIDE (2 records, dimension WIDE), made and filled; the alias (``collection``) points at nothing.
        Afterwards the alias is removed, then both collections."""
        alias = collection
        a, b = physical_name(alias, MODEL_A), physical_name(alias, MODEL_WIDE)
        try:
            store.ensure_collection(a, DIM, identity=MODEL_A)
            store.ensure_collection(b, WIDE, identity=MODEL_WIDE)
            store.upsert(
                a,
                [
                    versioned_record(f"00000000-0000-4000-8000-00000000000{n}", n, MODEL_A.name, MODEL_A.revision)
                    for n in range(3)
                ],
            )
            store.upsert(
                b,
                [
                    VectorRecord(f"00000000-0000-4000-8000-00000000001{n}", _wide_vec(n), worker_payload(f"w{n}", {}))
                    for n in range(2)
                ],
            )
            yield alias, a, b
        finally:
            store.unpoint(alias)
            self.drop(store, a)
            self.drop(store, b)

    def test_a_physical_name_is_a_valid_collection_here(
        self, store: BaseVectorDB, two_models: tuple[str, str, str]
    ) -> None:
        _, a, b = two_models
        assert store.count(a) == 3 and store.count(b) == 2
        assert store.bound_identity(a) == MODEL_A and store.bound_identity(b) == MODEL_WIDE
        assert [p.id for p in store.search(b, _wide_vec(1), k=1)] == ["00000000-0000-4000-8000-000000000011"]

    def test_an_alias_is_made_switched_and_removed(self, store: BaseVectorDB, two_models: tuple[str, str, str]) -> None:
        alias, a, b = two_models
        assert store.resolve(alias) is None  # no alias: the name is used as a plain collection's
        store.point(alias, a, identity=MODEL_A)
        assert store.resolve(alias) == store.store_name(a)
        self._other(store, lambda other: _resolves(other, alias, a))  # read from the database, not remembered
        store.point(alias, a, identity=MODEL_A)  # again: nothing changes
        store.point(alias, b, identity=MODEL_WIDE)  # the switch
        assert store.resolve(alias) == store.store_name(b)
        self._other(store, lambda other: _resolves(other, alias, b))
        store.unpoint(alias)
        assert store.resolve(alias) is None
        self._other(store, lambda other: _resolves(other, alias, None))
        store.unpoint(alias)  # nothing to remove: fine
        assert store.count(a) == 3 and store.count(b) == 2  # an alias's targets are untouched

    def test_workers_pointing_one_new_alias_at_once(
        self, store: BaseVectorDB, two_models: tuple[str, str, str]
    ) -> None:
        """Three workers making the same alias at the same moment (the first write to a new collection on
        several workers): all succeed and the alias names the collection."""
        alias, a, _ = two_models
        workers = [self.second_store(store) for _ in range(3)]
        try:
            errors = _at_once(workers, lambda w: w.point(alias, a, identity=MODEL_A))
        finally:
            for worker in workers:
                if worker is not store:
                    worker.close()
        assert not errors, [repr(e) for e in errors]
        self._other(store, lambda other: _resolves(other, alias, a))

    def test_reads_through_an_alias_follow_its_switch(
        self, store: BaseVectorDB, two_models: tuple[str, str, str]
    ) -> None:
        """A reader that searched (and, with native aliases, made sure of the collection, as a worker writing
        through the name would) before a switch between two dimensions reads the new target right after it:
        nothing it remembers answers for the alias."""
        alias, a, b = two_models
        native = store.alias_kind == "native"

        def through() -> str:  # native aliases resolve in the store; a pointer is resolved by the reader
            target = alias if native else store.resolve(alias)
            assert target is not None
            return target

        store.point(alias, a)
        if native:
            store.ensure_collection(alias, DIM, identity=MODEL_A)
        assert [p.id for p in store.search(through(), _vec(2), k=1)] == ["00000000-0000-4000-8000-000000000002"]
        assert store.count(through()) == 3
        store.point(alias, b)
        hits = store.search(through(), _wide_vec(1), k=2)
        assert [p.id for p in hits] == ["00000000-0000-4000-8000-000000000011", "00000000-0000-4000-8000-000000000010"]
        [got] = store.retrieve(through(), ["00000000-0000-4000-8000-000000000010"])
        assert len(got.vector or []) == WIDE and got.payload["task_id"] == "w0"
        assert store.count(through()) == 2
        if native:
            store.ensure_collection(alias, WIDE, identity=MODEL_WIDE)  # its binding and dimension, not a's
            with pytest.raises(StoreRejectedError, match="dimension|vector length"):
                store.search(alias, _vec(0), k=1)

    def test_every_read_by_the_name_reads_its_target_and_has_collection_tells_them_apart(
        self, store: BaseVectorDB, two_models: tuple[str, str, str]
    ) -> None:
        """Readers use the name a collection was made behind on first use: native aliases resolve in the
        store, this project's pointer stores read a name that is not a collection through its pointer."""
        alias, a, b = two_models
        assert not store.has_collection(alias) and store.has_collection(a) and store.has_collection(b)
        store.point(alias, b, identity=MODEL_WIDE)
        assert not store.has_collection(alias)  # an alias or a pointer is not a collection
        assert store.count(alias) == 2 and store.bound_identity(alias) == MODEL_WIDE
        assert [p.id for p in store.search(alias, _wide_vec(1), k=1)] == ["00000000-0000-4000-8000-000000000011"]
        [got] = store.retrieve(alias, ["00000000-0000-4000-8000-000000000010"])
        assert got.payload["task_id"] == "w0"
        assert set(store.task_records(alias, ["w0", "w1"])) == {"w0", "w1"}

    def test_point_refuses_what_cannot_be_pointed_at(
        self, store: BaseVectorDB, two_models: tuple[str, str, str]
    ) -> None:
        alias, a, b = two_models
        with pytest.raises(StoreRejectedError, match="does not exist") as info:
            store.point(alias, f"{a}_missing")
        assert f"{a}_missing".lower() in str(info.value).lower() and store.describe() in str(info.value)
        assert store.resolve(alias) is None
        if store.alias_kind == "native":
            # an alias cannot take a collection's name (a collection made before aliases is copied first)
            with pytest.raises(StoreRejectedError, match="a collection of that name exists"):
                store.point(b, a)
            store.point(alias, a)
            with pytest.raises(StoreRejectedError, match="is an alias"):  # an alias of an alias
                store.point(f"{alias}_2", alias)
        else:
            # a pointer may have a collection's name: a collection made before pointers points at itself
            store.point(a, a)
            assert store.resolve(a) == store.store_name(a)
            store.unpoint(a)
        assert store.count(a) == 3 and store.count(b) == 2

    def test_drop_refuses_a_collection_an_alias_points_at(
        self, store: BaseVectorDB, two_models: tuple[str, str, str]
    ) -> None:
        alias, a, b = two_models
        store.point(alias, a)
        with pytest.raises(StoreRejectedError, match="cannot be dropped") as info:
            store.drop(a)
        assert store.store_name(alias) in str(info.value) and "unpoint" in str(info.value)
        assert store.count(a) == 3
        if store.alias_kind == "native":
            with pytest.raises(StoreRejectedError, match="is an alias"):
                store.drop(alias)
        store.drop(b)
        assert store.count(b) == 0 and store.bound_identity(b) is None
        store.drop(b)  # gone already: fine
        # nothing of the dropped collection is remembered: made again with another dimension and model
        store.ensure_collection(b, DIM, identity=MODEL_B)
        store.upsert(b, [versioned_record(str(uuid.uuid4()), 5, MODEL_B.name, MODEL_B.revision)])
        assert store.count(b) == 1
        store.unpoint(alias)
        store.drop(a)
        assert store.count(a) == 0 and store.resolve(alias) is None

    def test_scan_reads_every_record_once_and_resumes_from_its_cursor(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        assert store.scan(f"{collection}_missing") == ([], None)
        assert store.scan_ids(f"{collection}_missing") == ([], None)
        store.ensure_collection(collection, DIM)
        records = [record(collection, str(uuid.uuid4()), n, {"lang": "en", "n": n}, task=f"s{n}") for n in range(23)]
        for start in (0, 9, 17):  # several writes: several segments where the store has them
            store.upsert(collection, records[start : start + {0: 9, 9: 8, 17: 6}[start]])
        expected = {r.id: r.payload for r in records}

        first, cursor = store.scan(collection, limit=5)
        assert len(first) == 5 and cursor is not None and all(p.vector is None for p in first)
        read = list(first)
        pages = 1

        def rest(worker: BaseVectorDB) -> None:  # another worker goes on from the stored cursor
            nonlocal cursor, pages
            while cursor is not None:
                page, cursor = worker.scan(collection, cursor, limit=5)
                read.extend(page)
                pages += 1

        self._other(store, rest)
        assert sorted(p.id for p in read) == sorted(expected)  # each once
        assert {p.id: p.payload for p in read} == expected
        assert pages == 5  # 23 records in pages of 5: the short last page ends the scan

        ids: list[str] = []
        cursor = None
        while True:
            page_ids, cursor = store.scan_ids(collection, cursor, limit=7)
            ids.extend(page_ids)
            if cursor is None:
                break
        assert sorted(ids) == sorted(expected)
        everything, cursor = store.scan(collection, limit=100)
        assert len(everything) == 23 and cursor is None

    def test_unreachable_server_is_retryable_and_clear(self, unreachable: BaseVectorDB) -> None:
        with pytest.raises(StoreUnavailableError) as info:
            unreachable.health()
        message = str(info.value)
        assert "Failed to connect" in message and "is the server running?" in message


def _resolves(store: BaseVectorDB, alias: str, physical: str | None) -> None:
    assert store.resolve(alias) == (store.store_name(physical) if physical is not None else None)


def _refused_by_record(store: BaseVectorDB, collection: str) -> None:
    """Milvus, unbound: another model is refused by what a stored record says (name, revision when it has one)."""
    with pytest.raises(StoreRejectedError) as info:
        store.ensure_collection(collection, DIM, identity=MODEL_B)
    message = str(info.value)
    assert f"holds vectors of model {MODEL_A.name} (rev " in message and MODEL_B.name in message, message
    assert repr(collection) in message and "another collection" in message


def _at_once(workers: list[BaseVectorDB], start: Callable[[BaseVectorDB], None]) -> list[BaseException]:
    """Run ``start`` for every worker at the same moment (in turn when they share one client); the errors."""
    errors: list[BaseException] = []

    def run(worker: BaseVectorDB, barrier: threading.Barrier | None) -> None:
        if barrier is not None:
            barrier.wait()
        try:
            start(worker)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    if len({id(w) for w in workers}) < len(workers):
        for worker in workers:
            run(worker, None)
        return errors
    barrier = threading.Barrier(len(workers))
    threads = [threading.Thread(target=run, args=(w, barrier)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
