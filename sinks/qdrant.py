"""Qdrant adapter: a server by URL, or qdrant-client's embedded local mode by path.

Local mode keeps the data in a folder, locks it for one process and searches
by brute force: right for one worker and for development; several workers
need a Qdrant server (``VECTORIZE_WORKER_QDRANT__URL``).

The payload is stored as Qdrant's own JSON payload (nested metadata included:
Qdrant has no schema to grow), plus the declared metadata fields as top-level
``meta_<name>`` keys with a payload index each (on a server; local mode has no
indexes), which filters use. Reads leave the ``meta_`` keys out, so a hit's
payload is what was written.

The model a collection is bound to (:mod:`core.versioning`) is in the
collection's metadata under ``vectorize_worker``: written at creation, or,
for a collection made before bindings, at its first write
(``update_collection``, which merges metadata; one stored record is read
first, so a collection holding another model's vectors is refused).

Aliases are Qdrant's own: :meth:`QdrantStore.point` creates one, or switches
it with its delete and create in one ``update_collection_aliases`` request
(atomic). An alias resolves in every operation, so a search, a retrieve or a
count through it reads its current target; this adapter remembers dimensions
and bindings only under a collection's own name, never an alias's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, StoreRejectedError, StoreUnavailableError
from core.metadata_contract import FIELD_PREFIX, MetadataContract, native_name
from core.secrets import reveal
from core.versioning import ModelIdentity, check_binding, unreadable_binding
from sinks.base import (
    MAX_TASK_RECORDS,
    SCAN_PAGE,
    BaseVectorDB,
    Distance,
    MissingCollections,
    StoredPoint,
    VectorRecord,
    scan_page,
)
from sinks.filters import Condition, parse_filter

if TYPE_CHECKING:
    from core.settings import Settings

try:
    from qdrant_client import QdrantClient, models
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"The Qdrant store needs qdrant-client: pip install qdrant-client ({exc})") from exc

_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}
_INDEXES = {
    "string": models.PayloadSchemaType.KEYWORD,
    "string_list": models.PayloadSchemaType.KEYWORD,
    "int": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
}
#: the collection metadata key holding the model binding
BINDING_KEY = "vectorize_worker"
#: the reads the writer decides by (a task's stored records, the record an unbound collection's model is judged
#: by): from every replica, and only the points all of them hold, so a write or delete acknowledged by one
#: replica is never missed (the default reads one replica); local mode has one copy and takes the argument as is
_READ_LATEST = models.ReadConsistencyType.ALL


class _NotFound(StoreUnavailableError):
    """Qdrant answered 404 (a server) or "not found" (local mode): a collection dropped since this adapter
    looked (retried: the retry makes it again)."""


class QdrantStore(BaseVectorDB):
    name = "qdrant"
    alias_kind = "native"

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        contract: MetadataContract | None = None,
    ) -> None:
        if not url and not path:
            raise ConfigError("The Qdrant store needs a URL (VECTORIZE_WORKER_QDRANT__URL) or a local path.")
        self._where = url or f"local path {path}"
        self._local = not url
        self.contract = contract or MetadataContract()
        # collection (never an alias) -> its dimension, as ensure_collection made sure of it
        self._dims: dict[str, int] = {}
        # collection -> the model it is bound to, read with its dimension: trusted only while it is in _dims
        self._bindings: dict[str, ModelIdentity | None] = {}
        # name (a collection or an alias) -> the dimension a search or write last read there: checked before a
        # request, read again when a vector does not fit it
        self._seen_dims: dict[str, int] = {}
        self._missing = MissingCollections()
        try:
            if url:
                self._client = QdrantClient(
                    url=url, api_key=api_key, timeout=max(1, math.ceil(timeout)), check_compatibility=False
                )
            else:
                Path(path).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
                self._client = QdrantClient(path=str(path))
        except RuntimeError as exc:
            raise ConfigError(
                f"Cannot open Qdrant local storage at {path}: {exc}. Local mode is single-process: give each worker "
                "its own VECTORIZE_WORKER_QDRANT__PATH or use a Qdrant server (VECTORIZE_WORKER_QDRANT__URL)."
            ) from None

    def describe(self) -> str:
        return f"Qdrant at {self._where}"

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ResponseHandlingException as exc:
            raise StoreUnavailableError(
                f"Failed to connect to Qdrant at {self._where} during {what}: {exc} — is the server running? "
                "(VECTORIZE_WORKER_QDRANT__URL)"
            ) from None
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise self._not_found(what) from None
            if exc.status_code == 409 and what.startswith("creating collection"):
                return None  # another worker created it first
            if exc.status_code is not None and exc.status_code >= 500 or exc.status_code in (401, 403, 408, 429):
                raise StoreUnavailableError(
                    f"Qdrant at {self._where} failed {what} with HTTP {exc.status_code}; will retry."
                ) from None
            raise StoreRejectedError(
                f"Qdrant at {self._where} refused {what}: HTTP {exc.status_code} {exc.content[:300]!r}"
            ) from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailableError(f"Failed to reach Qdrant at {self._where} during {what}: {exc}") from None
        except ValueError as exc:
            if self._local and "not found" in str(exc).lower():  # local mode's 404
                raise self._not_found(what) from None
            raise

    def _not_found(self, what: str) -> _NotFound:
        # a collection went away under us: forget what is remembered so the next attempt makes it again
        self._dims.clear()
        self._bindings.clear()
        self._seen_dims.clear()
        return _NotFound(f"Qdrant at {self._where}: not found during {what}; will retry")

    def _write_call(self, collection: str, what: str, func: Any, **kwargs: Any) -> Any:
        """A request of a write (a lookup, an upsert, a delete) on ``collection``; not found (dropped behind this
        adapter) raises what :class:`~sinks.base.MissingCollections` says, once what was remembered is forgotten."""
        try:
            return self._call(what, func, **kwargs)
        except _NotFound:
            raise self._missing.error(self.describe(), collection, what) from None

    def ensure_collection(
        self, collection: str, dim: int, distance: Distance = "cosine", identity: ModelIdentity | None = None
    ) -> None:
        self._ensure_once_more(
            collection in self._dims,
            lambda: self._ensure(collection, dim, distance, identity),
            lambda: self._forget_name(collection),
        )

    def _ensure(self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None) -> None:
        known = self._dims.get(collection)
        if known is None:
            if self._call("collection lookup", self._client.collection_exists, collection):
                target = self._alias_target(collection)
                if target is not None:
                    # an alias: its target is made sure of (and remembered) under the target's own name, never under
                    # the alias's, so that a switch of the alias is followed at once
                    self.ensure_collection(target, dim, distance, identity)
                    return
                known, binding = self._stored(collection)
            else:
                known, binding = self._create_collection(collection, dim, distance, identity)
            self._index_declared(collection)
            self._dims[collection] = known
            self._bindings[collection] = binding
        if identity is not None:
            self._check_model(collection, known, identity)
        if known != dim:
            raise StoreRejectedError(
                f"Qdrant collection {collection!r} at {self._where} holds {known}-dimensional vectors but the model "
                f"produces {dim}; send the task to another collection or use the model the collection was made with."
            )

    def _stored_dim(self, collection: str) -> int:
        return self._stored(collection)[0]

    def _stored(self, collection: str, *, strict: bool = False) -> tuple[int, ModelIdentity | None]:
        """The collection's dimension and the model it is bound to (None: unbound; also for a binding that
        cannot be read, unless ``strict``: then that raises StoreRejectedError)."""
        info = self._call("collection lookup", self._client.get_collection, collection)
        stored = (info.config.metadata or {}).get(BINDING_KEY)
        binding = None
        if stored is not None:
            try:
                binding = ModelIdentity.from_dict(stored)
            except ValueError as exc:
                if strict:
                    where = f"collection metadata {BINDING_KEY!r}"
                    raise unreadable_binding(
                        collection=collection, store=self.describe(), where=where, problem=exc
                    ) from None
        return int(info.config.params.vectors.size), binding

    def _check_model(self, collection: str, dim: int, identity: ModelIdentity) -> None:
        """Refuse ``identity`` when the collection is bound to another model; bind it when unbound (requests
        only the first time: the binding is remembered with the dimension)."""
        binding = self._bindings.get(collection)
        if binding is None:
            binding = self._bindings[collection] = self._bind(collection, dim, identity)
        check_binding(binding, identity, collection=collection, store=self.describe())

    def _bind(self, collection: str, dim: int, identity: ModelIdentity) -> ModelIdentity | None:
        """Bind a collection made before bindings to ``identity``, unless one of its records is of another model
        (refused) or its dimension is another (None: the dimension check refuses it)."""
        _, bound = self._stored(collection, strict=True)  # another worker may have bound it since
        if bound is not None:
            return bound
        points, _ = self._call(
            f"reading a record of {collection}",
            self._client.scroll,
            collection_name=collection,
            limit=1,
            with_payload=["model", "model_revision"],
            with_vectors=False,
            consistency=_READ_LATEST,
        )
        held = ModelIdentity.from_record(points[0].payload or {}, dim) if points else None
        check_binding(held, identity, collection=collection, store=self.describe())
        if dim != identity.dim:
            return None
        self._call(
            f"binding collection {collection} to model {identity.name}",
            self._client.update_collection,
            collection_name=collection,
            metadata={BINDING_KEY: identity.to_dict()},
        )
        return self._stored(collection, strict=True)[1] or identity

    def bound_identity(self, collection: str) -> ModelIdentity | None:
        if not self._call("collection lookup", self._client.collection_exists, collection):
            return None
        return self._stored(collection, strict=True)[1]

    def _create_collection(
        self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None = None
    ) -> tuple[int, ModelIdentity | None]:
        """Create the collection (bound to ``identity``) and return its dimension and binding; when another
        worker created it first (HTTP 409 from a server, ValueError in local mode), those of theirs."""

        def create() -> bool:
            try:
                self._client.create_collection(
                    collection_name=collection,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance(_DISTANCES[distance])),
                    metadata={BINDING_KEY: identity.to_dict()} if identity is not None else None,
                )
            except ValueError as exc:
                if "already exists" not in str(exc):
                    raise
                return False
            return True

        created = self._call(f"creating collection {collection}", create)  # None: 409, already there
        return (dim, identity) if created else self._stored(collection)

    def _index_declared(self, collection: str) -> None:
        """A payload index per declared field (idempotent on the server; local mode has no indexes)."""
        if self._local:
            return
        for name, kind in self.contract.fields(collection).items():
            self._call(
                f"indexing {native_name(name)} in {collection}",
                self._client.create_payload_index,
                collection_name=collection,
                field_name=native_name(name),
                field_schema=_INDEXES[kind],
                wait=True,
            )

    def _check_dim(self, collection: str, vectors: Sequence[Sequence[float]]) -> None:
        dim = self._dims.get(collection) or self._seen_dims.get(collection)
        if dim is None or any(len(vector) != dim for vector in vectors):
            # not known, or a vector does not fit what this adapter remembers, which may be stale (an alias
            # switched to a collection of another dimension, a collection dropped and made again): read it now
            dim = self._seen_dims[collection] = self._stored_dim(collection)
            if self._dims.get(collection, dim) != dim:
                self._dims.pop(collection, None)
                self._bindings.pop(collection, None)
        for vector in vectors:
            if len(vector) != dim:
                raise StoreRejectedError(
                    f"Vector of dimension {len(vector)} does not fit Qdrant collection {collection!r} "
                    f"(dimension {dim}) at {self._where}; use a matching model or another collection."
                )

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        try:
            self._check_dim(collection, [r.vector for r in records])
        except _NotFound:
            raise self._missing.error(self.describe(), collection, f"upsert into {collection}") from None
        declared = self.contract.fields(collection)
        points = [
            models.PointStruct(
                id=r.id,
                vector=[float(x) for x in r.vector],
                payload={
                    **r.payload,
                    **{native_name(n): _native(v) for n, v in r.filterable.items() if n in declared},
                },
            )
            for r in records
        ]
        self._write_call(
            collection,
            f"upsert into {collection}",
            self._client.upsert,
            collection_name=collection,
            points=points,
            wait=True,
        )
        self._missing.written(collection)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self._write_call(
                collection,
                f"delete from {collection}",
                self._client.delete,
                collection_name=collection,
                points_selector=models.PointIdsList(points=list(ids)),
                wait=True,
            )
            self._missing.written(collection)

    def task_records(self, collection: str, task_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        wanted = set(task_ids)
        if not wanted:
            return {}
        # a collection this adapter made sure of exists: no round trip to ask again
        if collection not in self._dims and not self._call(
            "collection lookup", self._client.collection_exists, collection
        ):
            return {}
        where = models.Filter(must=[models.FieldCondition(key="task_id", match=models.MatchAny(any=sorted(wanted)))])
        found: dict[str, dict[str, str | None]] = {}
        offset: Any = None
        read = 0
        while read < MAX_TASK_RECORDS:
            points, offset = self._write_call(
                collection,
                f"task lookup in {collection}",
                self._client.scroll,
                collection_name=collection,
                scroll_filter=where,
                limit=1000,
                offset=offset,
                with_payload=["task_id", "content_digest"],
                with_vectors=False,
                consistency=_READ_LATEST,
            )
            read += len(points)
            for p in points:
                task_id = (p.payload or {}).get("task_id")
                if task_id in wanted:
                    digest = (p.payload or {}).get("content_digest")
                    found.setdefault(task_id, {})[str(p.id)] = digest if isinstance(digest, str) else None
            if offset is None:
                break
        return found

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        query_filter = qdrant_filter(parse_filter(filter, self.contract.fields(collection), collection=collection))
        self._check_dim(collection, [vector])
        response = self._call(
            f"search in {collection}",
            self._client.query_points,
            collection_name=collection,
            query=[float(x) for x in vector],
            limit=k,
            query_filter=query_filter,
            with_payload=True,
        )
        return [StoredPoint(id=str(p.id), payload=_payload(p.payload), score=p.score) for p in response.points]

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        points = self._call(
            f"retrieve from {collection}",
            self._client.retrieve,
            collection_name=collection,
            ids=list(ids),
            with_vectors=with_vectors,
            with_payload=True,
        )
        return [
            StoredPoint(id=str(p.id), payload=_payload(p.payload), vector=list(p.vector) if with_vectors else None)
            for p in points
        ]

    def count(self, collection: str) -> int:
        if not self._call("collection lookup", self._client.collection_exists, collection):
            return 0
        return int(
            self._call(f"count in {collection}", self._client.count, collection_name=collection, exact=True).count
        )

    # -- aliases, dropping, reading back ---------------------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        """Every alias of this Qdrant and the collection it points at."""
        found = self._call("alias lookup", self._client.get_aliases)
        return {a.alias_name: a.collection_name for a in found.aliases}

    def _alias_target(self, name: str) -> str | None:
        return self._aliases().get(name)

    def _forget_name(self, name: str) -> None:
        for cache in (self._dims, self._bindings, self._seen_dims):
            cache.pop(name, None)

    def resolve(self, alias: str) -> str | None:
        return self._alias_target(alias)

    def has_collection(self, name: str) -> bool:
        exists = self._call("collection lookup", self._client.collection_exists, name)
        return bool(exists) and self._alias_target(name) is None

    def _change_aliases(self, what: str, operations: list[Any]) -> None:
        def change() -> None:
            try:
                self._client.update_collection_aliases(change_aliases_operations=operations)
            except ValueError as exc:  # local mode's refusals
                raise StoreRejectedError(f"Qdrant at {self._where} refused {what}: {exc}") from None

        self._call(what, change)

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        where = f"Qdrant at {self._where}"
        if alias == physical:
            raise StoreRejectedError(f"{where}: alias {alias!r} cannot point at itself; name another collection.")
        aliases = self._aliases()
        if physical in aliases:
            raise StoreRejectedError(
                f"{where}: {physical!r} is an alias (of {aliases[physical]!r}), not a collection; point alias "
                f"{alias!r} at a collection."
            )
        if not self._call("collection lookup", self._client.collection_exists, physical):
            raise StoreRejectedError(
                f"{where}: alias {alias!r} cannot point at collection {physical!r}: it does not exist. Create it "
                "(ensure_collection) first."
            )
        current = aliases.get(alias)
        if current is None and self._call("collection lookup", self._client.collection_exists, alias):
            raise StoreRejectedError(
                f"{where}: alias {alias!r} cannot be made: a collection of that name exists, and a Qdrant alias "
                "cannot take a collection's name. A collection made before aliases must be copied to a physical "
                'collection and dropped first (docs/stores.md, "Aliases and pointers").'
            )
        if current != physical:
            create = models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=physical, alias_name=alias)
            )
            delete = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            # the switch: the delete and the create in one request, which Qdrant applies at once
            operations = [create] if current is None else [delete, create]
            self._change_aliases(f"pointing alias {alias} at {physical}", operations)
        self._forget_name(alias)

    def unpoint(self, alias: str) -> None:
        if alias in self._aliases():
            delete = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            self._change_aliases(f"deleting alias {alias}", [delete])
        self._forget_name(alias)

    def drop(self, physical: str) -> None:
        where = f"Qdrant at {self._where}"
        aliases = self._aliases()
        if physical in aliases:
            raise StoreRejectedError(
                f"{where}: {physical!r} is an alias (of {aliases[physical]!r}), not a collection: unpoint the alias, "
                "or drop the collection it points at once no alias points at it."
            )
        pointing = sorted(a for a, target in aliases.items() if target == physical)
        if pointing:
            raise StoreRejectedError(
                f"{where}: collection {physical!r} cannot be dropped: alias(es) {', '.join(pointing)} point at it. "
                "Switch them to another collection or unpoint them first."
            )
        if self._call("collection lookup", self._client.collection_exists, physical):
            self._call(f"dropping collection {physical}", self._client.delete_collection, collection_name=physical)
        self._forget_name(physical)

    def scan(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[StoredPoint], str | None]:
        points, cursor = self._scroll(physical, cursor, limit, with_payload=True)
        return [StoredPoint(id=str(p.id), payload=_payload(p.payload)) for p in points], cursor

    def scan_ids(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[str], str | None]:
        points, cursor = self._scroll(physical, cursor, limit, with_payload=False)
        return [str(p.id) for p in points], cursor

    def _scroll(
        self, physical: str, cursor: str | None, limit: int, *, with_payload: bool
    ) -> tuple[list[Any], str | None]:
        """Qdrant's scroll: points in id order from the id ``cursor`` on (its ``next_page_offset``)."""
        if not self._call("collection lookup", self._client.collection_exists, physical):
            return [], None
        offset: Any = int(cursor) if cursor is not None and cursor.isdigit() else cursor  # our ids are UUIDs
        points, following = self._call(
            f"reading {physical} back",
            self._client.scroll,
            collection_name=physical,
            limit=scan_page(limit),
            offset=offset,
            with_payload=with_payload,
            with_vectors=False,
        )
        return list(points), None if following is None else str(following)

    def health(self) -> None:
        self._call("health check", self._client.get_collections)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing must never raise
            pass


