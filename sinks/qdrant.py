"""Qdrant adapter: a server by URL, or qdrant-client's embedded local mode by path.

Local mode keeps the data in a folder, locks it for one process and searches
by brute force: right for one worker and for development; several workers
need a Qdrant server (``VECTORIZE_WORKER_QDRANT__URL``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.errors import ConfigError, StoreRejectedError, StoreUnavailableError
from app.secrets import reveal
from sinks.base import BaseVectorDB, Distance, StoredPoint, VectorRecord

try:
    from qdrant_client import QdrantClient, models
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"The Qdrant store needs qdrant-client: pip install qdrant-client ({exc})") from exc

_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}


class QdrantStore(BaseVectorDB):
    name = "qdrant"

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not url and not path:
            raise ConfigError("The Qdrant store needs a URL (VECTORIZE_WORKER_QDRANT__URL) or a local path.")
        self._where = url or f"local path {path}"
        self._dims: dict[str, int] = {}
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
                # the collection went away under us: forget it so the next attempt recreates it
                self._dims.clear()
                raise StoreUnavailableError(f"Qdrant at {self._where}: not found during {what}; will retry") from None
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

    def ensure_collection(self, collection: str, dim: int, distance: Distance = "cosine") -> None:
        known = self._dims.get(collection)
        if known is None:
            if self._call("collection lookup", self._client.collection_exists, collection):
                info = self._call("collection lookup", self._client.get_collection, collection)
                known = int(info.config.params.vectors.size)
            else:
                self._call(
                    f"creating collection {collection}",
                    self._client.create_collection,
                    collection_name=collection,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance(_DISTANCES[distance])),
                )
                known = dim
            self._dims[collection] = known
        if known != dim:
            raise StoreRejectedError(
                f"Qdrant collection {collection!r} at {self._where} holds {known}-dimensional vectors but the model "
                f"produces {dim}; send the task to another collection or use the model the collection was made with."
            )

    def _check_dim(self, collection: str, vectors: Sequence[Sequence[float]]) -> None:
        dim = self._dims.get(collection)
        if dim is None:
            info = self._call("collection lookup", self._client.get_collection, collection)
            dim = self._dims.setdefault(collection, int(info.config.params.vectors.size))
        for vector in vectors:
            if len(vector) != dim:
                raise StoreRejectedError(
                    f"Vector of dimension {len(vector)} does not fit Qdrant collection {collection!r} "
                    f"(dimension {dim}) at {self._where}; use a matching model or another collection."
                )

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        self._check_dim(collection, [r.vector for r in records])
        points = [
            models.PointStruct(id=r.id, vector=[float(x) for x in r.vector], payload=dict(r.payload)) for r in records
        ]
        self._call(
            f"upsert into {collection}", self._client.upsert, collection_name=collection, points=points, wait=True
        )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self._call(
                f"delete from {collection}",
                self._client.delete,
                collection_name=collection,
                points_selector=models.PointIdsList(points=list(ids)),
                wait=True,
            )

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        self._check_dim(collection, [vector])
        query_filter = None
        if filter:
            query_filter = models.Filter(
                must=[
                    models.FieldCondition(key=key, match=models.MatchValue(value=value))
                    for key, value in filter.items()
                ]
            )
        response = self._call(
            f"search in {collection}",
            self._client.query_points,
            collection_name=collection,
            query=[float(x) for x in vector],
            limit=k,
            query_filter=query_filter,
            with_payload=True,
        )
        return [StoredPoint(id=str(p.id), payload=dict(p.payload or {}), score=p.score) for p in response.points]

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
            StoredPoint(id=str(p.id), payload=dict(p.payload or {}), vector=list(p.vector) if with_vectors else None)
            for p in points
        ]

    def count(self, collection: str) -> int:
        if not self._call("collection lookup", self._client.collection_exists, collection):
            return 0
        return int(
            self._call(f"count in {collection}", self._client.count, collection_name=collection, exact=True).count
        )

    def health(self) -> None:
        self._call("health check", self._client.get_collections)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing must never raise
            pass


def create(settings: Any) -> QdrantStore:
    """Entry point ``vectorize_worker.vector_dbs: qdrant``."""
    cfg = settings.qdrant
    if cfg.url:
        return QdrantStore(url=cfg.url, api_key=reveal(cfg.api_key), timeout=cfg.timeout)
    return QdrantStore(path=settings.qdrant_path, timeout=cfg.timeout)
