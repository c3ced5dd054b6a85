"""Resolve model names to loaded embedders: an LRU cache by count and memory, and the threads their calls run on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from core.errors import ModelMemoryError
from core.versioning import ModelIdentity
from models.base import Embedder, EmbedderInfo, format_bytes
from models.device import freeze_heap, is_out_of_memory, release_memory, set_call_threads
from models.fingerprint import identity_record, model_identity

log = logging.getLogger("worker.model_manager")
T = TypeVar("T")
Loader = Callable[[str], Embedder]
BUDGET_SETTING = "VECTORIZE_WORKER_MODELS_MEMORY_BUDGET (YAML models.memory_budget)"


@dataclass(frozen=True)
class _Loaded:
    """What is loaded, as of the last change: replaced whole under the lock, read without it.

    A load holds the manager's lock for as long as the loader runs (seconds to
    minutes for a download); the event loop asks what is loaded every couple of
    seconds (metrics, heartbeats, /state). Reading this snapshot, one attribute
    load, never waits for that lock.
    """

    models: Mapping[str, Embedder] = field(default_factory=dict)  # LRU order, least recent first
    infos: tuple[EmbedderInfo, ...] = ()
    memory: int = 0
    identities: Mapping[str, str] = field(default_factory=dict)  # name -> models.fingerprint.model_identity
    records: Mapping[str, ModelIdentity] = field(default_factory=dict)  # name -> its identity record


class ModelManager:
    """Keeps at most ``max_loaded`` models within ``memory_budget`` bytes; the least recently used goes first.

    All loading and inference run on the device threads, so the event loop
    never blocks on a model. There are ``parallel_calls`` of them (1 unless
    configured: ``models.parallel_calls``), each running its model calls
    with ``call_threads`` torch threads (None: torch's own setting): on a
    CPU two single-threaded calls at once keep both cores computing where one
    call on two threads kept them waiting, for each other at every operator
    and for the GIL the event loop holds (docs/performance.md). Loads
    and unloads take the manager's lock; a model unloaded while a call of
    another device thread still uses it is closed when that call ends. A
    model whose embedder does not declare ``concurrent_calls`` runs one call
    at a time, on ``call_threads × parallel_calls`` threads. The async methods
    may be called from the event loop; the ``*_sync`` ones block and are for
    those threads, scripts and tests. The state readers (:meth:`loaded`, :meth:`is_loaded`,
    :meth:`loaded_model`, :meth:`memory_used`) read a snapshot and never wait
    for the lock a load holds: the event loop calls them every couple of seconds.

    Memory: a model's size is what :meth:`Embedder.memory_bytes` reports once
    loaded (``size_hint`` estimates it before the first load, from the weight
    files). Loading evicts least recently used models until the new one fits;
    a model larger than the whole budget raises :class:`ModelMemoryError`.
    With ``idle_unload_seconds`` > 0 a model unused that long is unloaded
    (except those in ``keep_loaded``). A device out-of-memory error during a
    batch splits the batch in halves down to single inputs before it raises
    :class:`ModelMemoryError`. Loading raises whatever the loader raises
    (``ModelLoadError`` for a model that cannot be found). With
    ``freeze_after_load`` (the worker) each load ends with
    :func:`models.device.freeze_heap`. Each load also computes the model's
    identity (:func:`models.fingerprint.model_identity`: a hash of its name,
    weights, configuration and vector settings; a file hash once per load,
    remembered per file), read lock-free by :meth:`identity`, and its
    identity record (:class:`core.versioning.ModelIdentity`: the embedding
    cache keys vectors by it, every stored vector carries it, a collection is
    bound to one), read by :meth:`identity_record`.
    """

    def __init__(
        self,
        loader: Loader,
        *,
        max_loaded: int = 3,
        warmup: bool = True,
        memory_budget: int | None = None,
        budget_setting: str = BUDGET_SETTING,
        size_hint: Callable[[str], int | None] | None = None,
        idle_unload_seconds: float = 0,
        keep_loaded: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        freeze_after_load: bool = False,
        parallel_calls: int = 1,
        call_threads: int | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        if parallel_calls < 1 or (call_threads is not None and call_threads < 1):
            raise ValueError("parallel_calls and call_threads must be >= 1")
        self.parallel_calls = parallel_calls
        self.call_threads = call_threads
        self._loader = loader
        self.max_loaded = max_loaded
        self.memory_budget = memory_budget or None
        self.budget_setting = budget_setting
        self.idle_unload_seconds = idle_unload_seconds
        self.keep_loaded = frozenset(keep_loaded)
        self._warmup = warmup
        self._freeze_after_load = freeze_after_load
        self._identities: dict[str, str] = {}  # loaded models only
        self._records: dict[str, ModelIdentity] = {}  # loaded models only
        # the record of every model loaded in this process, kept after it is unloaded: the vectors a model made
        # before it was evicted are still written under its identity
        self._known: dict[str, ModelIdentity] = {}
        self._size_hint = size_hint
        self._clock = clock
        self._models: OrderedDict[str, Embedder] = OrderedDict()
        self._sizes: dict[str, int] = {}  # measured sizes, kept after unloading: the next load's estimate
        self._last_used: dict[str, float] = {}
        self._lock = threading.RLock()  # held by a whole load: never taken by the readers of `_snapshot`
        self._snapshot = _Loaded()
        self._in_use: dict[int, int] = {}  # id(embedder) -> calls running on it
        self._closing: dict[int, Embedder] = {}  # unloaded while in use: closed by the call that ends last
        self._serial: dict[int, threading.Lock] = {}  # id(embedder) -> the lock of one without concurrent_calls
        self._executor = ThreadPoolExecutor(
            max_workers=parallel_calls, thread_name_prefix="model-device", initializer=self._init_device_thread
        )
        # token counts for batching of a loaded model, so they need not wait behind model calls
        self._tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-tokenizer")
        self._stop = threading.Event()
        self.on_change: Callable[[list[EmbedderInfo]], None] | None = None
        if idle_unload_seconds > 0:
            interval = min(max(idle_unload_seconds / 4, 0.05), 30.0)
            threading.Thread(target=self._idle_loop, args=(interval,), name="model-idle", daemon=True).start()

    # -- blocking API (runs on the caller's thread) --------------------------------
    def get_sync(self, name: str) -> Embedder:
        """The model, loaded if needed. A caller on another thread than the device threads must not call it
        while those run calls: it may be unloaded under the caller (:meth:`embed_texts_sync` guards its use)."""
        return self._get(name, use=False)

    def _get(self, name: str, *, use: bool) -> Embedder:
        model, loaded = self._get_or_load(name, use=use)
        if loaded and self._freeze_after_load:
            # the model's objects out of every later collection's scan; outside the lock (the collection
            # takes ~0.5 s), so that a load queued behind this one is not held up by it
            freeze_heap()
        return model

    def holding(self, name: str) -> AbstractContextManager[Embedder]:
        """The model, loaded if needed, kept from closing until the block ends (an unload meanwhile closes it
        then): for work on a device thread that uses the model without calling it (its tokenizer)."""
        return self._using(name, serial=False)  # type: ignore[return-value] - loads, so never None

    @contextmanager
    def _using(self, name: str, *, load: bool = True, serial: bool = True) -> Iterator[Embedder | None]:
        """The model (loaded if needed; with ``load`` False None when it is not loaded), counted as in use until
        the block ends: an unload meanwhile closes it only then. With ``serial`` a model without
        ``concurrent_calls`` is used by one block at a time, with every thread of the device threads together."""
        if load:
            model: Embedder | None = self._get(name, use=True)
        else:
            with self._lock:
                model = self._models.get(name)
                if model is not None:
                    self._acquire(model)
        if model is None:
            yield None
            return
        try:
            if not serial or self.parallel_calls == 1 or getattr(model, "concurrent_calls", False):
                yield model
            else:
                with self._serial.setdefault(id(model), threading.Lock()):
                    set_call_threads(None if self.call_threads is None else self.call_threads * self.parallel_calls)
                    try:
                        yield model
                    finally:
                        set_call_threads(self.call_threads)
        finally:
            self._release(model)

    def _release(self, model: Embedder) -> None:
        with self._lock:
            left = self._in_use.get(id(model), 1) - 1
            if left > 0:
                self._in_use[id(model)] = left
                return
            self._in_use.pop(id(model), None)
            closing = self._closing.pop(id(model), None)
        if closing is not None:
            log.info("Closing model %s, unloaded while a call used it", closing.info.name)
            self._close(closing)

    def _acquire(self, model: Embedder) -> None:
        """Count one more use of ``model`` (call with the lock held); :meth:`_release` ends it."""
        self._in_use[id(model)] = self._in_use.get(id(model), 0) + 1

    def _close_or_defer(self, model: Embedder) -> None:
        """Close an unloaded model now, or (call with the lock held) when the calls still using it end."""
        if self._in_use.get(id(model)):
            self._closing[id(model)] = model
        else:
            self._close(model)

    def _close(self, model: Embedder) -> None:
        self._serial.pop(id(model), None)
        model.close()

    def _init_device_thread(self) -> None:
        set_call_threads(self.call_threads)

    def _get_or_load(self, name: str, *, use: bool = False) -> tuple[Embedder, bool]:
        """The model (loading it if needed, under the lock) and whether this call loaded it; with ``use``
        counted as in use (see :meth:`_using`)."""
        with self._lock:
            model, loaded = self._get_or_load_locked(name)
            if use:
                self._acquire(model)
            return model, loaded

    def _get_or_load_locked(self, name: str) -> tuple[Embedder, bool]:
        model = self._models.get(name)
        if model is not None:
            self._models.move_to_end(name)
            self._last_used[name] = self._clock()
            self._publish()
            return model, False
        known = self._sizes.get(name)
        if self.memory_budget and known and known > self.memory_budget:
            raise self._too_big(name, known)  # measured on an earlier try: do not load it again
        estimate = known or (self._size_hint(name) if self._size_hint else None)
        if self.memory_budget and estimate and estimate <= self.memory_budget:
            self._make_room(estimate, for_model=name)  # before loading, so the two never share memory
        model = self._load(name)
        size = model.memory_bytes()
        self._sizes[name] = size
        if self.memory_budget and size > self.memory_budget:
            model.close()
            raise self._too_big(name, size)
        if self.memory_budget:
            self._make_room(size, for_model=name)
        if self._warmup and "text" in model.info.modalities:
            model.embed_texts(["warm-up"], batch_size=1, normalize=None)
        identity = self._identity_of(name, model)
        record = identity_record(model, identity) if identity is not None else None
        # evicted only now: a name that fails to load (a typo in a task) never unloads a working model
        while len(self._models) >= self.max_loaded:
            self._evict_oldest(f"max_loaded_models={self.max_loaded}")
        self._models[name] = model
        if identity is not None and record is not None:
            self._identities[name] = identity
            self._records[name] = self._known[name] = record
        else:  # not an older load's record either: these weights may differ from those
            self._known.pop(name, None)
        self._last_used[name] = self._clock()
        log.info("Model %s holds %s; %d model(s) loaded", name, format_bytes(size), len(self._models))
        self._changed()
        return model, True

    def embed_texts_sync(
        self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        with self._using(name) as model:
            assert model is not None
            vectors = self._split_on_oom(model, model.embed_texts, list(texts), batch_size, normalize)
            self._last_used[name] = self._clock()
            return vectors, model.info

    def embed_loaded_sync(
        self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo] | None:
        """Like :meth:`embed_texts_sync` but never loads: None when ``name`` is not loaded."""
        with self._using(name, load=False) as model:
            if model is None:
                return None
            return model.embed_texts(list(texts), batch_size=batch_size, normalize=normalize), model.info

    def token_lengths_sync(self, name: str, texts: Sequence[str]) -> list[int] | None:
        """Tokens per text for ``name``'s model (see :meth:`Embedder.token_lengths`); loads the model."""
        with self._using(name) as model:
            assert model is not None
            return model.token_lengths(texts)

    def embed_images_sync(
        self, name: str, images: Sequence[Any], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        """Embed decoded PIL images; ``UnsupportedTaskError`` when the model has no image tower."""
        with self._using(name) as model:
            assert model is not None
            vectors = self._split_on_oom(model, model.embed_images, list(images), batch_size, normalize)
            self._last_used[name] = self._clock()
            return vectors, model.info

    # -- async API (work runs on the device thread) ---------------------------------
    async def run(self, func: Callable[[], T]) -> T:
        """Run ``func`` on a device thread and await its result (with ``parallel_calls`` > 1 other device threads
        may load, unload and run models meanwhile: use the ``*_sync`` methods, which guard the model's use)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def token_lengths(self, name: str, texts: Sequence[str]) -> list[int] | None:
        """Tokens per text (:meth:`Embedder.token_lengths`) without waiting behind the model's calls.

        A loaded model's tokenizer runs on the tokenizer thread; a model not
        loaded yet goes through the device thread, which loads it first
        (raises like :meth:`get` when it cannot be).
        """
        model = self._snapshot.models.get(name)  # lock-free: never waits on the event loop for a load
        if model is None:
            return await self.run(lambda: self.token_lengths_sync(name, texts))
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_executor, model.token_lengths, texts)

    async def get(self, name: str) -> Embedder:
        return await self.run(lambda: self.get_sync(name))

    async def identify(self, name: str) -> tuple[str | None, EmbedderInfo]:
        """``name``'s identity (None when not computed) and info; loads the model on the device thread if needed.

        Raises what :meth:`get` raises for a model that cannot load.
        """
        model = self._snapshot.models.get(name)
        if model is None:
            model = await self.get(name)
        return self._snapshot.identities.get(name), model.info

    async def embed_texts(
        self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        return await self.run(lambda: self.embed_texts_sync(name, texts, batch_size=batch_size, normalize=normalize))

    async def embed_images(
        self, name: str, images: Sequence[Any], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        return await self.run(lambda: self.embed_images_sync(name, images, batch_size=batch_size, normalize=normalize))

    # -- state (lock-free: safe on the event loop while a load runs) -----------------
    def loaded(self) -> list[EmbedderInfo]:
        """The loaded models, least recently used first; never waits for a load in progress."""
        return list(self._snapshot.infos)

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` is loaded now; never waits for a load in progress (and never loads)."""
        return name in self._snapshot.models

    def loaded_model(self, name: str) -> Embedder | None:
        """The loaded embedder of ``name``, or None; never loads it and never waits for a load.

        Call its methods on the device thread (:meth:`run`): embedders are not thread-safe.
        """
        return self._snapshot.models.get(name)

    def memory_used(self) -> int:
        """Bytes held by the loaded models, as measured when each was loaded."""
        return self._snapshot.memory

    def identity(self, name: str) -> str | None:
        """The identity hash of ``name``'s loaded model (see the class doc); None when it is not loaded or its
        identity could not be computed. Lock-free; exact on the device thread, where models load and unload."""
        return self._snapshot.identities.get(name)

    def identity_record(self, name: str) -> ModelIdentity | None:
        """The identity record of ``name``'s model: the loaded one's, else the one last loaded in this process
        (the vectors it made before it was unloaded are still written under it); None when ``name`` was never
        loaded or its identity could not be computed. Lock-free."""
        record = self._snapshot.records.get(name)
        return record if record is not None else self._known.get(name)

    def unload(self, name: str) -> bool:
        with self._lock:
            model = self._models.pop(name, None)
            if model is None:
                return False
            self._identities.pop(name, None)
            self._records.pop(name, None)
            self._last_used.pop(name, None)
            self._publish()  # out of the readers' view before it closes
            self._close_or_defer(model)
            self._changed()
            return True

    def unload_idle(self) -> list[str]:
        """Unload the models unused for ``idle_unload_seconds`` (not those in ``keep_loaded``)."""
        if self.idle_unload_seconds <= 0:
            return []
        now = self._clock()
        with self._lock:
            idle = [
                name
                for name in self._models
                if name not in self.keep_loaded and now - self._last_used.get(name, now) >= self.idle_unload_seconds
            ]
            for name in idle:
                log.info(
                    "Unloading model %s (unused for %.0fs; models.idle_unload_seconds)",
                    name,
                    now - self._last_used[name],
                )
                self.unload(name)
        return idle

    def close(self) -> None:
        """Unload every model once the call running on the device thread (if any) is done."""
        self._stop.set()

        def unload_all() -> None:
            with self._lock:
                for name in list(self._models):
                    self.unload(name)

        self._executor.submit(unload_all)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._tokenizer_executor.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------
    def _load(self, name: str) -> Embedder:
        try:
            return self._loader(name)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(exc) or not self._models:
                raise
        # the device is full: drop every other model and try once more
        while self._models:
            self._evict_oldest("the device ran out of memory loading another model")
        release_memory(_device_of(self._loader))
        return self._loader(name)

    def _too_big(self, name: str, size: int) -> Exception:

        return ModelMemoryError(
            f"Failed to load model {name}: it needs {format_bytes(size)} (weights and buffers) but the model "
            f"memory budget is {format_bytes(self.memory_budget)} ({self.budget_setting}); raise the budget "
            "or use a smaller model."
        )

    def _make_room(self, size: int, *, for_model: str) -> None:
        assert self.memory_budget is not None
        while self._models and self._memory_in_use() + size > self.memory_budget:
            self._evict_oldest(
                f"{for_model} needs {format_bytes(size)}, budget {format_bytes(self.memory_budget)}, "
                f"in use {format_bytes(self._memory_in_use())}"
            )

    def _memory_in_use(self) -> int:
        """Bytes held by the models in the cache now (call with the lock held)."""
        return sum(self._sizes.get(name, 0) for name in self._models)

    def _evict_oldest(self, reason: str) -> None:
        name, model = self._models.popitem(last=False)
        self._identities.pop(name, None)
        self._records.pop(name, None)
        self._last_used.pop(name, None)
        self._publish()  # out of the readers' view before it closes
        log.info("Unloading model %s (least recently used; %s)", name, reason)
        self._close_or_defer(model)
        self._changed()

    def _identity_of(self, name: str, model: Embedder) -> str | None:
        """The model's identity, or None when it cannot be computed; blocks (reads files)."""
        started = time.monotonic()
        try:
            identity = model_identity(model)
        except Exception as exc:  # noqa: BLE001 - without an identity the model still works, uncached
            log.warning(
                "Model %s: computing its identity failed (%s: %s); its vectors are not cached, carry no "
                "model_revision, and the collections they go to are not checked against their bound model. "
                "Check that its files at %s are readable.",
                name,
                type(exc).__name__,
                str(exc)[:200],
                model.info.source or "(no source)",
            )
            return None
        log.info("Model %s identity %s (%.2fs)", name, identity[:16], time.monotonic() - started)
        return identity

    def _split_on_oom(
        self,
        model: Embedder,
        embed: Callable[..., np.ndarray],
        items: list[Any],
        batch_size: int,
        normalize: bool | None,
    ) -> np.ndarray:
        try:
            return embed(items, batch_size=batch_size, normalize=normalize)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        # outside the except block, so the failed batch's tensors (held by the traceback) can be freed
        release_memory(model.info.device)
        info = model.info
        if len(items) <= 1:
            raise ModelMemoryError(
                f"Model {info.name} ran out of memory on {info.device} embedding a single input ({message}); "
                "send shorter inputs, use a smaller model, free the device (VECTORIZE_WORKER_MAX_LOADED_MODELS, "
                "VECTORIZE_WORKER_GPU_MEMORY_LIMIT) or run on the CPU (VECTORIZE_WORKER_DEVICE=cpu)."
            )
        half = len(items) // 2
        log.warning(
            "Model %s ran out of memory on %s with %d inputs; retrying as 2 x ~%d",
            info.name,
            info.device,
            len(items),
            half,
        )
        size = max(1, min(batch_size, half))
        first = self._split_on_oom(model, embed, items[:half], size, normalize)
        second = self._split_on_oom(model, embed, items[half:], size, normalize)
        return np.concatenate([first, second])

    def _idle_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._executor.submit(self.unload_idle)
            except RuntimeError:  # the executor is shut down
                return

    def _publish(self) -> None:
        """Replace the readers' snapshot (call with the lock held, after every change to the cache)."""
        models = dict(self._models)
        self._snapshot = _Loaded(
            models=models,
            infos=tuple(m.info for m in models.values()),
            memory=self._memory_in_use(),
            identities=dict(self._identities),
            records=dict(self._records),
        )

    def _changed(self) -> None:
        self._publish()
        if self.on_change is not None:
            self.on_change(self.loaded())


def _device_of(loader: Loader) -> str:
    return str(getattr(loader, "device", "cpu"))