def _native(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value  # RFC 3339, what DATETIME indexes read


def _payload(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (stored or {}).items() if not k.startswith(FIELD_PREFIX)}


def qdrant_filter(conditions: Sequence[Condition]) -> models.Filter | None:
    """The conditions as one Qdrant filter (None for none)."""
    if not conditions:
        return None
    return models.Filter(must=[_qdrant_condition(c) for c in conditions])


def _qdrant_condition(c: Condition) -> Any:
    if c.op == "in":
        if c.kind in ("string", "string_list", "int"):
            return models.FieldCondition(key=c.field, match=models.MatchAny(any=list(c.value)))
        return models.Filter(should=[_qdrant_condition(Condition(c.name, c.field, c.kind, "eq", v)) for v in c.value])
    if c.kind == "datetime":
        bounds = {"gte": c.value, "lte": c.value} if c.op == "eq" else {c.op: c.value}
        return models.FieldCondition(key=c.field, range=models.DatetimeRange(**bounds))
    if c.kind == "float":  # MatchValue takes no floats
        bounds = {"gte": c.value, "lte": c.value} if c.op == "eq" else {c.op: c.value}
        return models.FieldCondition(key=c.field, range=models.Range(**bounds))
    if c.op == "eq":  # on a list field, Qdrant matches when any item equals
        return models.FieldCondition(key=c.field, match=models.MatchValue(value=c.value))
    return models.FieldCondition(key=c.field, range=models.Range(**{c.op: c.value}))


def create(settings: Settings) -> QdrantStore:
    """Entry point ``vectorize_worker.vector_dbs: qdrant``."""
    cfg = settings.qdrant
    contract = MetadataContract.from_settings(settings)
    if cfg.url:
        return QdrantStore(url=cfg.url, api_key=reveal(cfg.api_key), timeout=cfg.timeout, contract=contract)
    return QdrantStore(path=settings.qdrant_path, timeout=cfg.timeout, contract=contract)
