"""The :class:`BaseVectorDB` port every vector database adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Distance = Literal["cosine", "dot", "euclid"]


@dataclass(frozen=True)
class VectorRecord:
    id: str  # a UUID string (see app.ids.vector_id)
    vector: Sequence[float]
    payload: Mapping[str, Any] = field(default_factory=dict)


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
    :class:`~app.errors.StoreUnavailableError` (retryable); data the database
    refuses, such as a vector of the wrong dimension, raises
    :class:`~app.errors.StoreRejectedError` (permanent). Both messages name the
    database, where it is, and what to do.
    """

    #: registry name, e.g. "qdrant"
    name: str = "base"

    @abstractmethod
    def ensure_collection(self, collection: str, dim: int, distance: Distance = "cosine") -> None:
        """Create the collection if missing; reject an existing one of another dimension."""

    @abstractmethod
    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        """Insert or overwrite records by id (idempotent)."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete records by id; missing ids are ignored."""

    @abstractmethod
    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        """The ``k`` nearest records, nearest first; ``filter`` is payload equality (keys may be dotted)."""

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        """Records by id (missing ids are left out)."""

    @abstractmethod
    def count(self, collection: str) -> int:
        """Number of records in the collection (0 when it does not exist)."""

    @abstractmethod
    def health(self) -> None:
        """Return when the database answers; raise StoreUnavailableError otherwise."""

    def describe(self) -> str:
        """Where this database is, for messages and result records."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or file locks."""
