"""The embedding cache: a vector per (model identity, normalisation, exact input), so unchanged input skips the model.

Two layers: a small in-process LRU bounded by bytes (:class:`LocalLRU`), then
a store every worker shares (the :class:`RemoteVectors` port; Redis in
production, ops/embedding_cache.py). The text lane looks every text of a
batch up before it queues anything for the model (engine/pipeline.py
``enqueue``), embeds only the misses and writes their vectors back
(``settle``); the image lane does the same per image.

The key is ``<prefix><sha256 hex>`` of the model's identity
(models/fingerprint.py: name, weights and configuration by content, pooling,
length limit, default normalisation), the task's ``normalize`` (true, false
or unset: the model's default, which the identity covers), the kind of
input and the input itself (a text's UTF-8 bytes; an image's decoded RGB
pixels as the model receives them). The value is the vector as little-endian
float32 bytes; a value of the wrong length is a miss.

Never a failed task because of the cache: every error or timeout of the
shared store is one warning, then the store is left alone for
``retry_after`` seconds (the local layer and the model go on), then tried
again. Writes are fire-and-forget, at most ``max_writes`` batches in flight
(more are dropped: the next miss writes them again).

What it bounds: the local layer by ``cache.local_bytes``; what the worker
writes by ``cache.max_text_bytes`` (longer texts are neither looked up nor
written: they rarely repeat and cost hashing) and the TTL
(``cache.ttl_seconds``); Redis' own memory by the server's ``maxmemory``
with ``allkeys-lru`` (docs/embedding-cache.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ops.metrics import Metrics

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("worker.embedding_cache")
#: bump to make every key miss (a change in how keys or values are written)
KEY_VERSION = b"1"
#: bytes an LRU entry costs beyond its key and vector: the dict slot and two Python objects' headers
ENTRY_OVERHEAD = 120
VECTOR_DTYPE = np.dtype("<f4")
_NORMALIZE = {None: b"d", True: b"1", False: b"0"}


class RemoteVectors(Protocol):
    """The shared layer of the cache (Redis). Both calls may raise anything or hang; the cache bounds them
    with its own timeout and treats every failure as an outage.

    ``name`` says what and where it is for log lines (no secrets).
    """

    name: str

    async def get_many(self, keys: Sequence[str]) -> Sequence[bytes | None]:
        """The values of ``keys``, None for each absent one, in order."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int) -> None:
        """Write every (key, value), each living ``ttl_seconds``."""
        ...

    async def close(self) -> None: ...


