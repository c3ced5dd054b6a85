"""The model manager's memory budget, idle unload and out-of-memory batch splitting (fakes only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from core.errors import ModelMemoryError, UnsupportedTaskError
from models.base import Embedder
from models.manager import ModelManager
from tests.fakes import FakeEmbedder

MiB = 1024 * 1024


class Sized(FakeEmbedder):
    """A fake model of a given size that runs out of memory above ``oom_above`` inputs per call."""

    def __init__(self, name: str, size: int, oom_above: int | None = None) -> None:
        super().__init__(name)
        self.size = size
        self.oom_above = oom_above
        self.batch_sizes: list[tuple[int, int]] = []

    def memory_bytes(self) -> int:
        return self.size

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        self.batch_sizes.append((len(texts), batch_size))
        if self.oom_above is not None and len(texts) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().embed_texts(texts, batch_size=batch_size, normalize=normalize)


class Loader:
    def __init__(self, sizes: dict[str, int], **kwargs: int) -> None:
        self.sizes = sizes
        self.kwargs = kwargs
        self.loads: list[str] = []
        self.made: dict[str, Sized] = {}

    def __call__(self, name: str) -> Sized:
        self.loads.append(name)
        self.made[name] = Sized(name, self.sizes[name], **self.kwargs)
        return self.made[name]


def test_memory_budget_evicts_least_recently_used_until_the_new_model_fits() -> None:
    loader = Loader({"a": 40 * MiB, "b": 40 * MiB, "c": 50 * MiB, "small": 5 * MiB})
    manager = ModelManager(loader, max_loaded=10, memory_budget=100 * MiB)
    seen: list[int] = []
    manager.on_change = lambda infos: seen.append(len(infos))
    manager.get_sync("a")
    manager.get_sync("b")
    manager.get_sync("a")  # a is now the most recent
    assert manager.memory_used() == 80 * MiB
    manager.get_sync("c")  # 80 + 50 > 100: b (least recent) goes, a stays
    assert [m.name for m in manager.loaded()] == ["a", "c"] and loader.made["b"].closed
    assert manager.memory_used() == 90 * MiB
    manager.get_sync("small")  # 95 fits: nothing evicted
    assert [m.name for m in manager.loaded()] == ["a", "c", "small"]
    assert seen[-1] == 3  # the worker_loaded_models gauge follows every change
    manager.close()


def test_a_model_larger_than_the_budget_fails_clearly_and_is_not_loaded_twice() -> None:
    loader = Loader({"a": 10 * MiB, "huge": 300 * MiB})
    manager = ModelManager(loader, max_loaded=3, memory_budget=100 * MiB)
    manager.get_sync("a")
    for _ in range(2):
        with pytest.raises(ModelMemoryError) as info:
            manager.get_sync("huge")
        message = str(info.value)
        assert "Failed to load model huge: it needs 300.0 MiB" in message
        assert "budget is 100.0 MiB" in message and "VECTORIZE_WORKER_MODELS_MEMORY_BUDGET" in message
        assert "models.memory_budget" in message
    assert loader.loads.count("huge") == 1 and loader.made["huge"].closed  # known size: refused without loading
    assert [m.name for m in manager.loaded()] == ["a"]
    manager.close()


def test_size_hint_evicts_before_loading() -> None:
    order: list[str] = []
    loader = Loader({"a": 60 * MiB, "b": 60 * MiB})

    def load(name: str) -> Sized:
        order.append(f"load {name} with {[m.name for m in manager.loaded()]} loaded")
        return loader(name)

    manager = ModelManager(load, max_loaded=5, memory_budget=100 * MiB, size_hint=lambda name: 60 * MiB)
    manager.get_sync("a")
    manager.get_sync("b")
    assert order == ["load a with [] loaded", "load b with [] loaded"]  # a went before b was read
    manager.close()


def test_idle_models_are_unloaded_but_not_the_pinned_default() -> None:
    now = [0.0]
    loader = Loader({"default": MiB, "other": MiB})
    manager = ModelManager(loader, max_loaded=3, idle_unload_seconds=60, keep_loaded=["default"], clock=lambda: now[0])
    manager.get_sync("default")
    manager.get_sync("other")
    now[0] = 30.0
    manager.embed_texts_sync("other", ["x"], batch_size=1, normalize=None)
    now[0] = 80.0
    assert manager.unload_idle() == []  # used at 30 s
    now[0] = 91.0
    assert manager.unload_idle() == ["other"]
    assert [m.name for m in manager.loaded()] == ["default"] and loader.made["other"].closed
    manager.close()


def test_idle_unload_runs_by_itself() -> None:
    import time

    manager = ModelManager(Loader({"m": MiB}), max_loaded=1, idle_unload_seconds=0.2)
    manager.get_sync("m")
    deadline = time.monotonic() + 10
    while manager.is_loaded("m") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not manager.is_loaded("m")
    manager.close()


def test_out_of_memory_splits_the_batch_in_halves_and_keeps_the_order() -> None:
    loader = Loader({"m": MiB}, oom_above=3)
    manager = ModelManager(loader, max_loaded=1, warmup=False)
    texts = [f"text {i}" for i in range(10)]
    vectors, info = manager.embed_texts_sync("m", texts, batch_size=32, normalize=None)
    expected = FakeEmbedder("m").embed_texts(texts, batch_size=32, normalize=None)
    assert vectors.shape == (10, 8) and info.name == "m"
    assert np.array_equal(vectors, expected)  # same rows, same order as one call would give
    calls = loader.made["m"].batch_sizes
    assert calls[0] == (10, 32) and calls[1] == (5, 5)  # halved, batch size capped at the half
    assert max(n for n, _ in calls if n <= 3) <= 3 and sum(n for n, _ in calls if n <= 3) == 10
    manager.close()


def test_out_of_memory_on_a_single_input_fails_the_task_clearly() -> None:
    loader = Loader({"m": MiB}, oom_above=0)
    manager = ModelManager(loader, max_loaded=1, warmup=False)
    with pytest.raises(ModelMemoryError) as info:
        manager.embed_texts_sync("m", ["a", "b", "c"], batch_size=8, normalize=None)
    message = str(info.value)
    assert message.startswith("Model m ran out of memory on cpu embedding a single input (CUDA out of memory.")
    assert "VECTORIZE_WORKER_DEVICE=cpu" in message
    assert [n for n, _ in loader.made["m"].batch_sizes] == [3, 1]  # 3 -> 1 + 2: the first single one fails
    manager.close()


def test_other_errors_are_not_retried() -> None:
    class Broken(FakeEmbedder):
        def embed_texts(self, texts, *, batch_size, normalize):  # type: ignore[override]
            raise ValueError("bad input")

    manager = ModelManager(lambda name: Broken(name), max_loaded=1, warmup=False)
    with pytest.raises(ValueError, match="bad input"):
        manager.embed_texts_sync("m", ["a", "b"], batch_size=2, normalize=None)
    manager.close()


async def test_embed_images_mirrors_embed_texts() -> None:
    class Images(FakeEmbedder):
        def embed_images(self, images, *, batch_size, normalize):  # type: ignore[override]
            return self.embed_texts([str(i) for i in images], batch_size=batch_size, normalize=normalize)

    class TextOnly(FakeEmbedder):
        embed_images = Embedder.embed_images  # the port's default: no image tower

    manager = ModelManager(lambda name: Images(name) if name == "clip" else TextOnly(name), max_loaded=2)
    vectors, info = await manager.embed_images("clip", ["img-1", "img-2"], batch_size=2, normalize=True)
    assert vectors.shape == (2, 8) and info.name == "clip"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(UnsupportedTaskError, match="Model text-only .* cannot embed images"):
        await manager.embed_images("text-only", ["img"], batch_size=1, normalize=None)
    manager.close()


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.errors import ConfigError
    from models.device import resolve_device

    class MPS:
        available = False

        def is_available(self) -> bool:
            return self.available

    mps = MPS()
    monkeypatch.setattr(torch.backends, "mps", mps, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps.available = True
    assert resolve_device("auto") == "mps"
    mps.available = False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="VECTORIZE_WORKER_DEVICE=cuda but torch sees no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"


def test_cuda_visible_devices_empty_hides_the_gpu_in_a_fresh_process() -> None:
    # A subprocess on purpose: CUDA reads CUDA_VISIBLE_DEVICES once, when a process first initialises it, so
    # only a process started with the variable shows what a worker started with it sees.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root)}
    code = "from models.device import resolve_device; print(resolve_device('auto'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] in ("cpu", "mps")
