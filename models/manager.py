"""Resolve model names to loaded embedders: an LRU cache with one thread per device."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from models.base import Embedder, EmbedderInfo

log = logging.getLogger("worker.model_manager")
T = TypeVar("T")
Loader = Callable[[str], Embedder]


class ModelManager:
    """Keeps at most ``max_loaded`` models; the least recently used is unloaded first.

    All loading and inference run on one dedicated thread (torch itself uses
    the cores), so the event loop never blocks on a model and two batches
    never compete for the same device. The async methods may be called from
    the event loop; the ``*_sync`` ones block and are for scripts and tests.
    Loading raises whatever the loader raises (``ModelLoadError`` for a model
    that cannot be found).
    """

    def __init__(self, loader: Loader, *, max_loaded: int = 3, warmup: bool = True) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self._loader = loader
        self.max_loaded = max_loaded
        self._warmup = warmup
        self._models: OrderedDict[str, Embedder] = OrderedDict()
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-device")
        self.on_change: Callable[[list[EmbedderInfo]], None] | None = None

    # -- blocking API (runs on the caller's thread) --------------------------------
    def get_sync(self, name: str) -> Embedder:
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
                return model
            while len(self._models) >= self.max_loaded:
                self._evict_oldest()
            model = self._loader(name)
            if self._warmup:
                model.embed_texts(["warm-up"], batch_size=1, normalize=None)
            self._models[name] = model
            self._changed()
            return model

    def embed_texts_sync(
        self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        model = self.get_sync(name)
        return model.embed_texts(texts, batch_size=batch_size, normalize=normalize), model.info

    def embed_images_sync(
        self, name: str, images: Sequence[object], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        model = self.get_sync(name)
        return model.embed_images(images, batch_size=batch_size, normalize=normalize), model.info

    # -- async API (work runs on the device thread) ---------------------------------
    async def run(self, func: Callable[[], T]) -> T:
        """Run ``func`` on the device thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def get(self, name: str) -> Embedder:
        return await self.run(lambda: self.get_sync(name))

    async def embed_texts(
        self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        return await self.run(lambda: self.embed_texts_sync(name, texts, batch_size=batch_size, normalize=normalize))

    async def embed_images(
        self, name: str, images: Sequence[object], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, EmbedderInfo]:
        """Embed RGB ``PIL.Image.Image`` objects on the device thread (loading the model first if needed)."""
        return await self.run(lambda: self.embed_images_sync(name, images, batch_size=batch_size, normalize=normalize))

    # -- state ----------------------------------------------------------------------
    def loaded(self) -> list[EmbedderInfo]:
        with self._lock:
            return [model.info for model in self._models.values()]

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def unload(self, name: str) -> bool:
        with self._lock:
            model = self._models.pop(name, None)
            if model is None:
                return False
            model.close()
            self._changed()
            return True

    def close(self) -> None:
        """Unload every model once the call running on the device thread (if any) is done."""

        def unload_all() -> None:
            with self._lock:
                for name in list(self._models):
                    self.unload(name)

        self._executor.submit(unload_all)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _evict_oldest(self) -> None:
        name, model = self._models.popitem(last=False)
        log.info("Unloading model %s (least recently used; max_loaded_models=%d)", name, self.max_loaded)
        model.close()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.loaded())