class LocalLRU:
    """Key -> bytes, the least recently used dropped while the entries hold more than ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        cost = self.cost(key, value)
        if cost > self.max_bytes:
            return  # would evict everything else and still not fit
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self.cost(key, old)
        self._entries[key] = value
        self.bytes += cost
        while self.bytes > self.max_bytes:
            gone, value = self._entries.popitem(last=False)
            self.bytes -= self.cost(gone, value)


class EmbeddingCache:
    """Looks vectors up (local, then one batched read of the shared store) and writes new ones back.

    Runs on the event loop; nothing in it blocks (hashing a text is microseconds).
    ``hits``/``misses`` count every input the lanes asked about: a hit by the layer
    that had it (``local``, ``redis``, or ``inflight`` for a twin already queued for
    the model: engine/model_queue.py), a miss when the model embedded it.
    """

    def __init__(
        self,
        remote: RemoteVectors | None,
        *,
        prefix: str = "vw:emb:",
        ttl_seconds: int = 7 * 24 * 3600,
        local_bytes: int = 32 * 1024 * 1024,
        max_text_bytes: int = 16 * 1024,
        metrics: Metrics | None = None,
        timeout: float = 0.5,
        retry_after: float = 30.0,
        max_writes: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remote = remote
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.local = LocalLRU(local_bytes)
        self.max_text_bytes = max_text_bytes
        self.metrics = metrics or Metrics()
        self.timeout = timeout
        self.retry_after = retry_after
        self.max_writes = max_writes
        self._clock = clock
        self._down_until = 0.0
        self._warned = False
        self._writes: set[asyncio.Future[None]] = set()
        self.remote_up: bool | None = None  # None until the shared store was asked
        self.hits = 0
        self.misses = 0
        self.dropped_writes = 0

    @classmethod
    def from_settings(cls, settings: Settings, remote: RemoteVectors | None, metrics: Metrics | None) -> EmbeddingCache:
        return cls(
            remote,
            prefix=settings.cache_key_prefix,
            ttl_seconds=settings.cache_ttl_seconds,
            local_bytes=settings.cache_local_bytes,
            max_text_bytes=settings.cache_max_text_bytes,
            retry_after=settings.cache_retry_seconds,
            metrics=metrics,
        )

    # -- keys ------------------------------------------------------------------------
    def key(self, identity: str, normalize: bool | None, kind: bytes, payload: bytes) -> str:
        digest = hashlib.sha256(KEY_VERSION)
        for part in (identity.encode(), _NORMALIZE[normalize], kind):
            digest.update(b"\0")
            digest.update(part)
        digest.update(b"\0")
        digest.update(payload)
        return self.prefix + digest.hexdigest()

    def text_keys(self, identity: str, normalize: bool | None, texts: Sequence[str]) -> list[str | None]:
        """A key per text; None for a text over ``max_text_bytes`` (not cached)."""
        keys: list[str | None] = []
        for text in texts:
            data = text.encode("utf-8", "surrogatepass")
            keys.append(self.key(identity, normalize, b"text", data) if len(data) <= self.max_text_bytes else None)
        return keys

    # -- reads -----------------------------------------------------------------------
    async def lookup(self, keys: Sequence[str | None], dim: int) -> list[np.ndarray | None]:
        """The cached vector of each key (None: not cached, or a None key); never raises for the shared store."""
        found: list[np.ndarray | None] = [None] * len(keys)
        size = dim * VECTOR_DTYPE.itemsize
        missing: list[int] = []
        for index, key in enumerate(keys):
            if key is None:
                continue
            raw = self.local.get(key)
            if raw is not None and len(raw) == size:
                found[index] = np.frombuffer(raw, dtype=VECTOR_DTYPE)
            else:
                missing.append(index)
        local_hits = sum(1 for vector in found if vector is not None)
        remote_hits = 0
        if missing and self._remote_available():
            unique = list(dict.fromkeys(keys[i] for i in missing if keys[i] is not None))
            values = await self._get(unique)
            if values is not None:
                by_key = dict(zip(unique, values, strict=True))
                for index in missing:
                    key = keys[index]
                    raw = by_key.get(key) if key is not None else None
                    if raw is not None and len(raw) == size:
                        found[index] = np.frombuffer(raw, dtype=VECTOR_DTYPE)
                        self.local.put(key, bytes(raw))  # type: ignore[arg-type] - key is not None here
                        remote_hits += 1
        self._count("local", local_hits)
        self._count("redis", remote_hits)
        return found

    async def lookup_texts(
        self, identity: str, normalize: bool | None, dim: int, groups: Sequence[Sequence[str]]
    ) -> list[tuple[list[str | None], dict[int, np.ndarray]]]:
        """For each group of texts (a task's), its cache keys and the vectors found (index -> vector), in one
        lookup for all groups."""
        keys = self.text_keys(identity, normalize, [text for texts in groups for text in texts])
        found = await self.lookup(keys, dim)
        out: list[tuple[list[str | None], dict[int, np.ndarray]]] = []
        offset = 0
        for texts in groups:
            span = range(offset, offset + len(texts))
            hits = {i - offset: vector for i in span if (vector := found[i]) is not None}
            out.append(([keys[i] for i in span], hits))
            offset += len(texts)
        return out

    def count(self, *, inflight: int = 0, misses: int = 0) -> None:
        """Count what the lanes decided after :meth:`lookup`: twins already queued (hits), texts for the model."""
        self._count("inflight", inflight)
        if misses:
            self.misses += misses
            self.metrics.cache_misses.inc(misses)

    def _count(self, layer: str, hits: int) -> None:
        if hits:
            self.hits += hits
            self.metrics.cache_hits.labels(layer).inc(hits)

    @property
    def hit_ratio(self) -> float | None:
        """Hits / inputs asked about since start; None before the first."""
        total = self.hits + self.misses
        return self.hits / total if total else None

    async def _get(self, keys: list[str]) -> Sequence[bytes | None] | None:
        assert self.remote is not None
        try:
            values = await asyncio.wait_for(self.remote.get_many(keys), self.timeout)
            if len(values) != len(keys):
                raise ValueError(f"asked for {len(keys)} keys, got {len(values)} values")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, the cache only goes off for a while
            self._outage(exc)
            return None
        self._up()
        return values

    # -- writes ----------------------------------------------------------------------
    def store(self, keys: Sequence[str | None], vectors: np.ndarray) -> None:
        """Keep the vectors of the non-None keys locally and write them to the shared store in the background."""
        items: list[tuple[str, bytes]] = []
        for key, vector in zip(keys, vectors, strict=True):
            if key is None:
                continue
            raw = np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()
            self.local.put(key, raw)
            items.append((key, raw))
        if not items or not self._remote_available():
            return
        if len(self._writes) >= self.max_writes:  # the store is slow: keep the worker's memory, lose some entries
            self.dropped_writes += len(items)
            return
        write = asyncio.ensure_future(self._set(items))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _set(self, items: list[tuple[str, bytes]]) -> None:
        assert self.remote is not None
        try:
            await asyncio.wait_for(self.remote.set_many(items, self.ttl_seconds), self.timeout * 4)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lost write costs one model call later, never a task
            self._outage(exc)
            return
        self._up()

    # -- the shared store's health -----------------------------------------------------
    def _remote_available(self) -> bool:
        return self.remote is not None and self._clock() >= self._down_until

    def _outage(self, exc: BaseException) -> None:
        self._down_until = self._clock() + self.retry_after
        self.remote_up = False
        if not self._warned:
            self._warned = True
            timed_out = isinstance(exc, TimeoutError)
            what = str(exc) or (f"no answer within {self.timeout:g}s" if timed_out else type(exc).__name__)
            log.warning(
                "Embedding cache: %s failed (%s: %s); tasks go on without it (the model embeds what the local "
                "cache lacks), and it is tried again every %.0fs. Check that Redis answers (VECTORIZE_WORKER_REDIS_URL).",
                self.remote.name if self.remote is not None else "the shared store",
                type(exc).__name__,
                what[:300],
                self.retry_after,
            )

    def _up(self) -> None:
        if self._warned:
            self._warned = False
            log.info("Embedding cache: %s answers again", self.remote.name if self.remote is not None else "")
        self.remote_up = True

    async def close(self, timeout: float = 2.0) -> None:
        """Let the writes in flight finish (within ``timeout``), then close the shared store's client."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout)
        if self.remote is not None:
            try:
                await self.remote.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                log.debug("Closing the embedding cache's store failed", exc_info=True)
