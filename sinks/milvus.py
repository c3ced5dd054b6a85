"""Milvus adapter (pymilvus MilvusClient): a Milvus server by URI, or a Milvus Lite file.

Each collection has a VARCHAR primary key ``id`` (our UUIDs), a FLOAT_VECTOR
``vector`` field with a FLAT index, the payload as JSON in ``_payload`` (at
most 65,535 bytes, Milvus' VARCHAR limit), and dynamic fields for every
scalar under its path with ``__`` for dots (``metadata__lang``) for filters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.errors import ConfigError, StoreRejectedError, StoreUnavailableError
from app.secrets import reveal
from sinks.base import BaseVectorDB, Distance, StoredPoint, VectorRecord
from sinks.chroma import PAYLOAD_KEY, flatten
from sinks.lazy import LazyClient

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


def collection_name(collection: str) -> str:
    return collection.replace("-", "_")


def field_name(path: str) -> str:
    return path.replace(".", "__")


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, bool) else ("true" if value else "false")


class MilvusStore(LazyClient, BaseVectorDB):
    name = "milvus"

    def __init__(self, *, uri: str, token: str | None = None, timeout: float = 10.0) -> None:
        if not uri:
            raise ConfigError("The Milvus store needs a URI (VECTORIZE_WORKER_MILVUS__URI) or a Milvus Lite file path.")
        self._uri = uri
        self._token = token
        self._timeout = timeout
        self._init_client()
        self._dims: dict[str, int] = {}

    def describe(self) -> str:
        return f"Milvus at {self._uri}"

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Failed to connect to Milvus at {self._uri} during {what}: {str(exc)[:300]} — is the server running? "
            "(VECTORIZE_WORKER_MILVUS__URI; `make up` starts a local one)"
        )

    def _open(self) -> Any:
        if not self._uri.startswith(("http://", "https://", "tcp://", "unix:")):
            Path(self._uri).parent.mkdir(parents=True, exist_ok=True)
        return MilvusClient(uri=self._uri, token=self._token or "", timeout=self._timeout)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)  # the client's own timeout covers only connecting
        try:
            return func(*args, **kwargs)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise StoreRejectedError(f"Milvus at {self._uri} refused {what}: {exc}") from None
            self._forget()
            raise self._unavailable(what, exc) from None
        except MilvusException as exc:
            text = str(exc).lower()
            if any(word in text for word in _UNAVAILABLE_WORDS):
                self._forget()
                raise self._unavailable(what, exc) from None
            raise StoreRejectedError(f"Milvus at {self._uri} refused {what}: {str(exc)[:400]}") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            self._forget()
            raise self._unavailable(what, exc) from None

    def ensure_collection(self, collection: str, dim: int, distance: Distance = "cosine") -> None:
        known = self._dims.get(collection)
        if known is None:
            client = self._connect()
            name = collection_name(collection)
            if self._call("collection lookup", client.has_collection, name):
                known = self._stored_dim(name) or dim
            else:
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
                schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
                schema.add_field(PAYLOAD_KEY, DataType.VARCHAR, max_length=MAX_PAYLOAD)
                index = client.prepare_index_params()
                index.add_index(field_name="vector", index_type="FLAT", metric_type=_METRICS[distance])
                self._call(
                    f"creating collection {name}", client.create_collection, name, schema=schema, index_params=index
                )
                known = dim
            self._dims[collection] = known
        if known != dim:
            raise StoreRejectedError(
                f"Milvus collection {collection_name(collection)!r} at {self._uri} holds {known}-dimensional vectors "
                f"but the model produces {dim}; send the task to another collection or use the model it was made with."
            )

    def _stored_dim(self, name: str) -> int | None:
        info = self._call("collection lookup", self._connect().describe_collection, name)
        for field in info.get("fields", []):
            if field.get("name") == "vector":
                return int(field.get("params", {}).get("dim", 0)) or None
        return None

    def _check_dim(self, collection: str, vectors: Sequence[Sequence[float]]) -> None:
        dim = self._dims.get(collection)
        if dim is None and self._call("collection lookup", self._connect().has_collection, collection_name(collection)):
            dim = self._dims.setdefault(collection, self._stored_dim(collection_name(collection)) or 0)
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
                    **{field_name(k): v for k, v in flatten(r.payload)},
                }
            )
        self._call(
            f"upsert into {collection_name(collection)}", self._connect().upsert, collection_name(collection), rows
        )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self._call("delete", self._connect().delete, collection_name(collection), ids=list(ids))

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        self._check_dim(collection, [vector])
        expr = " and ".join(f"{field_name(key)} == {_literal(value)}" for key, value in (filter or {}).items())
        res = self._call(
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
        fields = [PAYLOAD_KEY, "vector"] if with_vectors else [PAYLOAD_KEY]
        rows = self._call(
            "retrieve", self._connect().get, collection_name(collection), ids=list(ids), output_fields=fields
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

    def count(self, collection: str) -> int:
        client = self._connect()
        name = collection_name(collection)
        if not self._call("collection lookup", client.has_collection, name):
            return 0
        res = self._call("count", client.query, name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def health(self) -> None:
        self._call("health check", self._connect().list_collections)

    def close(self) -> None:
        self._forget()


def create(settings: Any) -> MilvusStore:
    """Entry point ``vectorize_worker.vector_dbs: milvus``."""
    cfg = settings.milvus
    uri = cfg.uri or str(Path(settings.data_dir) / "milvus.db")
    return MilvusStore(uri=uri, token=reveal(cfg.token), timeout=cfg.timeout)
