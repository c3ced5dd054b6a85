"""Weaviate adapter (weaviate-client v4): collections with vectors we supply, no vectorizer module.

Weaviate class names start with a capital letter, so the collection
``vectorize`` is the class ``Vectorize`` (``-`` becomes ``_``). Every property
is created explicitly with the collection (its description records the
dimension and ``layout=2``): ``_payload`` (the whole payload as JSON, not
indexed), the worker's own fields (:data:`~sinks.base.WORKER_FIELDS`) and the
declared metadata fields ``meta_<name>``. Objects never carry another
property, so Weaviate's auto-schema never adds one: a task's metadata cannot
change the schema. A field declared later is added explicitly, once.

The description also holds the model the collection is bound to
(``model={…}``, :mod:`core.versioning`): written when the collection is
created, or, for a collection made before bindings, at its first write
(``config.update``; one stored record is read first, so a collection holding
another model's vectors is refused rather than bound).

Aliases (Weaviate 1.32 and later) are Weaviate's own (``client.alias``), named
like classes: :meth:`WeaviateStore.point` creates or switches one in one
request. An alias resolves in every query, so a search, a retrieve or a count
through it reads its current target; this adapter remembers what it learnt of
a collection (its dimension, properties and binding) under the target's class
name only, never under an alias's, so a switch is followed at once.

A write into a missing class would not fail (Weaviate's auto-schema would
make one, unbound, its properties typed by guess), so :meth:`WeaviateStore.upsert`
asks whether the class exists first, unless the writer's task lookup, a query
on the class, found it just before.

Collections of the old layout (no ``layout=2``; every scalar flattened into an
auto-schema property such as ``metadata__lang``) keep working: reads use
``_payload`` as before, and new objects carry only ``_payload`` and the
declared fields, so their old properties stay for the old objects.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from core.errors import ConfigError, StoreRejectedError, StoreUnavailableError
from core.metadata_contract import MetadataContract, native_name
from core.secrets import reveal
from core.versioning import ModelIdentity, binding_in, binding_text, check_binding, unreadable_binding
from sinks.base import (
    MAX_TASK_RECORDS,
    PAYLOAD_KEY,
    SCAN_PAGE,
    WORKER_FIELDS,
    BaseVectorDB,
    Distance,
    MissingCollections,
    StoredPoint,
    VectorRecord,
    scan_page,
    worker_values,
)
from sinks.filters import parse_filter
from sinks.lazy import LazyClient
from sinks.weaviate_fields import LAYOUT, PAYLOAD_PROPERTY, TYPES, Layout, make_property, weaviate_filter

if TYPE_CHECKING:
    from core.settings import Settings

try:
    import weaviate
    from weaviate.classes.config import Configure, Property, VectorDistances
    from weaviate.classes.data import DataObject
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout
    from weaviate.classes.query import Filter, MetadataQuery
    from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateBaseError, WeaviateUnsupportedFeatureError
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"The Weaviate store needs weaviate-client v4: pip install weaviate-client ({exc})") from exc

_DISTANCES = {"cosine": VectorDistances.COSINE, "dot": VectorDistances.DOT, "euclid": VectorDistances.L2_SQUARED}
_DIM = re.compile(r"dim=(\d+)")
#: seconds a binding waits out Weaviate applying another worker's update of the same class (read-only meanwhile)
BIND_BUSY_SECONDS = 5.0
#: seconds for which a task lookup that found a class vouches for it to the next upsert (see WeaviateStore.upsert)
_LOOKUP_VOUCHES = 1.0
# Errors that are about the data itself; anything else (a node not ready, a
# lost leader, a connection, a timeout) is the server's state and is retried.
_REJECTED_WORDS = (
    "dimension",
    "vector length",
    "data type",
    "datatype",
    "no such prop",
    "unknown property",
    "wrong type",
    "not a valid",
    "invalid property",
    "invalid value",
    "invalid uuid",
)


def _is_rejection(message: str) -> bool:
    text = message.lower()
    return any(word in text for word in _REJECTED_WORDS)


def _already_exists(exc: UnexpectedStatusCodeError) -> bool:
    return exc.status_code == 422 and "already exists" in str(exc).lower()


def class_name(collection: str) -> str:
    name = collection.replace("-", "_")
    return name[:1].upper() + name[1:]


class _Unsupported(StoreRejectedError):
    """A feature this Weaviate server is too old for (aliases need 1.32)."""


class _Busy(StoreUnavailableError):
    """Weaviate held the class read-only while applying another configuration update (retried)."""


class _Missing(StoreUnavailableError):
    """Weaviate could not find the class a request named: dropped since this adapter looked (retried)."""


def _busy_updating(message: str) -> bool:
    """Weaviate holds a class read-only while it applies a configuration update (``store is read-only due to:
    UpdateVectorIndexConfigs``): another worker's update of the same class, a moment's wait, not a refusal."""
    return "is read-only due to" in message.lower()


def _class_missing(message: str) -> bool:
    text = message.lower()
    return "could not find class" in text or "no such class" in text


class WeaviateStore(LazyClient, BaseVectorDB):
    name = "weaviate"
    alias_kind = "native"

    def __init__(
        self,
        *,
        url: str,
        grpc_port: int = 50051,
        api_key: str | None = None,
        timeout: float = 10.0,
        contract: MetadataContract | None = None,
        vector_index: str = "hnsw",
        hnsw: Mapping[str, int] | None = None,
    ) -> None:
        """``vector_index`` (``hnsw`` or ``flat``) and ``hnsw`` (``ef_construction``, ``max_connections``, ``ef``;
        Weaviate's defaults for those not given): the index of the collections this adapter creates."""
        parsed = urlparse(url)
        if not parsed.hostname:
            raise ConfigError(
                f"Invalid Weaviate URL {url!r} (VECTORIZE_WORKER_WEAVIATE_URL); e.g. http://localhost:8080"
            )
        self._url = url
        self._parsed = parsed
        self._grpc_port = grpc_port
        self._api_key = api_key
        self._timeout = timeout
        self.contract = contract or MetadataContract()
        self._vector_index = vector_index
        self._hnsw = dict(hnsw or {})
        if vector_index not in ("hnsw", "flat") or (vector_index == "flat" and self._hnsw):
            raise ConfigError(
                f"Weaviate vector index {vector_index!r} with HNSW options {sorted(self._hnsw)}: use hnsw, or flat "
                "without them (stores.weaviate.vector_index)"
            )
        self._init_client()
        self._layouts: dict[str, Layout] = {}
        self._missing = MissingCollections()
        self._looked_up: tuple[str, float] | None = None  # the class the last task lookup found, and when

    def describe(self) -> str:
        return f"Weaviate at {self._url}"

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Failed to connect to Weaviate at {self._url} (gRPC port {self._grpc_port}) during {what}: "
            f"{str(exc)[:300]} — is the server running? (VECTORIZE_WORKER_WEAVIATE_URL; `make up` starts a local one)"
        )

    def _open(self) -> Any:
        secure = self._parsed.scheme == "https"
        return weaviate.connect_to_custom(
            http_host=self._parsed.hostname,
            http_port=self._parsed.port or (443 if secure else 80),
            http_secure=secure,
            grpc_host=self._parsed.hostname,
            grpc_port=self._grpc_port,
            grpc_secure=secure,
            auth_credentials=Auth.api_key(self._api_key) if self._api_key else None,
            skip_init_checks=True,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=self._timeout, query=self._timeout, insert=self._timeout * 6)
            ),
        )

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WeaviateUnsupportedFeatureError as exc:
            raise _Unsupported(
                f"Weaviate at {self._url} cannot do {what}: {str(exc)[:300]} Upgrade Weaviate to use it."
            ) from None
        except UnexpectedStatusCodeError as exc:
            if _class_missing(str(exc)):
                raise _Missing(
                    f"Weaviate at {self._url}: no class during {what}: {str(exc)[:300]}; will retry"
                ) from None
            if _busy_updating(str(exc)):
                raise _Busy(
                    f"Weaviate at {self._url} held the class read-only during {what} (it was applying another "
                    "configuration update of it); will retry"
                ) from None
            if exc.status_code >= 500 or exc.status_code in (401, 403, 408, 429):
                raise StoreUnavailableError(
                    f"Weaviate at {self._url} failed {what} (HTTP {exc.status_code}); will retry"
                ) from None
            raise StoreRejectedError(f"Weaviate at {self._url} refused {what}: {str(exc)[:400]}") from None
        except WeaviateBaseError as exc:
            if _class_missing(str(exc)):  # the server answered: the client is fine
                raise _Missing(
                    f"Weaviate at {self._url}: no class during {what}: {str(exc)[:300]}; will retry"
                ) from None
            if _busy_updating(str(exc)):
                raise _Busy(
                    f"Weaviate at {self._url} held the class read-only during {what} (it was applying a "
                    "configuration update of it); will retry"
                ) from None
            if _is_rejection(str(exc)):
                raise StoreRejectedError(f"Weaviate at {self._url} refused {what}: {str(exc)[:400]}") from None
            self._forget()
            raise self._unavailable(what, exc) from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            self._forget()
            raise self._unavailable(what, exc) from None

    def _collection(self, collection: str) -> Any:
        return self._connect().collections.get(class_name(collection))

    def ensure_collection(
        self, collection: str, dim: int, distance: Distance = "cosine", identity: ModelIdentity | None = None
    ) -> None:
        self._ensure_once_more(
            collection in self._layouts,
            lambda: self._ensure(collection, dim, distance, identity),
            lambda: self._forget_class(class_name(collection)),
        )

    def _ensure(self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None) -> None:
        layout = self._layouts.get(collection)
        if layout is None:
            layout = self._lookup(collection)
            if layout is not None and layout.name and layout.name != class_name(collection):
                # an alias: its target is made sure of (and remembered) under the target's own name, never under
                # the alias's, so that a switch of the alias is followed at once
                if layout.name != class_name(layout.name):  # pragma: no cover - Weaviate class names are capitalised
                    raise StoreRejectedError(f"Weaviate at {self._url} named a class {layout.name!r} unexpectedly")
                self.ensure_collection(layout.name, dim, distance, identity)
                return
            layout = layout or self._create_collection(collection, dim, distance, identity)
            if layout.dim is None:  # a class not made by this worker: trust the model
                layout.dim = dim
            self._add_missing_properties(collection, layout)
            self._layouts[collection] = layout
        if identity is not None:
            self._check_model(collection, layout, identity)
        if layout.dim != dim:
            raise StoreRejectedError(
                f"Weaviate collection {class_name(collection)!r} at {self._url} holds {layout.dim}-dimensional "
                f"vectors but the model produces {dim}; send the task to another collection or use the model it "
                "was made with."
            )

    def _lookup(self, collection: str) -> Layout | None:
        """The collection's layout, or None when it does not exist."""
        client = self._connect()
        if not self._call("collection lookup", client.collections.exists, class_name(collection)):
            return None
        return self._read_layout(collection)

    def _read_layout(self, collection: str) -> Layout:
        config = self._call("collection lookup", lambda: self._collection(collection).config.get())
        description = config.description or ""
        match = _DIM.search(description)
        return Layout(
            dim=int(match.group(1)) if match else None,
            legacy=LAYOUT not in description,
            props={p.name: p.data_type for p in config.properties},
            description=description,
            name=str(config.name or ""),
        )

    def _binding(self, collection: str, layout: Layout) -> ModelIdentity | None:
        try:
            return binding_in(layout.description)
        except ValueError as exc:
            where = f"the description of Weaviate class {class_name(collection)!r}"
            raise unreadable_binding(collection=collection, store=self.describe(), where=where, problem=exc) from None

    def _check_model(self, collection: str, layout: Layout, identity: ModelIdentity) -> None:
        """Refuse ``identity`` when the collection is bound to another model; bind it when unbound (requests
        only the first time: the binding is kept in ``layout``)."""
        if layout.binding is None:
            layout.binding = self._binding(collection, layout) or self._bind(collection, layout, identity)
        check_binding(layout.binding, identity, collection=collection, store=self.describe())

    def _bind(self, collection: str, layout: Layout, identity: ModelIdentity) -> ModelIdentity | None:
        """Bind a collection made before bindings to ``identity`` (in its description), unless one of its records
        is of another model (refused) or its dimension is another (None: the dimension check refuses it)."""
        fresh = self._read_layout(collection)  # another worker may have bound it since this adapter looked
        bound = self._binding(collection, fresh)
        if bound is not None:
            return bound
        dim = layout.dim or identity.dim
        held = self._held_model(collection, fresh, dim)
        check_binding(held, identity, collection=collection, store=self.describe())
        if dim != identity.dim:
            return None
        description = f"{fresh.description or f'vectorize-worker dim={dim}'} {binding_text(identity)}"
        name = class_name(collection)
        deadline = time.monotonic() + BIND_BUSY_SECONDS
        while True:
            try:
                self._call(
                    f"binding collection {name} to model {identity.name}",
                    lambda: self._collection(collection).config.update(description=description),
                )
                break
            except _Busy:
                # workers binding one class at once: Weaviate holds it read-only while it applies another's
                # update; that one may be this same binding, else this worker's turn comes a moment later
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                bound = self._binding(collection, self._read_layout(collection))
                if bound is not None:
                    return bound
        return self._binding(collection, self._read_layout(collection)) or identity

    def _held_model(self, collection: str, layout: Layout, dim: int) -> ModelIdentity | None:
        """The model one stored record names (None for an empty collection, or one without ``_payload``)."""
        if PAYLOAD_KEY not in layout.props:
            return None
        res = self._call(
            f"reading a record of {class_name(collection)}",
            self._collection(collection).query.fetch_objects,
            limit=1,
            return_properties=[PAYLOAD_KEY],
        )
        return ModelIdentity.from_record(_payload(res.objects[0].properties), dim) if res.objects else None

    def bound_identity(self, collection: str) -> ModelIdentity | None:
        layout = self._lookup(collection)
        return self._binding(collection, layout) if layout is not None else None

    def _create_collection(
        self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None = None
    ) -> Layout:
        """Create the class with every property (bound to ``identity``); when another worker created it first,
        read theirs."""
        client = self._connect()
        name = class_name(collection)
        properties = [PAYLOAD_PROPERTY, *(make_property(n, kind) for n, kind in WORKER_FIELDS.items())]
        properties += [
            make_property(native_name(n), kind, ranged=True) for n, kind in self.contract.fields(collection).items()
        ]

        description = f"vectorize-worker dim={dim} {LAYOUT}"
        if identity is not None:
            description += f" {binding_text(identity)}"

        def create() -> bool:
            try:
                client.collections.create(
                    name,
                    description=description,
                    properties=properties,
                    vector_config=Configure.Vectors.self_provided(vector_index_config=self._index_config(distance)),
                )
            except UnexpectedStatusCodeError as exc:
                if _already_exists(exc):  # three workers starting on a new collection: the losers read it
                    return False
                raise
            return True

        if not self._call(f"creating collection {name}", create):
            return self._read_layout(collection)
        return Layout(
            dim=dim,
            legacy=False,
            props={p.name: p.dataType for p in properties},
            description=description,
            binding=identity,
            name=name,
        )

    def _index_config(self, distance: Distance) -> Any:
        """The vector index of a collection this adapter creates (stores.weaviate.vector_index and its options)."""
        if self._vector_index == "flat":
            return Configure.VectorIndex.flat(distance_metric=_DISTANCES[distance])
        return Configure.VectorIndex.hnsw(distance_metric=_DISTANCES[distance], **self._hnsw)

    def _add_missing_properties(self, collection: str, layout: Layout) -> None:
        """Declared fields (and, in the new layout, worker fields) the class lacks, added explicitly; a declared
        field whose property has another type is refused (filters on it would be wrong)."""
        wanted = {native_name(n): (n, kind) for n, kind in self.contract.fields(collection).items()}
        if not layout.legacy:
            wanted |= {n: (None, kind) for n, kind in WORKER_FIELDS.items()}
        for prop, (declared, kind) in wanted.items():
            have = layout.props.get(prop)
            if have is None:
                self._add_property(collection, make_property(prop, kind, ranged=declared is not None))
                layout.props[prop] = TYPES[kind]
            elif have != TYPES[kind] and declared is not None:
                raise StoreRejectedError(
                    f"Weaviate collection {class_name(collection)!r} at {self._url} has property {prop!r} of type "
                    f"{have.value}, but stores.filterable declares {declared!r} as {kind}; declare it as before "
                    "or write to a new collection."
                )

    def _add_property(self, collection: str, prop: Property) -> None:
        def add() -> None:
            try:
                self._collection(collection).config.add_property(prop)
            except UnexpectedStatusCodeError as exc:
                if not _already_exists(exc):  # another worker added it first
                    raise

        self._call(f"adding property {prop.name} to {class_name(collection)}", add)

    def _check_dim(self, collection: str, vectors: Sequence[Sequence[float]]) -> None:
        layout = self._layouts.get(collection)
        dim = layout.dim if layout else None
        if dim is not None and any(len(vector) != dim for vector in vectors):
            # what this adapter remembers may be stale (the name is an alias now, or the class was dropped and made
            # again): the store is asked once before a vector is refused
            self._layouts.pop(collection, None)
            fresh = self._lookup(collection)
            dim = fresh.dim if fresh is not None else None
        for vector in vectors:
            if dim is not None and len(vector) != dim:
                raise StoreRejectedError(
                    f"Vector of dimension {len(vector)} does not fit Weaviate collection {class_name(collection)!r} "
                    f"(dimension {dim}) at {self._url}; use a matching model or another collection."
                )

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        self._check_dim(collection, [r.vector for r in records])
        cls = class_name(collection)
        what = f"upsert into {cls}"
        # A write into a missing class does not fail: Weaviate's auto-schema makes one (unbound, its properties
        # typed by guess), so the class is asked for first: by _lookup when not remembered, else by its own
        # request, unless the task lookup the writer makes just before a write found it (that lookup is a query
        # on the class, which fails on a missing one), so a write of the default settings costs no request more
        looked_up, self._looked_up = self._looked_up, None
        layout = self._layouts.get(collection)
        if layout is None:
            layout = self._lookup(collection)
        elif not (
            looked_up is not None and looked_up[0] == cls and time.monotonic() - looked_up[1] < _LOOKUP_VOUCHES
        ) and not self._class_exists(cls):
            layout = None
        if layout is None:
            raise self._gone(collection, what)
        if layout.name and layout.name != class_name(collection):  # through an alias: its target's, if known
            layout = self._layouts.get(layout.name) or layout
        fixed = layout.fixed()
        declared = self.contract.fields(collection)
        objects = []
        for r in records:
            properties: dict[str, Any] = {PAYLOAD_KEY: json.dumps(dict(r.payload), ensure_ascii=False)}
            properties |= {name: value for name, value in worker_values(r.payload).items() if name in fixed}
            properties |= {native_name(name): value for name, value in r.filterable.items() if name in declared}
            objects.append(DataObject(uuid=r.id, vector=[float(x) for x in r.vector], properties=properties))
        try:
            result = self._call(what, self._collection(collection).data.insert_many, objects)
        except _Missing:
            raise self._gone(collection, what) from None
        if result.has_errors:
            first = next(iter(result.errors.values()))
            message = getattr(first, "message", str(first))
            if _class_missing(message):
                raise self._gone(collection, what)
            if not _is_rejection(message):
                raise self._unavailable("upsert", RuntimeError(message))
            raise StoreRejectedError(
                f"Weaviate at {self._url} refused {len(result.errors)} of {len(objects)} objects in "
                f"{class_name(collection)}: {message[:300]}"
            )
        self._missing.written(class_name(collection))

    def _gone(self, collection: str, what: str) -> Exception:
        """The class of ``collection`` was not found (dropped behind this adapter): forgotten, and the error
        :class:`~sinks.base.MissingCollections` says."""
        self._forget_class(class_name(collection))
        return self._missing.error(self.describe(), class_name(collection), what)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        what = f"delete from {class_name(collection)}"
        try:
            self._call(
                what, self._collection(collection).data.delete_many, where=Filter.by_id().contains_any(list(ids))
            )
        except _Missing:
            raise self._gone(collection, what) from None
        self._missing.written(class_name(collection))

    def task_records(self, collection: str, task_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        wanted = set(task_ids)
        if not wanted:
            return {}
        # a collection this adapter made sure of: no round trip to ask again (the writer looks up right after
        # ensure_collection, so this saves a request per write)
        layout = self._layouts.get(collection) or self._lookup(collection)
        if layout is None:
            return {}
        col = self._collection(collection)
        digests = "content_digest" in layout.props  # classes of the legacy layout may lack the property
        found: dict[str, dict[str, str | None]] = {}
        page = 1000
        what = f"task lookup in {class_name(collection)}"
        for offset in range(0, MAX_TASK_RECORDS, page):  # filtered queries page by offset within Weaviate's window
            try:
                res = self._call(
                    what,
                    col.query.fetch_objects,
                    filters=Filter.by_property("task_id").contains_any(sorted(wanted)),
                    limit=page,
                    offset=offset,
                    return_properties=["task_id", "content_digest"] if digests else ["task_id"],
                )
            except _Missing:
                raise self._gone(collection, what) from None
            for o in res.objects:
                props = o.properties or {}
                task_id = props.get("task_id")
                if task_id in wanted:  # exact: an old auto-schema class tokenized task_id into words
                    found.setdefault(task_id, {})[str(o.uuid)] = props.get("content_digest")
            if len(res.objects) < page:
                break
        self._looked_up = (class_name(collection), time.monotonic())
        return found

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        where = weaviate_filter(parse_filter(filter, self.contract.fields(collection), collection=collection))
        self._check_dim(collection, [vector])
        res = self._read(
            collection,
            f"search in {class_name(collection)}",
            lambda col: col.query.near_vector(
                near_vector=[float(x) for x in vector],
                limit=k,
                filters=where,
                return_properties=[PAYLOAD_KEY],
                return_metadata=MetadataQuery(distance=True),
            ),
        )
        return [
            StoredPoint(id=str(o.uuid), payload=_payload(o.properties), score=1.0 - float(o.metadata.distance or 0))
            for o in res.objects
        ]

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        res = self._read(
            collection,
            f"retrieve from {class_name(collection)}",
            lambda col: col.query.fetch_objects_by_ids(
                list(ids), include_vector=with_vectors, limit=max(1, len(ids)), return_properties=[PAYLOAD_KEY]
            ),
        )
        found = {
            str(o.uuid): StoredPoint(
                id=str(o.uuid),
                payload=_payload(o.properties),
                vector=[float(x) for x in o.vector["default"]] if with_vectors and o.vector else None,
            )
            for o in res.objects
        }
        return [found[i] for i in ids if i in found]

    def _read(self, collection: str, what: str, query: Any) -> Any:
        """``query(collection handle)``; a class not found (dropped since) is forgotten: what this adapter
        remembered of it (its dimension, binding) is read again next time."""
        try:
            return self._call(what, query, self._collection(collection))
        except _Missing:
            self._forget_class(class_name(collection))
            raise

    def count(self, collection: str) -> int:
        client = self._connect()
        if not self._call("collection lookup", client.collections.exists, class_name(collection)):
            return 0
        res = self._call("count", self._collection(collection).aggregate.over_all, total_count=True)
        return int(res.total_count or 0)

    # -- aliases, dropping, reading back ---------------------------------------------------------------------
    def store_name(self, collection: str) -> str:
        return class_name(collection)

    def resolve(self, alias: str) -> str | None:
        try:
            return self._alias_target(class_name(alias))
        except _Unsupported:
            return None  # a Weaviate before aliases: no name can be one

    def has_collection(self, name: str) -> bool:
        cls = class_name(name)
        return self._class_exists(cls) and self.resolve(name) is None

    def _alias_target(self, name: str) -> str | None:
        found = self._call(f"alias lookup {name}", self._connect().alias.get, alias_name=name)
        return str(found.collection) if found is not None else None

    def _class_exists(self, name: str) -> bool:
        """Whether ``name`` is a class or an alias (Weaviate answers yes to both)."""
        return bool(self._call(f"collection lookup {name}", self._connect().collections.exists, name))

    def _forget_class(self, name: str) -> None:
        """Forget what this adapter remembers under any collection name of class ``name``."""
        for collection in [c for c in self._layouts if class_name(c) == name]:
            del self._layouts[collection]

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        client = self._connect()
        name, target = class_name(alias), class_name(physical)
        where = f"Weaviate at {self._url}"
        if name == target:
            raise StoreRejectedError(f"{where}: alias {name!r} cannot point at itself; name another collection.")
        target_of_target = self._alias_target(target)
        if target_of_target is not None:
            raise StoreRejectedError(
                f"{where}: {target!r} is an alias (of {target_of_target!r}), not a collection; point alias {name!r} "
                "at a collection."
            )
        if not self._class_exists(target):
            raise StoreRejectedError(
                f"{where}: alias {name!r} cannot point at collection {target!r}: it does not exist. Create it "
                "(ensure_collection) first."
            )
        current = self._alias_target(name)
        if current is None and self._class_exists(name):
            current = self._alias_target(name)  # an alias another worker made meanwhile answers yes too
            if current is None:
                raise StoreRejectedError(
                    f"{where}: alias {name!r} cannot be made: a collection of that name exists, and a Weaviate "
                    "alias cannot take a collection's name. A collection made before aliases must be copied to "
                    'a physical collection and dropped first (docs/stores.md, "Aliases and pointers").'
                )
        if current is None:
            try:
                self._call(
                    f"creating alias {name} -> {target}", client.alias.create, alias_name=name, target_collection=target
                )
            except StoreRejectedError as exc:
                # another worker made it between the lookup and the create (the first write to a new collection
                # on several workers at once): pointed where this one wants, or switched there
                if "already exists" not in str(exc):
                    raise
                current = self._alias_target(name)
                if current is None:
                    raise
        if current is not None and current != target:
            switched = self._call(
                f"switching alias {name} from {current} to {target}",
                client.alias.update,
                alias_name=name,
                new_target_collection=target,
            )
            if not switched:  # removed since it was read: made again
                self._call(
                    f"creating alias {name} -> {target}", client.alias.create, alias_name=name, target_collection=target
                )
        self._forget_class(name)

    def unpoint(self, alias: str) -> None:
        name = class_name(alias)
        try:
            self._call(f"deleting alias {name}", self._connect().alias.delete, alias_name=name)
        except _Unsupported:
            return  # a Weaviate before aliases holds none
        self._forget_class(name)

    def drop(self, physical: str) -> None:
        client = self._connect()
        name = class_name(physical)
        where = f"Weaviate at {self._url}"
        try:
            target = self._alias_target(name)
        except _Unsupported:  # a Weaviate before aliases: nothing can point at the collection
            target, aliases = None, False
        else:
            aliases = True
        if target is not None:
            raise StoreRejectedError(
                f"{where}: {name!r} is an alias (of {target!r}), not a collection: unpoint the alias, or drop the "
                "collection it points at once no alias points at it."
            )
        if self._class_exists(name):
            if aliases:
                pointing = self._call(f"alias lookup for {name}", client.alias.list_all, collection=name) or {}
                if pointing:
                    raise StoreRejectedError(
                        f"{where}: collection {name!r} cannot be dropped: alias(es) {', '.join(sorted(pointing))} "
                        "point at it. Switch them to another collection or unpoint them first."
                    )
            self._call(f"dropping collection {name}", client.collections.delete, name)
        self._forget_class(name)

    def scan(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[StoredPoint], str | None]:
        objects, cursor = self._scan(physical, cursor, limit, [PAYLOAD_KEY])
        return [StoredPoint(id=str(o.uuid), payload=_payload(o.properties)) for o in objects], cursor

    def scan_ids(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[str], str | None]:
        objects, cursor = self._scan(physical, cursor, limit, [])
        return [str(o.uuid) for o in objects], cursor

    def _scan(
        self, physical: str, cursor: str | None, limit: int, properties: list[str]
    ) -> tuple[list[Any], str | None]:
        """Weaviate's cursor: objects in uuid order after the uuid ``cursor`` (it takes no filter)."""
        name = class_name(physical)
        if not self._class_exists(name):
            return [], None
        page = scan_page(limit)
        res = self._call(
            f"reading {name} back",
            self._collection(physical).query.fetch_objects,
            limit=page,
            after=cursor or None,
            return_properties=properties,
            include_vector=False,
        )
        objects = list(res.objects)
        return objects, str(objects[-1].uuid) if len(objects) == page else None

    def health(self) -> None:
        if not self._call("health check", self._connect().is_ready):
            raise self._unavailable("health check", RuntimeError("not ready"))

    def close(self) -> None:
        self._forget()


def _payload(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    if properties and properties.get(PAYLOAD_KEY):
        return json.loads(properties[PAYLOAD_KEY])
    return {k: v for k, v in (properties or {}).items() if k != PAYLOAD_KEY}


def create(settings: Settings) -> WeaviateStore:
    """Entry point ``vectorize_worker.vector_dbs: weaviate``."""
    cfg = settings.weaviate
    return WeaviateStore(
        url=settings.weaviate_url,
        grpc_port=cfg.grpc_port,
        api_key=reveal(cfg.api_key),
        timeout=cfg.timeout,
        contract=MetadataContract.from_settings(settings),
        vector_index=cfg.vector_index,
        hnsw={
            name: value
            for name in ("ef_construction", "max_connections", "ef")
            if (value := getattr(cfg, name)) is not None
        },
    )
