"""Fakes at the ports (Embedder, BaseVectorDB, SendPort) for unit tests only."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import StoreRejectedError, StoreUnavailableError
from core.versioning import ModelIdentity, check_binding
from models.base import Embedder, EmbedderInfo, l2_normalize
from sinks.base import SCAN_PAGE, AliasKind, BaseVectorDB, StoredPoint, VectorRecord, scan_page


class FakeEmbedder(Embedder):
    """Vectors derived from a hash of the text: deterministic, distinct per text."""

    def __init__(self, name: str = "fake", dim: int = 8, max_tokens: int = 512) -> None:
        self._info = EmbedderInfo(name=name, family="fake", dim=dim, device="cpu", max_tokens=max_tokens)
        self.calls: list[list[str]] = []
        self.image_calls: list[int] = []
        self.closed = False

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        assert not self.closed, "embedder used after close()"
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            digest = hashlib.sha256(f"{self._info.name}:{text}".encode()).digest()
            rows.append(np.frombuffer(digest[: self._info.dim * 4], dtype=np.uint32).astype(np.float32) / 2**32 + 0.1)
        vectors = np.stack(rows).astype(np.float32)
        return l2_normalize(vectors) if normalize else vectors

    def embed_images(self, images: Sequence[Any], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        """Vectors from a hash of each image's RGB pixels (``images`` are PIL images)."""
        assert not self.closed, "embedder used after close()"
        self.image_calls.append(len(images))
        rows = []
        for image in images:
            assert image.mode == "RGB", f"expected an RGB image, got {image.mode}"
            digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).digest()
            rows.append(np.frombuffer(digest[: self._info.dim * 4], dtype=np.uint32).astype(np.float32) / 2**32 + 0.1)
        vectors = np.stack(rows).astype(np.float32)
        return l2_normalize(vectors) if normalize else vectors

    def text_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer(self._info.max_tokens)

    def close(self) -> None:
        self.closed = True


