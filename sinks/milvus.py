"""Milvus adapter (pymilvus MilvusClient): a Milvus server by URI, or a Milvus Lite file.

Each collection has a VARCHAR primary key ``id`` (our UUIDs), a FLOAT_VECTOR
``vector`` field with a FLAT index, the payload as JSON in ``_payload`` (at
most 65,535 bytes, Milvus' VARCHAR limit; the only field read back), and the
worker's own fields (:data:`~sinks.base.WORKER_FIELDS`) as schema fields made
with the collection. Milvus Lite has no nullable fields, so a worker field a
record lacks holds its type's empty value ("", -1, 0.0, false) there.

The declared metadata fields are dynamic fields ``meta_<name>`` (Milvus Lite
can neither add a schema field later nor leave one empty): typed by the
worker's check, absent when a task has no value, and the only dynamic fields
ever written, so a task's other metadata keys never reach Milvus outside
``_payload``. Datetimes are microseconds since 1970.

Collections of the old layout (every scalar a dynamic field ``metadata__lang``)
read the same, from ``_payload``; new rows there carry only ``_payload`` and
the declared fields.

The model a collection is bound to (:mod:`core.versioning`) is in its schema's
description (``vectorize-worker model={…}``), written at creation: Milvus
cannot change an existing collection's description (Milvus Lite answers
``alter_collection_properties`` with UNIMPLEMENTED). For a collection made
before bindings, one stored record says which model it holds (an empty one
accepts any), remembered by this adapter.

Milvus Lite (and the ``make up`` Milvus, the same engine) answers every alias
call with ``UNIMPLEMENTED``: an alias is a pointer instead, one row per alias
in the collection ``vw_aliases`` (:data:`~sinks.base.POINTER_COLLECTION`:
primary key ``alias``, ``target`` the physical collection, ``identity`` its
model as JSON, ``updated_at``, and a 2-dimensional vector field ``v`` that
Milvus requires, always ``[0, 0]``); a switch is an upsert of that one row.
Only :meth:`MilvusStore.resolve` reads pointers (docs/stores.md, "Aliases and
pointers"). An ``UNIMPLEMENTED`` answer to any call is a permanent refusal
("not supported by this Milvus"), never an outage to retry.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, StoreRejectedError, StoreUnavailableError
from core.metadata_contract import MetadataContract, epoch_micros, native_name
from core.secrets import reveal
from core.versioning import ModelIdentity, binding_in, binding_text, check_binding, unreadable_binding
from sinks.base import (
    MAX_TASK_RECORDS,
    PAYLOAD_KEY,
    POINTER_COLLECTION,
    SCAN_PAGE,
    WORKER_FIELDS,
    BaseVectorDB,
    Distance,
    MissingCollections,
    StoredPoint,
    VectorRecord,
    refuse_pointer_collection,
    scan_page,
    worker_value,
)
from sinks.filters import Condition, parse_filter
from sinks.lazy import LazyClient

if TYPE_CHECKING:
    from core.settings import Settings

try:
    import grpc
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"The Milvus store needs pymilvus: pip install pymilvus ({exc})") from exc

_METRICS = {"cosine": "COSINE", "dot": "IP", "euclid": "L2"}
_UNAVAILABLE_WORDS = (
    "connect",
    "unavailable",
    "timeout",
    "timed out",
    "deadline",
    "refused",
    "closed",
    "not ready",
    "not available",
    "quota",
    "rate limit",
    "exhausted",
    "busy",
)
MAX_PAYLOAD = 65535
#: the longest name and identity a pointer row holds
_POINTER_NAME = 255
_POINTER_IDENTITY = 8192
_TYPES = {
    "string": DataType.VARCHAR,
    "text": DataType.VARCHAR,
    "int": DataType.INT64,
    "float": DataType.DOUBLE,
    "bool": DataType.BOOL,
}
_EMPTY: dict[str, Any] = {"string": "", "text": "", "int": -1, "float": 0.0, "bool": False}
_RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
#: pymilvus' code for "collection not found"
_COLLECTION_NOT_FOUND = 100
#: the reads the writer decides by (a task's stored records, the record an unbound collection's model is judged
#: by) see every write and delete acknowledged before them, whatever the collection's own consistency level
#: (pymilvus makes collections "Bounded" by default: a read may miss the last seconds of writes)
_READ_LATEST = "Strong"


class _Missing(StoreRejectedError):
    """Milvus answered "collection not found": dropped since this adapter looked (or never made)."""


def collection_name(collection: str) -> str:
    return collection.replace("-", "_")


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return str(epoch_micros(value))
    return json.dumps(value, ensure_ascii=False)


class MilvusStore(LazyClient, BaseVectorDB):
    name = "milvus"
    binds_existing_collections = False  # no description change on an existing collection (see the module doc)
    alias_kind = "pointer"

    def __init__(
        self, *, uri: str, token: str | None = None, timeout: float = 10.0, contract: MetadataContract | None = None
    ) -> None:
        if not uri:
            raise ConfigError("The Milvus store needs a URI (VECTORIZE_WORKER_MILVUS__URI) or a Milvus Lite file path.")
        self._uri = uri
        self._token = token
        self._timeout = timeout
        self.contract = contract or MetadataContract()
        self._init_client()
        self._dims: dict[str, int] = {}
        self._fixed: dict[str, set[str]] = {}  # collection -> worker fields its schema has
        self._descriptions: dict[str, str] = {}  # collection -> its schema's description (holds the binding)
        self._bindings: dict[str, ModelIdentity] = {}  # collection -> its model, once known
        self._pointers_exist = False  # the pointer collection is known to exist
        self._missing = MissingCollections()

    def describe(self) -> str:
        return f"Milvus at {self._uri}"

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Failed to connect to Milvus at {self._uri} during {what}: {str(exc)[:300]} — is the server running? "
            "(VECTORIZE_WORKER_MILVUS__URI; `make up` starts a local one)"
        )

    def _unsupported(self, what: str, exc: BaseException) -> StoreRejectedError:
        """A call this Milvus does not implement (Milvus Lite: aliases, collection properties): permanent."""
        details = exc.details() if hasattr(exc, "details") else str(exc)  # a grpc error's own message
        return StoreRejectedError(
            f"Milvus at {self._uri}: {what} is not supported by this Milvus (UNIMPLEMENTED: {str(details)[:200]}); "
            "retrying cannot help. Use a Milvus server that implements it, or do without it."
        )

    def _open(self) -> Any:
        if not self._uri.startswith(("http://", "https://", "tcp://", "unix:")):
            Path(self._uri).parent.mkdir(parents=True, exist_ok=True)
        # pymilvus shares one connection per URI unless told otherwise: closing another store (or a client
        # dropped after an outage) would close this one's too, so each client gets its own
        alias = f"vectorize-worker-{uuid.uuid4().hex}"
        return MilvusClient(uri=self._uri, token=self._token or "", timeout=self._timeout, alias=alias)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)  # the client's own timeout covers only connecting
        try:
            return func(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise self._unsupported(what, exc) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise StoreRejectedError(f"Milvus at {self._uri} refused {what}: {exc}") from None
            self._forget()
            raise self._unavailable(what, exc) from None
        except MilvusException as exc:
            text = str(exc).lower()
            if "unimplemented" in text:
                raise self._unsupported(what, exc) from None
            if any(word in text for word in _UNAVAILABLE_WORDS):
                self._forget()
                raise self._unavailable(what, exc) from None
            missing = "collection not found" in text or getattr(exc, "code", None) == _COLLECTION_NOT_FOUND
            refused = _Missing if missing else StoreRejectedError
            raise refused(f"Milvus at {self._uri} refused {what}: {str(exc)[:400]}") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            self._forget()
            raise self._unavailable(what, exc) from None

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
            client = self._connect()
            name = collection_name(collection)
            if self._call("collection lookup", client.has_collection, name):
                known = self._read_schema(collection) or dim
            else:
                known = self._create_collection(collection, dim, distance, identity)
            self._dims[collection] = known
            self._bindings.pop(collection, None)  # read again from the description (or a record)
        if identity is not None:
            self._check_model(collection, known, identity)
        if known != dim:
            raise StoreRejectedError(
                f"Milvus collection {collection_name(collection)!r} at {self._uri} holds {known}-dimensional vectors "
                f"but the model produces {dim}; send the task to another collection or use the model it was made with."
            )

    def _binding(self, collection: str) -> ModelIdentity | None:
        try:
            return binding_in(self._descriptions.get(collection))
        except ValueError as exc:
            where = f"the schema description of Milvus collection {collection_name(collection)!r}"
            raise unreadable_binding(collection=collection, store=self.describe(), where=where, problem=exc) from None

    def _check_model(self, collection: str, dim: int, identity: ModelIdentity) -> None:
        """Refuse ``identity`` when the collection is bound to another model, or, made before bindings, holds a
        record of another model (requests only the first time: the answer is remembered)."""
        binding = self._bindings.get(collection)
        if binding is None:
            binding = self._binding(collection)
            if binding is None:
                # no binding can be added to an existing collection: its records say which model it holds
                rows = self._call(
                    f"reading a record of {collection_name(collection)}",
                    self._connect().query,
                    collection_name(collection),
                    filter="",
                    output_fields=[PAYLOAD_KEY],
                    limit=1,
                    consistency_level=_READ_LATEST,
                )
                held = ModelIdentity.from_record(json.loads(rows[0][PAYLOAD_KEY]), dim) if rows else None
                check_binding(held, identity, collection=collection, store=self.describe())
                if dim != identity.dim:
                    return  # the dimension check refuses it
                # from now on, in this process, it holds this model's vectors (compared as a record's)
                binding = ModelIdentity(name=identity.name, revision=identity.revision, dim=identity.dim, partial=True)
            self._bindings[collection] = binding
        check_binding(binding, identity, collection=collection, store=self.describe())

    def bound_identity(self, collection: str) -> ModelIdentity | None:
        collection = self._readable(collection)
        if not self._call("collection lookup", self._connect().has_collection, collection_name(collection)):
            return None
        self._read_schema(collection)
        return self._binding(collection)

    def _create_collection(
        self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None = None
    ) -> int:
        """Create the collection with every fixed field (bound to ``identity``) and return its dimension; when
        another worker created it first, the dimension of theirs."""
        client = self._connect()
        name = collection_name(collection)
        description = f"vectorize-worker {binding_text(identity)}" if identity is not None else ""
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True, description=description)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field(PAYLOAD_KEY, DataType.VARCHAR, max_length=MAX_PAYLOAD)
        for field, kind in WORKER_FIELDS.items():  # a worker field is never longer than the payload holding it
            extra = {"max_length": MAX_PAYLOAD} if _TYPES[kind] == DataType.VARCHAR else {}
            schema.add_field(field, _TYPES[kind], **extra)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type=_METRICS[distance])

        def create(timeout: float) -> bool:
            try:
                client.create_collection(name, schema=schema, index_params=index, timeout=timeout)
            except MilvusException as exc:
                # the same schema again is success; another worker's of another dimension is "duplicate"
                if not any(word in str(exc).lower() for word in ("already exist", "duplicate collection")):
                    raise
                return False
            return True

        if not self._call(f"creating collection {name}", create):
            return self._read_schema(collection) or dim  # another worker's
        self._fixed[collection] = set(WORKER_FIELDS)
        self._descriptions[collection] = description
        return dim

    def _read_schema(self, collection: str) -> int | None:
        """The stored dimension (None when unknown); remembers which worker fields the schema has."""
        info = self._call("collection lookup", self._connect().describe_collection, collection_name(collection))
        fields = {f.get("name"): f for f in info.get("fields", [])}
        self._descriptions[collection] = str(info.get("description") or "")
        self._fixed[collection] = {
            name for name, kind in WORKER_FIELDS.items() if fields.get(name, {}).get("type") == _TYPES[kind]
        }
        vector = fields.get("vector", {})
        return int(vector.get("params", {}).get("dim", 0)) or None

    def _check_dim(self, collection: str, vectors: Sequence[Sequence[float]]) -> None:
        dim = self._dims.get(collection)
        if dim and any(len(vector) != dim for vector in vectors):
            # what this adapter remembers may be stale (the collection dropped and made again with another
            # dimension): the store is asked once before a vector is refused
            self._forget_name(collection)
            dim = None
        if dim is None and self._call("collection lookup", self._connect().has_collection, collection_name(collection)):
            dim = self._dims.setdefault(collection, self._read_schema(collection) or 0)
        for vector in vectors:
            if dim and len(vector) != dim:
                raise StoreRejectedError(
                    f"Vector of dimension {len(vector)} does not fit Milvus collection {collection_name(collection)!r} "
                    f"(dimension {dim}) at {self._uri}; use a matching model or another collection."
                )

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        self._check_dim(collection, [r.vector for r in records])
        fixed = self._fixed.get(collection, set())
        declared = self.contract.fields(collection)
        rows = []
        for r in records:
            payload = json.dumps(dict(r.payload), ensure_ascii=False)
            if len(payload.encode("utf-8")) > MAX_PAYLOAD:
                raise StoreRejectedError(
                    f"Payload of record {r.id} is {len(payload.encode())} bytes, over Milvus' VARCHAR limit of "
                    f"{MAX_PAYLOAD}; send shorter texts or smaller metadata to Milvus."
                )
            rows.append(
                {
                    "id": r.id,
                    "vector": [float(x) for x in r.vector],
                    PAYLOAD_KEY: payload,
                    **{name: _worker_value(name, r.payload) for name in fixed},
                    **{native_name(n): _native(v) for n, v in r.filterable.items() if n in declared},
                }
            )
        what = f"upsert into {collection_name(collection)}"
        self._write_call(collection, what, self._connect().upsert, collection_name(collection), rows)
        self._missing.written(collection_name(collection))

    def _write_call(self, collection: str, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """A request of a write (a lookup, an upsert, a delete) on ``collection``; "collection not found" (dropped
        behind this adapter) forgets what it remembered of it and raises what
        :class:`~sinks.base.MissingCollections` says."""
        try:
            return self._call(what, func, *args, **kwargs)
        except _Missing:
            self._forget_name(collection)
            raise self._missing.error(self.describe(), collection_name(collection), what) from None

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            collection = self._readable(collection)
            what = f"delete from {collection_name(collection)}"
            self._write_call(collection, what, self._connect().delete, collection_name(collection), ids=list(ids))
            self._missing.written(collection_name(collection))

    def task_records(self, collection: str, task_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        collection = self._readable(collection)
        wanted = set(task_ids)
        client = self._connect()
        name = collection_name(collection)
        if not wanted:
            return {}
        # a collection this adapter made sure of exists: no round trip to ask again
        if collection not in self._dims:
            if not self._call("collection lookup", client.has_collection, name):
                return {}
            if collection not in self._fixed:
                self._read_schema(collection)  # which worker fields (the digest among them) its schema has
        expr = "task_id in [" + ", ".join(_literal(t) for t in sorted(wanted)) + "]"
        # an older collection's schema may lack the field (it is then only in the payload): no digests
        digests = "content_digest" in self._fixed.get(collection, ())
        found: dict[str, dict[str, str | None]] = {}
        page = 1000
        for offset in range(0, MAX_TASK_RECORDS, page):  # Milvus caps offset + limit at 16,384
            rows = self._write_call(
                collection,
                f"task lookup in {name}",
                client.query,
                name,
                filter=expr,
                output_fields=["id", "task_id", "content_digest"] if digests else ["id", "task_id"],
                limit=page,
                offset=offset,
                consistency_level=_READ_LATEST,
            )
            for row in rows:
                if row.get("task_id") in wanted:
                    digest = row.get("content_digest") or None
                    found.setdefault(row["task_id"], {})[str(row["id"])] = digest
            if len(rows) < page:
                break
        return found

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        expr = milvus_expr(parse_filter(filter, self.contract.fields(collection), collection=collection))
        collection = self._readable(collection)  # after the filter: declared fields belong to the alias's name
        self._check_dim(collection, [vector])
        res = self._read(
            collection,
            f"search in {collection_name(collection)}",
            self._connect().search,
            collection_name(collection),
            data=[[float(x) for x in vector]],
            limit=k,
            filter=expr,
            output_fields=[PAYLOAD_KEY],
        )
        return [
            StoredPoint(id=str(hit["id"]), payload=json.loads(hit["entity"][PAYLOAD_KEY]), score=float(hit["distance"]))
            for hit in res[0]
        ]

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        collection = self._readable(collection)
        fields = [PAYLOAD_KEY, "vector"] if with_vectors else [PAYLOAD_KEY]
        rows = self._read(
            collection,
            "retrieve",
            self._connect().get,
            collection_name(collection),
            ids=list(ids),
            output_fields=fields,
        )
        found = {
            str(row["id"]): StoredPoint(
                id=str(row["id"]),
                payload=json.loads(row[PAYLOAD_KEY]),
                vector=[float(x) for x in row["vector"]] if with_vectors else None,
            )
            for row in rows
        }
        return [found[i] for i in ids if i in found]

    def _read(self, collection: str, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """A read on ``collection``; "collection not found" forgets what this adapter remembered of it."""
        try:
            return self._call(what, func, *args, **kwargs)
        except _Missing:
            self._forget_name(collection)
            raise

    def count(self, collection: str) -> int:
        collection = self._readable(collection)
        client = self._connect()
        name = collection_name(collection)
        if not self._call("collection lookup", client.has_collection, name):
            return 0
        res = self._call("count", client.query, name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    # -- pointers, dropping, reading back ------------------------------------------------------------------------
    def store_name(self, collection: str) -> str:
        return collection_name(collection)

    def _has_pointers(self, *, create: bool) -> bool:
        """Whether the pointer collection exists (made first when ``create``)."""
        if self._pointers_exist:
            return True
        client = self._connect()
        if not self._call("collection lookup", client.has_collection, POINTER_COLLECTION):
            if not create:
                return False
            schema = MilvusClient.create_schema(
                auto_id=False, enable_dynamic_field=False, description="vectorize-worker aliases: alias -> target"
            )
            schema.add_field("alias", DataType.VARCHAR, is_primary=True, max_length=_POINTER_NAME)
            schema.add_field("target", DataType.VARCHAR, max_length=_POINTER_NAME)
            schema.add_field("identity", DataType.VARCHAR, max_length=_POINTER_IDENTITY)
            schema.add_field("updated_at", DataType.DOUBLE)
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field: always [0, 0]
            index = client.prepare_index_params()
            index.add_index(field_name="v", index_type="FLAT", metric_type="L2")

            def create_pointers(timeout: float) -> None:
                try:
                    client.create_collection(
                        POINTER_COLLECTION,
                        schema=schema,
                        index_params=index,
                        consistency_level="Strong",
                        timeout=timeout,
                    )
                except MilvusException as exc:
                    if not any(word in str(exc).lower() for word in ("already exist", "duplicate collection")):
                        raise

            self._call(f"creating collection {POINTER_COLLECTION}", create_pointers)
        info = self._call("collection lookup", client.describe_collection, POINTER_COLLECTION)
        if not {"alias", "target", "identity"} <= {f.get("name") for f in info.get("fields", [])}:
            raise StoreRejectedError(
                f"Milvus at {self._uri}: collection {POINTER_COLLECTION!r} exists but is not the worker's pointer "
                "collection (it lacks the fields alias, target, identity); rename or drop it: the worker keeps its "
                "alias pointers there."
            )
        self._pointers_exist = True
        return True

    def _pointer_call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """A request on the pointer collection; None when it does not exist (or was dropped behind this adapter)."""
        if not self._has_pointers(create=False):
            return None
        try:
            return self._call(what, getattr(self._connect(), method), POINTER_COLLECTION, *args, **kwargs)
        except StoreRejectedError:
            self._pointers_exist = False
            if self._has_pointers(create=False):
                raise
            return None

    def _forget_name(self, collection: str) -> None:
        """Forget what this adapter remembers of ``collection``, under any of its spellings (``-`` or ``_``)."""
        name = collection_name(collection)
        for cache in (self._dims, self._fixed, self._descriptions, self._bindings):
            for key in [k for k in cache if collection_name(k) == name]:
                del cache[key]

    def has_collection(self, name: str) -> bool:
        return bool(self._call("collection lookup", self._connect().has_collection, collection_name(name)))

    def _readable(self, name: str) -> str:
        """What a read of ``name`` reads: the collection of that name, else the one its pointer names (a pointer
        is this store's alias here: Milvus Lite has no aliases); one request more for a name the adapter has not
        seen as a collection."""
        if name in self._dims or collection_name(name) == POINTER_COLLECTION or self.has_collection(name):
            return name
        return self.resolve(name) or name

    def resolve(self, alias: str) -> str | None:
        rows = self._pointer_call(
            f"pointer lookup {alias}", "get", ids=[collection_name(alias)], output_fields=["target"]
        )
        return str(rows[0]["target"]) if rows else None

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        name, target = collection_name(alias), collection_name(physical)
        where = f"Milvus at {self._uri}"
        refuse_pointer_collection(where, name, target)
        if max(len(name), len(target)) > _POINTER_NAME:
            raise StoreRejectedError(
                f"{where}: alias {name!r} or collection {target!r} is over {_POINTER_NAME} characters."
            )
        client = self._connect()
        if not self._call("collection lookup", client.has_collection, target):
            raise StoreRejectedError(
                f"{where}: alias {name!r} cannot point at collection {target!r}: it does not exist. Create it "
                "(ensure_collection) first."
            )
        text = identity.to_json() if identity is not None else ""
        if len(text.encode()) > _POINTER_IDENTITY:
            raise StoreRejectedError(f"{where}: the model identity of {target!r} is over {_POINTER_IDENTITY} bytes.")
        self._has_pointers(create=True)
        row = {"alias": name, "target": target, "identity": text, "updated_at": time.time(), "v": [0.0, 0.0]}
        # the switch: one row written in one request (readers see the old target or the new one)
        self._call(f"pointing alias {name} at {target}", client.upsert, POINTER_COLLECTION, [row])

    def unpoint(self, alias: str) -> None:
        name = collection_name(alias)
        self._pointer_call(f"deleting pointer {name}", "delete", ids=[name])

    def drop(self, physical: str) -> None:
        name = collection_name(physical)
        where = f"Milvus at {self._uri}"
        refuse_pointer_collection(where, name)
        client = self._connect()
        rows = self._pointer_call(
            f"pointer lookup for {name}",
            "query",
            filter=f"target == {_literal(name)}",
            output_fields=["alias"],
            limit=1000,
        )
        if rows:
            raise StoreRejectedError(
                f"{where}: collection {name!r} cannot be dropped: pointer(s) "
                f"{', '.join(sorted(str(r['alias']) for r in rows))} in {POINTER_COLLECTION!r} point at it. Point "
                "them at another collection or unpoint them first."
            )
        if self._call("collection lookup", client.has_collection, name):
            self._call(f"dropping collection {name}", client.drop_collection, name)
        self._forget_name(physical)

    def scan(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[StoredPoint], str | None]:
        rows, cursor = self._keyset(physical, cursor, limit, ["id", PAYLOAD_KEY])
        return [StoredPoint(id=str(r["id"]), payload=json.loads(r[PAYLOAD_KEY])) for r in rows], cursor

    def scan_ids(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[str], str | None]:
        rows, cursor = self._keyset(physical, cursor, limit, ["id"])
        return [str(r["id"]) for r in rows], cursor

    def _keyset(self, physical: str, cursor: str | None, limit: int, fields: list[str]) -> tuple[list[Any], str | None]:
        """Keyset paging: the ``limit`` smallest ids above the id ``cursor`` (Milvus answers a query with a limit
        with the smallest primary keys, in order; offset paging is capped at 16,384 and does not resume)."""
        client = self._connect()
        name = collection_name(physical)
        if not self._call("collection lookup", client.has_collection, name):
            return [], None
        page = scan_page(limit)
        rows = self._call(
            f"reading {name} back",
            client.query,
            name,
            filter=f"id > {_literal(cursor or '')}",
            output_fields=fields,
            limit=page,
        )
        rows = sorted(rows, key=lambda r: str(r["id"]))
        return rows, str(rows[-1]["id"]) if len(rows) == page else None

    def health(self) -> None:
        self._call("health check", self._connect().list_collections)

    def close(self) -> None:
        self._forget()


def _worker_value(name: str, payload: Mapping[str, Any]) -> Any:
    kind = WORKER_FIELDS[name]
    value = payload.get(name)
    native = worker_value(kind, value) if value is not None else None
    return _EMPTY[kind] if native is None else native


def _native(value: Any) -> Any:
    return epoch_micros(value) if isinstance(value, datetime) else value


def milvus_expr(conditions: Sequence[Condition]) -> str:
    """The conditions as one Milvus boolean expression ("" for none)."""
    return " and ".join(_milvus_clause(c) for c in conditions)


def _milvus_clause(c: Condition) -> str:
    if c.op == "in":
        values = "[" + ", ".join(_literal(v) for v in c.value) + "]"
        return f"json_contains_any({c.field}, {values})" if c.is_list else f"{c.field} in {values}"
    if c.op == "eq":
        return f"json_contains({c.field}, {_literal(c.value)})" if c.is_list else f"{c.field} == {_literal(c.value)}"
    return f"{c.field} {_RANGES[c.op]} {_literal(c.value)}"


def create(settings: Settings) -> MilvusStore:
    """Entry point ``vectorize_worker.vector_dbs: milvus``."""
    cfg = settings.milvus
    uri = cfg.uri or str(Path(settings.data_dir) / "milvus.db")
    contract = MetadataContract.from_settings(settings)
    return MilvusStore(uri=uri, token=reveal(cfg.token), timeout=cfg.timeout, contract=contract)
