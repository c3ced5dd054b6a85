"""Chroma adapter: an HTTP server (``chroma run``) or an embedded persistent client.

Chroma keeps flat metadata (scalars and lists), so the full payload travels as
JSON under ``_payload``; beside it each record carries only the worker's own
fields (:data:`~sinks.base.WORKER_FIELDS`) and the declared metadata fields
``meta_<name>`` (datetimes as microseconds since 1970, so ranges work), never
a task's other metadata keys: those once filled Chroma's metadata segment until
its compaction failed. Vectors are always passed in: the collection is
created without an embedding function, so Chroma never loads (or downloads)
its default model.

Chroma's upsert merges the metadata it is given into what a record held, so
a write gives None (which deletes a key) for every worker and declared field
the record lacks, and a record's digest is read from its ``_payload`` (always
written whole), never from the native key an older writer may have left.

Records of the old layout (every scalar flattened under its dotted path, such
as ``metadata.lang``) read the same, from their ``_payload``.

The model a collection is bound to (:mod:`core.versioning`) is a JSON string
under ``vw_model`` in the collection's metadata (Chroma's values are
scalars): written at creation, or, for a collection made before bindings, at
its first write. ``modify`` replaces the whole metadata and refuses ``hnsw:*``
keys, so the binding is merged into the other keys, ``hnsw:*`` left out (the
distance stays in the collection's configuration); one stored record is read
first, so a collection holding another model's vectors is refused.

Chroma has no aliases, and renaming is not atomic (a switch by two renames
left searches failing in between) nor followed by a held handle (it follows
the collection's id). An alias is a pointer instead: one row per alias in the
collection ``vw_aliases`` (:data:`~sinks.base.POINTER_COLLECTION`), id = the
alias, metadata ``target`` (the physical collection) and ``identity`` (its
model, JSON), embedding ``[0.0]``; a switch is an upsert of that one row.
Only :meth:`ChromaStore.resolve` reads pointers: every other method takes the
name it is given as a collection's (docs/stores.md, "Aliases and pointers").
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from core.errors import ConfigError, StoreRejectedError, StoreUnavailableError
from core.metadata_contract import MetadataContract, epoch_micros, native_name
from core.secrets import reveal
from core.versioning import ModelIdentity, check_binding, unreadable_binding
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
    worker_values,
)
from sinks.filters import Condition, parse_filter
from sinks.lazy import LazyClient

if TYPE_CHECKING:
    from core.settings import Settings

try:
    import chromadb
    from chromadb.errors import ChromaError, NotFoundError
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"The Chroma store needs chromadb: pip install chromadb ({exc})") from exc

_SPACES = {"cosine": "cosine", "dot": "ip", "euclid": "l2"}
_RANGES = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
#: the collection metadata key holding the model binding (JSON)
BINDING_KEY = "vw_model"


class _Missing(StoreRejectedError):
    """Chroma answered NotFound: the collection (or the one a held handle names) does not exist."""


class ChromaStore(LazyClient, BaseVectorDB):
    name = "chroma"
    alias_kind = "pointer"

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        timeout: float = 10.0,
        token: str | None = None,
        contract: MetadataContract | None = None,
    ) -> None:
        if not url and not path:
            raise ConfigError("The Chroma store needs a URL (VECTORIZE_WORKER_CHROMA__URL) or a local path.")
        self._url = url
        self._path = path
        self._where = url or f"local path {path}"
        self._timeout = timeout
        self._token = token
        self.contract = contract or MetadataContract()
        self._init_client()
        self._collections: dict[str, Any] = {}
        self._bindings: dict[str, ModelIdentity] = {}  # collection -> the model it is bound to, once known
        self._pointers: Any = None  # the pointer collection's handle, once it exists
        self._missing = MissingCollections()

    def describe(self) -> str:
        return f"Chroma at {self._where}"

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Failed to connect to Chroma at {self._where} during {what}: {exc} — is the server running? "
            "(VECTORIZE_WORKER_CHROMA__URL; `make up` starts a local one)"
        )

    def _open(self) -> Any:
        if not self._url:
            return chromadb.PersistentClient(path=str(self._path))
        parsed = urlparse(self._url)
        client = chromadb.HttpClient(  # checks the server when created
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https",
            headers={"Authorization": f"Bearer {self._token}"} if self._token else None,
        )
        _set_timeout(client, self._timeout)
        return client

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ChromaError as exc:
            code = _code(exc)
            # 5xx, 429 and auth failures are the server's or the deployment's state, not the task's:
            # retry (the task stays unacknowledged) instead of dead-lettering every task.
            if code >= 500 or code in (401, 403, 408, 429):
                raise StoreUnavailableError(
                    f"Chroma at {self._where} failed {what} ({type(exc).__name__}, HTTP {code}): {exc}; will retry. "
                    "Check the server and its credentials."
                ) from None
            refused = _Missing if isinstance(exc, NotFoundError) else StoreRejectedError
            raise refused(f"Chroma at {self._where} refused {what}: {exc}") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            self._forget()
            raise self._unavailable(what, exc) from None
        except (TypeError, AttributeError, KeyError):
            raise  # our own bugs must surface
        except Exception as exc:  # noqa: BLE001 - httpx errors and chromadb's bare Exception(resp.text)
            self._forget()
            raise self._unavailable(what, exc) from None

    def _dropped(self, client: Any) -> None:
        # Chroma's clients share a process-wide system: not closed here, only forgotten with their collections
        self._collections.clear()
        self._bindings.clear()
        self._pointers = None

    def _collection(self, name: str) -> Any:
        col = self._collections.get(name)
        if col is None:
            client = self._connect()
            col = self._call(f"collection lookup {name}", client.get_collection, name=name, embedding_function=None)
            self._collections[name] = col
        return col

    def ensure_collection(
        self, collection: str, dim: int, distance: Distance = "cosine", identity: ModelIdentity | None = None
    ) -> None:
        self._ensure_once_more(
            collection in self._collections,
            lambda: self._ensure(collection, dim, distance, identity),
            lambda: self._forget_name(collection),
        )

    def _ensure(self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None) -> None:
        # known to this adapter: its dimension is checked without a round trip (the writer calls this per write)
        col = self._collections.get(collection)
        if col is None:
            self._bindings.pop(collection, None)  # read again with the handle
            col = self._create_collection(collection, dim, distance, identity)
        if identity is not None:
            col = self._check_model(collection, col, identity)
        known = int((col.metadata or {}).get("dimension", dim))
        if known != dim:
            raise StoreRejectedError(
                f"Chroma collection {collection!r} at {self._where} holds {known}-dimensional vectors but the model "
                f"produces {dim}; send the task to another collection or use the model the collection was made with."
            )
        self._collections[collection] = col

    def _binding(self, collection: str, metadata: Mapping[str, Any] | None) -> ModelIdentity | None:
        stored = (metadata or {}).get(BINDING_KEY)
        if stored is None:
            return None
        try:
            return ModelIdentity.from_json(stored)
        except ValueError as exc:
            where = f"collection metadata {BINDING_KEY!r}"
            raise unreadable_binding(collection=collection, store=self.describe(), where=where, problem=exc) from None

    def _check_model(self, collection: str, col: Any, identity: ModelIdentity) -> Any:
        """Refuse ``identity`` when the collection is bound to another model; bind it when unbound (requests
        only the first time: the binding is remembered). Returns the collection's handle, read again when
        this call bound it."""
        binding = self._bindings.get(collection)
        if binding is None:
            binding = self._binding(collection, col.metadata)
            if binding is None:
                col, binding = self._bind(collection, identity)
            if binding is not None:
                self._bindings[collection] = binding
        check_binding(binding, identity, collection=collection, store=self.describe())
        return col

    def _bind(self, collection: str, identity: ModelIdentity) -> tuple[Any, ModelIdentity | None]:
        """Bind a collection made before bindings to ``identity``, unless one of its records is of another model
        (refused) or its dimension is another (None: the dimension check refuses it)."""
        client = self._connect()
        col = self._call(
            f"collection lookup {collection}", client.get_collection, name=collection, embedding_function=None
        )
        bound = self._binding(collection, col.metadata)  # another worker may have bound it since
        if bound is not None:
            return col, bound
        metadata = dict(col.metadata or {})
        dim = int(metadata.get("dimension", identity.dim))
        res = self._call(f"reading a record of {collection}", col.get, limit=1, include=["metadatas"])
        held = ModelIdentity.from_record(_payload(res["metadatas"][0]), dim) if res["ids"] else None
        check_binding(held, identity, collection=collection, store=self.describe())
        if dim != identity.dim:
            return col, None
        merged = {k: v for k, v in metadata.items() if not k.startswith("hnsw:")} | {BINDING_KEY: identity.to_json()}
        self._call(f"binding collection {collection} to model {identity.name}", col.modify, metadata=merged)
        col = self._call(
            f"collection lookup {collection}", client.get_collection, name=collection, embedding_function=None
        )
        return col, self._binding(collection, col.metadata) or identity

    def bound_identity(self, collection: str) -> ModelIdentity | None:
        collection = self._readable(collection)
        client = self._connect()
        names = {
            c if isinstance(c, str) else c.name for c in self._call("listing collections", client.list_collections)
        }
        if collection not in names:
            return None
        col = self._call(
            f"collection lookup {collection}", client.get_collection, name=collection, embedding_function=None
        )
        return self._binding(collection, col.metadata)

    def _create_collection(
        self, collection: str, dim: int, distance: Distance, identity: ModelIdentity | None = None
    ) -> Any:
        """The collection (bound to ``identity`` when this call creates it), created if missing; a create that
        races another worker's reads theirs."""
        client = self._connect()
        metadata: dict[str, Any] = {"hnsw:space": _SPACES[distance], "dimension": dim}
        if identity is not None:
            metadata[BINDING_KEY] = identity.to_json()

        def create() -> Any:
            try:
                return client.get_or_create_collection(
                    name=collection,
                    metadata=metadata,
                    embedding_function=None,
                )
            except Exception as exc:  # noqa: BLE001 - chromadb raises UniqueConstraintError or a bare Exception
                if "already exists" not in str(exc).lower():
                    raise
                return client.get_collection(name=collection, embedding_function=None)

        return self._call(f"creating collection {collection}", create)

    def _check_dim(self, collection: str, col: Any, vectors: Sequence[Sequence[float]]) -> None:
        dim = (col.metadata or {}).get("dimension")
        for vector in vectors:
            if dim is not None and len(vector) != int(dim):
                raise StoreRejectedError(
                    f"Vector of dimension {len(vector)} does not fit Chroma collection {collection!r} "
                    f"(dimension {dim}) at {self._where}; use a matching model or another collection."
                )

    def _missing_error(self, collection: str, what: str, exc: StoreRejectedError) -> Exception:
        """``exc`` as it stands, or, when it says the collection is gone (dropped behind this adapter), what
        :class:`~sinks.base.MissingCollections` says, the collection forgotten first (its handle, binding)."""
        if not _vanished(exc):
            return exc
        self._forget_name(collection)
        return self._missing.error(self.describe(), collection, what)

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        what = f"upsert into {collection}"
        try:
            col = self._collection(collection)
            self._check_dim(collection, col, [r.vector for r in records])
            step = self._max_batch()
            declared = [native_name(n) for n in self.contract.fields(collection)]
            for start in range(0, len(records), step):  # the client refuses batches over the server's limit
                chunk = records[start : start + step]
                self._call(
                    what,
                    col.upsert,
                    ids=[r.id for r in chunk],
                    embeddings=[[float(x) for x in r.vector] for r in chunk],
                    metadatas=[_metadata(r, declared) for r in chunk],
                )
        except StoreRejectedError as exc:
            raise self._missing_error(collection, what, exc) from None
        self._missing.written(collection)

    def _max_batch(self) -> int:
        try:
            return max(1, int(self._connect().get_max_batch_size()))
        except Exception:  # noqa: BLE001 - older servers: a safe default
            return 1000

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        collection = self._readable(collection)
        what = f"delete from {collection}"
        try:
            self._call(what, self._collection(collection).delete, ids=list(ids))
        except StoreRejectedError as exc:
            raise self._missing_error(collection, what, exc) from None
        self._missing.written(collection)

    def task_records(self, collection: str, task_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        collection = self._readable(collection)
        wanted = set(task_ids)
        if not wanted:
            return {}
        # made sure of by this adapter: no round trips to ask again
        if collection not in self._collections and self.count(collection) == 0:
            return {}
        what = f"task lookup in {collection}"
        found: dict[str, dict[str, str | None]] = {}
        page = 1000
        try:
            col = self._collection(collection)
            for offset in range(0, MAX_TASK_RECORDS, page):
                res = self._call(
                    what,
                    col.get,
                    where={"task_id": {"$in": sorted(wanted)}},
                    include=["metadatas"],
                    limit=page,
                    offset=offset,
                )
                for record_id, meta in zip(res["ids"], res["metadatas"] or [], strict=False):
                    task_id = (meta or {}).get("task_id")
                    if task_id in wanted:
                        # from the payload, which every write replaces whole: Chroma's upsert merges the native
                        # keys, so a native digest can outlive a rewrite by a worker that wrote none
                        digest = _payload(meta).get("content_digest") if PAYLOAD_KEY in (meta or {}) else None
                        found.setdefault(task_id, {})[record_id] = digest if isinstance(digest, str) else None
                if len(res["ids"]) < page:
                    break
        except StoreRejectedError as exc:
            raise self._missing_error(collection, what, exc) from None
        return found

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        conditions = parse_filter(filter, self.contract.fields(collection), collection=collection)
        where = chroma_where(conditions)
        lists = [c for c in conditions if c.is_list]
        collection = self._readable(collection)  # after the filter: declared fields belong to the alias's name
        col = self._collection(collection)
        self._check_dim(collection, col, [vector])
        wanted = k
        while True:
            res = self._read(
                collection,
                f"search in {collection}",
                "query",
                query_embeddings=[[float(x) for x in vector]],
                n_results=wanted,
                where=where,
                include=["metadatas", "distances"],
            )
            hits = [
                StoredPoint(id=i, payload=_payload(m), score=1.0 - float(d))
                for i, m, d in zip(res["ids"][0], res["metadatas"][0], res["distances"][0], strict=True)
            ]
            # Chroma's delete_collection leaves list values behind, and records that later reuse their row ids
            # inherit them (chroma-core/chroma#7594): a list condition is checked again on the payload, and
            # when that drops hits, more are asked for until k remain or the collection has no more.
            kept = [h for h in hits if _lists_hold(h.payload, lists)] if lists else hits
            if len(kept) >= k or len(hits) < wanted:
                return kept[:k]
            wanted *= 4

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        collection = self._readable(collection)
        include = ["metadatas", "embeddings"] if with_vectors else ["metadatas"]
        res = self._read(collection, f"retrieve from {collection}", "get", ids=list(ids), include=include)
        vectors = res.get("embeddings") if with_vectors else None
        found = {
            i: StoredPoint(
                id=i, payload=_payload(m), vector=[float(x) for x in vectors[n]] if vectors is not None else None
            )
            for n, (i, m) in enumerate(zip(res["ids"], res["metadatas"], strict=True))
        }
        return [found[i] for i in ids if i in found]

    def count(self, collection: str) -> int:
        collection = self._readable(collection)
        client = self._connect()
        names = {
            c if isinstance(c, str) else c.name for c in self._call("listing collections", client.list_collections)
        }
        if collection not in names:
            return 0
        return int(self._read(collection, f"count in {collection}", "count"))

    def _read(self, collection: str, what: str, method: str, **kwargs: Any) -> Any:
        """A read through the collection's handle; a handle of a collection dropped since (and maybe made again
        by another worker) is forgotten and the read made once more with a fresh one."""
        try:
            return self._call(what, getattr(self._collection(collection), method), **kwargs)
        except StoreRejectedError as exc:
            if not _vanished(exc) or collection not in self._collections:
                raise
            self._forget_name(collection)
        return self._call(what, getattr(self._collection(collection), method), **kwargs)

    # -- pointers, dropping, reading back ------------------------------------------------------------------------
    def _pointer_collection(self, *, create: bool) -> Any:
        """The pointer collection's handle; None when it does not exist and ``create`` is false."""
        if self._pointers is not None:
            return self._pointers
        client = self._connect()
        if create:
            handle = self._call(
                f"creating collection {POINTER_COLLECTION}",
                client.get_or_create_collection,
                name=POINTER_COLLECTION,
                metadata={"vw_pointers": 1, "dimension": 1},
                embedding_function=None,
            )
        else:
            try:
                handle = self._call(
                    f"collection lookup {POINTER_COLLECTION}",
                    client.get_collection,
                    name=POINTER_COLLECTION,
                    embedding_function=None,
                )
            except StoreRejectedError as exc:
                if not _vanished(exc):
                    raise
                return None
        if (handle.metadata or {}).get("vw_pointers") is None:
            raise StoreRejectedError(
                f"Chroma at {self._where}: collection {POINTER_COLLECTION!r} exists but is not the worker's pointer "
                f"collection (no 'vw_pointers' in its metadata); rename or delete it: the worker keeps its alias "
                "pointers there."
            )
        self._pointers = handle
        return handle

    def _pointer_call(self, what: str, method: str, **kwargs: Any) -> Any:
        """A request on the pointer collection; None when it does not exist (or was deleted behind this adapter)."""
        handle = self._pointer_collection(create=False)
        if handle is None:
            return None
        try:
            return self._call(what, getattr(handle, method), **kwargs)
        except StoreRejectedError as exc:
            if not _vanished(exc):
                raise
            self._pointers = None
            return None

    def _pointing_at(self, physical: str) -> list[str]:
        """The aliases whose pointer targets ``physical``."""
        res = self._pointer_call(
            f"pointer lookup for {physical}", "get", where={"target": physical}, include=["metadatas"]
        )
        return sorted(res["ids"]) if res else []

    def _handle(self, collection: str) -> Any:
        """A fresh handle of ``collection`` (not the remembered one: it may have been dropped and made again);
        None when it does not exist."""
        try:
            return self._call(
                f"collection lookup {collection}",
                self._connect().get_collection,
                name=collection,
                embedding_function=None,
            )
        except StoreRejectedError as exc:
            if _vanished(exc):
                return None
            raise

    def has_collection(self, name: str) -> bool:
        return self._handle(name) is not None

    def _readable(self, name: str) -> str:
        """What a read of ``name`` reads: the collection of that name, else the one its pointer names (a pointer
        is this store's alias: a collection made behind one is read by its alias too); one request more for a
        name the adapter has not seen as a collection."""
        if name in self._collections or name == POINTER_COLLECTION or self._handle(name) is not None:
            return name
        return self.resolve(name) or name

    def _forget_name(self, collection: str) -> None:
        self._collections.pop(collection, None)
        self._bindings.pop(collection, None)

    def resolve(self, alias: str) -> str | None:
        res = self._pointer_call(f"pointer lookup {alias}", "get", ids=[alias], include=["metadatas"])
        if not res or not res["ids"]:
            return None
        target = (res["metadatas"][0] or {}).get("target")
        if not isinstance(target, str) or not target:
            raise StoreRejectedError(
                f"Chroma at {self._where}: the pointer of alias {alias!r} in collection {POINTER_COLLECTION!r} has no "
                "target (edited by hand?). Point the alias again, or unpoint it."
            )
        return target

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        where = f"Chroma at {self._where}"
        refuse_pointer_collection(where, alias, physical)
        if self._handle(physical) is None:
            raise StoreRejectedError(
                f"{where}: alias {alias!r} cannot point at collection {physical!r}: it does not exist. Create it "
                "(ensure_collection) first."
            )
        metadata: dict[str, Any] = {"target": physical, "updated_at": time.time()}
        if identity is not None:
            metadata["identity"] = identity.to_json()
        for attempt in range(2):
            pointers = self._pointer_collection(create=True)
            try:
                # the switch: one row written in one request (readers see the old target or the new one)
                self._call(
                    f"pointing alias {alias} at {physical}",
                    pointers.upsert,
                    ids=[alias],
                    embeddings=[[0.0]],
                    metadatas=[metadata],
                )
                return
            except StoreRejectedError as exc:
                self._pointers = None  # deleted behind this adapter: made again once
                if attempt or not _vanished(exc):
                    raise

    def unpoint(self, alias: str) -> None:
        self._pointer_call(f"deleting pointer {alias}", "delete", ids=[alias])

    def drop(self, physical: str) -> None:
        where = f"Chroma at {self._where}"
        refuse_pointer_collection(where, physical)
        pointing = self._pointing_at(physical)
        if pointing:
            raise StoreRejectedError(
                f"{where}: collection {physical!r} cannot be dropped: pointer(s) {', '.join(pointing)} in "
                f"{POINTER_COLLECTION!r} point at it. Point them at another collection or unpoint them first."
            )
        self._forget_name(physical)
        col = self._handle(physical)
        if col is None:
            return
        # records first: deleting only the collection leaves list values behind (chroma-core/chroma#7594)
        while ids := self._call(f"reading ids of {physical}", col.get, limit=1000, include=[])["ids"]:
            self._call(f"deleting records of {physical}", col.delete, ids=ids)
        try:
            self._call(f"dropping collection {physical}", self._connect().delete_collection, name=physical)
        except StoreRejectedError as exc:
            if not _vanished(exc):  # dropped by another at the same moment: done
                raise
        finally:
            self._forget_name(physical)

    def scan(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[StoredPoint], str | None]:
        res, cursor = self._page(physical, cursor, limit, ["metadatas"])
        points = [StoredPoint(id=i, payload=_payload(m)) for i, m in zip(res["ids"], res["metadatas"], strict=True)]
        return points, cursor

    def scan_ids(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[str], str | None]:
        res, cursor = self._page(physical, cursor, limit, [])
        return list(res["ids"]), cursor

    def _page(
        self, physical: str, cursor: str | None, limit: int, include: list[str]
    ) -> tuple[dict[str, Any], str | None]:
        """Chroma's only paging: an offset into the records in the order they were added (the cursor). A record
        deleted behind the cursor moves the later ones back by one, so one of them is skipped: the verify step
        finds such ids."""
        try:
            offset = int(cursor or 0)
        except ValueError:
            raise StoreRejectedError(
                f"Chroma at {self._where}: {cursor!r} is not a cursor of a scan of {physical!r} (an offset); start "
                "the scan again without one."
            ) from None
        col = self._handle(physical)
        if col is None:
            return {"ids": [], "metadatas": []}, None
        page = scan_page(limit)
        res = self._call(f"reading {physical} back", col.get, limit=page, offset=offset, include=include)
        read = len(res["ids"])
        return res, str(offset + read) if read == page else None

    def health(self) -> None:
        self._call("health check", self._connect().heartbeat)

    def close(self) -> None:
        self._forget()


def _code(exc: Exception) -> int:
    try:
        return int(exc.code())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - errors without a code count as client errors
        return 400


def _set_timeout(client: Any, seconds: float) -> None:
    """chromadb's HTTP client has no timeout option (it waits forever); set one on its httpx session."""
    try:
        import httpx

        client._server._session.timeout = httpx.Timeout(seconds)
    except Exception:  # noqa: BLE001 - best effort on private attributes
        pass


def _payload(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if not metadata:
        return {}
    if PAYLOAD_KEY in metadata:
        return json.loads(metadata[PAYLOAD_KEY])
    return dict(metadata)


def _native(value: Any) -> Any:
    return epoch_micros(value) if isinstance(value, datetime) else value


def _metadata(record: VectorRecord, declared: Sequence[str]) -> dict[str, Any]:
    """A record's Chroma metadata: its payload as JSON, its worker fields and its declared fields (``declared``:
    their native names), and None for each of those it lacks. Chroma's upsert merges metadata into what a record
    held, and deletes a key given None: a field an earlier write of the record had and this one has not (an
    older worker's digest, a metadata field since removed) does not outlive this write."""
    values = worker_values(record.payload)
    values |= {native_name(n): _native(v) for n, v in record.filterable.items()}
    keys = [*WORKER_FIELDS, *declared]
    return {key: values.get(key) for key in keys} | {PAYLOAD_KEY: json.dumps(dict(record.payload), ensure_ascii=False)}


def _lists_hold(payload: Mapping[str, Any], conditions: Sequence[Condition]) -> bool:
    """Whether the payload's own metadata satisfies the string_list ``conditions``."""
    metadata = payload.get("metadata")
    for c in conditions:
        value = metadata.get(c.name) if isinstance(metadata, Mapping) else None
        items = set(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else set()
        wanted = set(c.value) if c.op == "in" else {c.value}
        if not items & wanted:
            return False
    return True


def chroma_where(conditions: Sequence[Condition]) -> dict[str, Any] | None:
    """The conditions as one Chroma ``where`` (None for none)."""
    clauses = [_chroma_clause(c) for c in conditions]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _chroma_clause(c: Condition) -> dict[str, Any]:
    if c.op == "in":
        values = [_native(v) for v in c.value]
        if c.is_list:  # a list field holds any of the values
            contains = [{c.field: {"$contains": v}} for v in values]
            return contains[0] if len(contains) == 1 else {"$or": contains}
        return {c.field: {"$in": values}}
    if c.op == "eq":
        return {c.field: {"$contains" if c.is_list else "$eq": _native(c.value)}}
    return {c.field: {_RANGES[c.op]: _native(c.value)}}


def create(settings: Settings) -> ChromaStore:
    """Entry point ``vectorize_worker.vector_dbs: chroma``."""
    cfg = settings.chroma
    contract = MetadataContract.from_settings(settings)
    if cfg.url:
        return ChromaStore(url=cfg.url, timeout=cfg.timeout, token=reveal(cfg.token), contract=contract)
    path = cfg.path or str(Path(settings.data_dir) / "chroma")
    return ChromaStore(path=path, timeout=cfg.timeout, contract=contract)


def _vanished(exc: Exception) -> bool:
    """A refusal that says the collection is gone (deleted by someone else since this adapter looked it up)."""
    if isinstance(exc, _Missing):
        return True
    text = str(exc).lower()
    return "does not exist" in text or "not found" in text