class FakeTokenizer:
    """Whitespace-separated words are tokens (the TextTokenizer protocol of tasks/chunking.py)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]

    def count(self, text: str) -> int:
        return len(self.offsets(text))


class FakeStore(BaseVectorDB):
    """In-memory store; ``fail_next`` makes the next calls raise (fault injection). A collection is bound to the
    first model identity it is ensured with (``bindings``), like the real adapters.

    Aliases (``aliases``: alias -> collection; ``pointed``: alias -> the identity given to :meth:`point`) behave
    as a pointer store's (Chroma, Milvus) by default: only :meth:`resolve` reads them, and an alias may have a
    collection's name. ``FakeStore(alias_kind="native")`` behaves as Weaviate and Qdrant: every operation given
    an alias works on its target, and an alias cannot take a collection's name. :meth:`scan` pages in id order
    (the cursor: the last id read)."""

    name = "fake"

    def __init__(self, alias_kind: AliasKind = "pointer") -> None:
        self.alias_kind = alias_kind
        self.collections: dict[str, dict[str, StoredPoint]] = {}
        self.dims: dict[str, int] = {}
        self.bindings: dict[str, ModelIdentity] = {}
        self.aliases: dict[str, str] = {}
        self.pointed: dict[str, ModelIdentity | None] = {}
        self.fail_next: list[Exception] = []
        self.upserts = 0
        self.lookups = 0
        self.upsert_sizes: list[int] = []
        self.scans = 0

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _target(self, name: str) -> str:
        """The collection ``name`` means: an alias's target where aliases are native, else ``name`` itself."""
        if self.alias_kind == "native" and name not in self.collections:
            return self.aliases.get(name, name)
        return name

    def ensure_collection(
        self, collection: str, dim: int, distance: str = "cosine", identity: ModelIdentity | None = None
    ) -> None:
        self._maybe_fail()
        collection = self._target(collection)
        if identity is not None:
            check_binding(self.bindings.get(collection), identity, collection=collection, store="FakeStore")
        known = self.dims.setdefault(collection, dim)
        self.collections.setdefault(collection, {})
        if identity is not None and known == dim:
            self.bindings.setdefault(collection, identity)
        if known != dim:
            raise StoreRejectedError(f"collection {collection} has dimension {known}, not {dim}")

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        self._maybe_fail()
        collection = self._target(collection)
        if len({r.id for r in records}) != len(records):  # as Chroma and Milvus do
            raise StoreRejectedError("duplicate ids in one upsert")
        if any(r.payload.get("text") == "poison" for r in records):
            raise StoreRejectedError("payload refused by this database")
        self.upserts += 1
        self.upsert_sizes.append(len(records))
        for r in records:
            self.collections[collection][r.id] = StoredPoint(
                r.id, json.loads(json.dumps(dict(r.payload))), list(r.vector)
            )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        collection = self._target(collection)
        for i in ids:
            self.collections.get(collection, {}).pop(i, None)

    def task_records(self, collection: str, task_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        self._maybe_fail()
        self.lookups += 1
        collection = self._target(collection)
        found: dict[str, dict[str, str | None]] = {}
        for point in self.collections.get(collection, {}).values():
            if point.payload.get("task_id") in task_ids:
                found.setdefault(point.payload["task_id"], {})[point.id] = point.payload.get("content_digest")
        return found

    def search(
        self, collection: str, vector: Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[StoredPoint]:
        return []

    def bound_identity(self, collection: str) -> ModelIdentity | None:
        return self.bindings.get(self._target(collection))

    def retrieve(self, collection: str, ids: Sequence[str], *, with_vectors: bool = True) -> list[StoredPoint]:
        points = self.collections.get(self._target(collection), {})
        return [points[i] for i in ids if i in points]

    def count(self, collection: str) -> int:
        return len(self.collections.get(self._target(collection), {}))

    # -- aliases, dropping, reading back, as the real adapters ------------------------------------------------
    def resolve(self, alias: str) -> str | None:
        self._maybe_fail()
        return self.aliases.get(alias)

    def has_collection(self, name: str) -> bool:
        self._maybe_fail()
        return name in self.collections

    def point(self, alias: str, physical: str, *, identity: ModelIdentity | None = None) -> None:
        self._maybe_fail()
        if physical not in self.collections:
            raise StoreRejectedError(f"FakeStore: alias {alias!r} cannot point at {physical!r}: it does not exist")
        if self.alias_kind == "native" and (alias in self.collections or alias == physical):
            raise StoreRejectedError(f"FakeStore: alias {alias!r} cannot take the name of a collection")
        self.aliases[alias] = physical
        self.pointed[alias] = identity

    def unpoint(self, alias: str) -> None:
        self._maybe_fail()
        self.aliases.pop(alias, None)
        self.pointed.pop(alias, None)

    def drop(self, physical: str) -> None:
        self._maybe_fail()
        if self.alias_kind == "native" and physical in self.aliases and physical not in self.collections:
            raise StoreRejectedError(f"FakeStore: {physical!r} is an alias, not a collection")
        pointing = sorted(a for a, target in self.aliases.items() if target == physical)
        if pointing:
            raise StoreRejectedError(f"FakeStore: collection {physical!r} cannot be dropped: {pointing} point at it")
        for table in (self.collections, self.dims, self.bindings):
            table.pop(physical, None)

    def scan(
        self, physical: str, cursor: str | None = None, limit: int = SCAN_PAGE
    ) -> tuple[list[StoredPoint], str | None]:
        self._maybe_fail()
        self.scans += 1
        page = scan_page(limit)
        points = self.collections.get(self._target(physical), {})
        ids = sorted(i for i in points if cursor is None or i > cursor)[:page]
        found = [StoredPoint(i, json.loads(json.dumps(points[i].payload))) for i in ids]
        return found, ids[-1] if len(ids) == page else None

    def health(self) -> None:
        self._maybe_fail()


def unavailable() -> StoreUnavailableError:
    return StoreUnavailableError("Failed to connect to FakeStore at memory: connection refused")


class FakeKafka:
    """SendPort that records (topic, key, json value); ``fail_next`` fails deliveries; a record over
    ``max_bytes`` is refused for good, as a broker refuses one over its ``max.message.bytes``."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.sent: list[tuple[str, str | None, dict[str, Any]]] = []
        self.fail_next = 0
        self.max_bytes = max_bytes
        self.refused = 0
        #: set: ``send`` waits for it before taking a record ``gated(topic, value)`` picks (a producer whose buffer
        #: is full just then)
        self.gate: asyncio.Event | None = None
        self.gated: Callable[[str, dict[str, Any]], bool] = lambda topic, value: True
        #: true: deliveries stay unconfirmed until :meth:`release` (a slow broker)
        self.hold = False
        self._held: list[asyncio.Future[None]] = []

    def release(self) -> None:
        """Confirm every held delivery; later ones are confirmed at once."""
        self.hold = False
        for fut in self._held:
            if not fut.done():
                fut.set_result(None)
        self._held.clear()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        if self.gate is not None and self.gated(topic, json.loads(value)):
            await self.gate.wait()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.sent.append((topic, key.decode() if key else None, json.loads(value)))
            self._held.append(fut)
        elif self.fail_next:
            self.fail_next -= 1
            fut.set_exception(ConnectionError("broker down"))  # what a lost broker raises
        elif self.max_bytes is not None and len(value) > self.max_bytes:
            from aiokafka.errors import MessageSizeTooLargeError

            self.refused += 1
            fut.set_exception(MessageSizeTooLargeError(f"{len(value)} bytes"))
        else:
            self.sent.append((topic, key.decode() if key else None, json.loads(value)))
            fut.set_result(None)
        return fut

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [value for t, _, value in self.sent if t == topic]
