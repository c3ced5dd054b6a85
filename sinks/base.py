"""The :class:`BaseVectorDB` port every vector database adapter implements.

What a stored record holds, in every store (docs/stores.md, "Metadata and filters"):

* the whole payload as one JSON string (``_payload``; Qdrant keeps it as its
  native JSON payload) — the only thing read back, so a hit's ``payload`` is
  exactly what was written, ``metadata`` included, whatever its keys;
* the worker's own fields (:data:`WORKER_FIELDS`) as native fields, defined
  when a collection is created where the store has a schema;
* the declared metadata fields (:mod:`core.metadata_contract`) as native,
  indexed fields ``meta_<name>``, the only ones filters address.

No other key ever becomes a store field, so a task's metadata cannot change
a collection's schema.

Every collection is bound to one model (:class:`core.versioning.ModelIdentity`),
kept by the store at collection level (docs/stores.md, "One model per
collection"): :meth:`BaseVectorDB.ensure_collection` with ``identity=`` binds
a new or unbound collection and refuses another model's vectors.

The operations a model migration builds on (docs/stores.md, "Aliases and
pointers"): :meth:`BaseVectorDB.resolve`, :meth:`~BaseVectorDB.point`,
:meth:`~BaseVectorDB.unpoint`, :meth:`~BaseVectorDB.drop`,
:meth:`~BaseVectorDB.scan` and :meth:`~BaseVectorDB.scan_ids`. A store with
native aliases (Weaviate, Qdrant) keeps them; the others (Chroma, Milvus)
keep one row per alias in the pointer collection :data:`POINTER_COLLECTION`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import StoreRejectedError, StoreUnavailableError
from core.metadata_contract import MetadataContract, finite_float
from core.versioning import ModelIdentity

Distance = Literal["cosine", "dot", "euclid"]
#: how a store keeps an alias: its own aliases, a row of :data:`POINTER_COLLECTION`, or not at all
AliasKind = Literal["native", "pointer", "none"]
#: the collection that holds one row per alias (alias -> physical collection) in stores without aliases
POINTER_COLLECTION = "vw_aliases"
#: the records :meth:`BaseVectorDB.scan` reads per call when not told, and the most it reads per call
SCAN_PAGE = 1000
MAX_SCAN_PAGE = 10_000
#: the most records :meth:`BaseVectorDB.task_records` reads in one call (Weaviate's query window)
MAX_TASK_RECORDS = 10_000
#: how many times in a row a write call may find its collection missing (each time made again at the writer's
#: retry) before that is a refusal of the task rather than an outage (see :class:`MissingCollections`)
MISSING_LIMIT = 5
#: the payload as JSON, in stores whose fields are flat scalars
PAYLOAD_KEY = "_payload"
#: the payload fields of tasks.inputs.build_records, with their types ("text": long, not for filtering)
WORKER_FIELDS: dict[str, str] = {
    "task_id": "string",
    "task_type": "string",
    "model": "string",
    "model_revision": "string",
    "worker_id": "string",
    "created_at": "float",
    "item_index": "int",
    "text": "text",
    "truncated": "bool",
    "vector_kind": "string",
    "chunk_index": "int",
    "chunk_count": "int",
    "char_start": "int",
    "char_end": "int",
    "token_count": "int",
    "title": "text",
    "source": "string",
    "width": "int",
    "height": "int",
    "image_ref": "string",
    "content_digest": "string",
}


@dataclass(frozen=True)
class VectorRecord:
    id: str  # a UUID string (see core.ids.vector_id)
    vector: Sequence[float]
    payload: Mapping[str, Any] = field(default_factory=dict)
    #: the declared metadata fields' values, already checked by MetadataContract.extract (declared name -> value)
    filterable: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredPoint:
    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None
    score: float | None = None  # similarity for search hits (higher is closer)


class BaseVectorDB(ABC):
    """A vector database, seen through the few operations the worker needs.

    Every method blocks (network or disk I/O) and is called from a worker
    thread, never from the event loop. Adapters translate their client's
    exceptions at this boundary: an unreachable or overloaded database raises
    :class:`~core.errors.StoreUnavailableError` (retryable); data the database
    refuses, such as a vector of the wrong dimension, raises
    :class:`~core.errors.StoreRejectedError` (permanent). Both messages name the
    database, where it is, and what to do.
    """

    #: registry name, e.g. "qdrant"
    name: str = "base"
    #: the declared filterable fields, set by each adapter's constructor (``contract=``; none when omitted)
    contract: MetadataContract
    #: whether an existing collection made before bindings can be bound (Milvus cannot change a collection's
    #: description: there, one stored record says which model an unbound collection holds)
    binds_existing_collections: bool = True
    #: how this store keeps aliases (:meth:`point`): ``native`` ones resolve in every operation of the store;
    #: a ``pointer`` is a row that only :meth:`resolve` reads (a pointer may have the name of a collection);
    #: ``none``: the adapter has no aliases (the default, for adapters that predate them)
    alias_kind: AliasKind = "none"

    @abstractmethod
    def ensure_collection(
        self, collection: str, dim: int, distance: Distance = "cosine", identity: ModelIdentity | None = None
    ) -> None:
        """Create the collection if missing, with its fixed and declared fields; reject an existing one of
        another dimension. Another worker creating it at the same moment is success, not an error.

        With ``identity`` (the model whose vectors are about to be written), the collection is bound to that
        model: a new one at its creation, an unbound one (made before bindings, or without ``identity``) now
        where the store can keep a binding on an existing collection; one bound to another model (or, unbound,
        holding a record of another model) raises :class:`~core.errors.StoreRejectedError` with
        :func:`core.versioning.mismatch_message`. The binding is remembered per collection like the
        dimension, so a write costs no request for it. Workers creating or binding a collection at the same
        moment with the same model all succeed, and leave one binding."""

    @abstractmethod
    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        """Insert or overwrite records by id (idempotent)."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete records by id; missing ids are ignored."""

    @abstractmethod
    def task_records(self, collection: str, task_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """Every record of each of ``task_ids`` in ``collection`` (its ``task_id`` field): its id and its
        ``content_digest`` field (None where the record has none: written before digests, or a store field
        an older collection lacks). The writer reads them to skip records whose content is unchanged and to
        find the records an update left stale; a delete removes them. A missing collection holds none.

        At most :data:`MAX_TASK_RECORDS` records are read per call (a task holds at most 10,000 texts;
        callers ask for few tasks at a time)."""

    def bound_identity(self, collection: str) -> ModelIdentity | None:
        """The model ``collection`` is bound to, read from the store now (not cached); None when it is missing,
        unbound, or the store keeps no bindings (the default, for adapters that predate them)."""
        return None

    def task_record_ids(self, collection: str, task_ids: Sequence[str]) -> dict[str, set[str]]:
        """The ids of every record of each of ``task_ids`` (see :meth:`task_records`)."""
        return {task_id: set(records) for task_id, records in self.task_records(collection, task_ids).items()}

    @abstractmethod
    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        """The ``k`` nearest records, nearest first, among those matching ``filter``.

        ``filter`` is the language of :mod:`sinks.filters` over the collection's declared fields; a filter
        on anything else raises :class:`~sinks.filters.InvalidFilterError` (permanent).
        """

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        """Records by id (missing ids are left out)."""

    @abstractmethod
    def count(self, collection: str) -> int:
        """Number of records in the collection (0 when it does not exist)."""

    @abstractmethod
    def health(self) -> None:
        """Return when the database answers; raise StoreUnavailableError otherwise."""

    # -- aliases, pointers and read-back: what a model migration builds on ---------------------------------
    def store_name(self, collection: str) -> str:
        """The name this store gives ``collection`` (Weaviate: its class name, ``docs`` -> ``Docs``; Milvus:
        ``-`` as ``_``): what :meth:`resolve` returns. Every method accepts either form."""
        return collection

    def resolve(self, alias: str) -> str | None:
        """The physical collection ``alias`` points at (in this store's form, :meth:`store_name`), read from
        the store now; None when no alias or pointer of that name exists (a plain collection of that name is
        then used as it is)."""
        return None

    def has_collection(self, name: str) -> bool:
        """Whether a collection (not an alias or a pointer) of that name exists, read from the store now: a
        collection made before aliases, which the worker keeps using under its own name."""
        raise StoreRejectedError(
            f"{self.describe()}: the {self.name} adapter cannot tell whether collection {name!r} exists; implement "
            'BaseVectorDB.has_collection (docs/stores.md, "Aliases and pointers").'
        )

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        """Make ``alias`` point at the existing collection ``physical``: create the alias, or switch it in one
        atomic step (readers see the old target or the new one, never none). ``identity``, the model
        ``physical`` holds, is kept beside a pointer for external readers (native aliases need none: the
        collection's own binding says it). :class:`~core.errors.StoreRejectedError` when ``physical`` does
        not exist or is itself an alias, or when a native alias would take the name of a collection."""
        raise StoreRejectedError(
            f"{self.describe()}: the {self.name} adapter keeps no aliases, so alias {alias!r} cannot point at "
            f'{physical!r}; implement BaseVectorDB.point/resolve/unpoint (docs/stores.md, "Aliases and pointers").'
        )

    def unpoint(self, alias: str) -> None:  # noqa: B027 - an adapter without aliases has none to remove
        """Remove the alias or pointer ``alias`` (its target stays); nothing when there is none."""

    def drop(self, physical: str) -> None:
        """Delete the collection ``physical`` and every record in it; nothing when it does not exist.
        :class:`~core.errors.StoreRejectedError` when an alias or pointer still points at it (switch or
        :meth:`unpoint` it first), or when ``physical`` is an alias."""
        raise StoreRejectedError(
            f"{self.describe()}: the {self.name} adapter cannot drop collection {physical!r}; implement "
            'BaseVectorDB.drop (docs/stores.md, "Aliases and pointers").'
        )

    def scan(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[StoredPoint], str | None]:
        """Up to ``limit`` records of ``physical`` with their payloads (no vectors) from ``cursor`` on (None:
        from the start), and the cursor to go on from (None: there are no more). A cursor is a string that can
        be stored and used later, by another process: every record present from the first call to the last
        and not written again meanwhile is read exactly once (Chroma: see docs/stores.md for its caveat). A
        missing collection holds none."""
        raise StoreRejectedError(
            f"{self.describe()}: the {self.name} adapter cannot read a collection back ({physical!r}); implement "
            'BaseVectorDB.scan (docs/stores.md, "Aliases and pointers").'
        )

    def scan_ids(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[str], str | None]:
        """:meth:`scan`, ids only (cheaper where the store can leave the payloads out)."""
        points, cursor = self.scan(physical, cursor, limit)
        return [p.id for p in points], cursor

    @staticmethod
    def _ensure_once_more(remembered: bool, ensure: Callable[[], None], forget: Callable[[], None]) -> None:
        """``ensure()``; when it is refused by what the adapter remembered (``remembered``: the collection was in
        its cache), which may be stale (the collection deleted — the way out of a model mismatch — and maybe
        made again since), ``forget()`` it and ask the store once more before the refusal stands."""
        try:
            ensure()
        except StoreRejectedError:
            if not remembered:
                raise
            forget()
            ensure()

    def describe(self) -> str:
        """Where this database is, for messages and result records."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or file locks."""


def worker_value(kind: str, value: Any) -> Any:
    """A worker field's value as its native type, or None when it does not have that type (the value stays
    in the payload JSON; a native field never gets a value of another type)."""
    if kind in ("string", "text"):
        return value if isinstance(value, str) else None
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63 else None
    if kind == "float":
        return finite_float(value)
    if kind == "bool":
        return value if isinstance(value, bool) else None
    return None  # pragma: no cover - WORKER_FIELDS has no other kinds


def worker_values(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The worker fields present in ``payload`` with their native types (see :func:`worker_value`)."""
    found = {}
    for name, kind in WORKER_FIELDS.items():
        value = payload.get(name)
        if value is not None and (native := worker_value(kind, value)) is not None:
            found[name] = native
    return found


def scan_page(limit: int) -> int:
    """``limit`` of a :meth:`BaseVectorDB.scan` call, kept within 1..:data:`MAX_SCAN_PAGE` (Weaviate's query
    window; Milvus caps offset + limit at 16,384)."""
    return max(1, min(int(limit), MAX_SCAN_PAGE))


class MissingCollections:
    """What an adapter's write calls (``task_records``, ``upsert``, ``delete``) do when their collection is not
    found: it was dropped behind the adapter (by hand, by another tool, by a migration's cleanup) after the
    adapter remembered it. The adapter forgets what it remembered of the collection and raises the error this
    gives: :class:`~core.errors.StoreUnavailableError`, so the writer's retry runs ``ensure_collection`` again,
    which makes the collection again (a delete's retry finds nothing left to delete).

    A collection found missing :data:`MISSING_LIMIT` times in a row, with no write into it succeeding in
    between, is not made to stay by retrying (something drops it as soon as it is made, or the store does not
    keep it): the error is then a :class:`~core.errors.StoreRejectedError`, so the task fails alone instead
    of being retried for ever. The count is per adapter and per collection; :meth:`written` resets it."""

    def __init__(self) -> None:
        self._missed: dict[str, int] = {}

    def error(self, where: str, collection: str, what: str) -> StoreUnavailableError | StoreRejectedError:
        """The error for ``collection`` found missing during ``what`` on the store ``where`` (describe())."""
        missed = self._missed[collection] = self._missed.get(collection, 0) + 1
        if missed >= MISSING_LIMIT:
            del self._missed[collection]
            return StoreRejectedError(
                f"{where}: collection {collection!r} was not found during {what}, {missed} times in a row, though it "
                "was made again before each retry: something drops it as soon as it is made (a migration's "
                "cleanup? another tool?) or the store does not keep it. Find what drops it, then send the task again."
            )
        return StoreUnavailableError(
            f"{where}: collection {collection!r} was not found during {what} (dropped behind the worker?); will "
            "retry: a write creates it again."
        )

    def written(self, collection: str) -> None:
        """A write into ``collection`` succeeded: it is there."""
        if self._missed:
            self._missed.pop(collection, None)


def refuse_pointer_collection(where: str, *names: str) -> None:
    """:class:`~core.errors.StoreRejectedError` when one of ``names`` is the pointer collection itself."""
    if POINTER_COLLECTION in names:
        raise StoreRejectedError(
            f"{where}: {POINTER_COLLECTION!r} is the collection that holds the worker's pointers (one row per "
            "alias); it cannot be an alias, a target or dropped this way. Use another collection name."
        )
