from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from core.errors import ModelLoadError
from models.device import release_memory
from models.families import family_of, make_loader
from models.manager import ModelManager
from tests.fakes import FakeEmbedder


class Loader:
    def __init__(self) -> None:
        self.made: dict[str, list[FakeEmbedder]] = {}

    def __call__(self, name: str) -> FakeEmbedder:
        if name == "missing":
            raise ModelLoadError("Failed to load model missing: not found")
        model = FakeEmbedder(name)
        self.made.setdefault(name, []).append(model)
        return model


def test_lru_evicts_least_recently_used_and_closes_it() -> None:
    loader = Loader()
    manager = ModelManager(loader, max_loaded=2)
    a = manager.get_sync("a")
    manager.get_sync("b")
    assert manager.get_sync("a") is a  # cached, and now most recent
    manager.get_sync("c")  # evicts b, not a
    assert [m.name for m in manager.loaded()] == ["a", "c"]
    assert loader.made["b"][0].closed and not a.closed
    manager.get_sync("b")  # reloaded: evicts a
    assert len(loader.made["b"]) == 2 and a.closed
    manager.close()


class _Node:
    ref: _Node | None = None


def test_a_load_freezes_the_heap_and_releasing_memory_collects_what_was_frozen() -> None:
    """The worker's manager ends each load with ``gc.freeze`` (full collections skip the libraries and models);
    releasing memory after an unload unfreezes and collects, so a cycle frozen at a load is not kept for good."""
    gc.unfreeze()
    try:
        plain = ModelManager(Loader(), max_loaded=1)
        plain.get_sync("a")
        assert gc.get_freeze_count() == 0  # only when asked: tests and scripts keep Python's default
        plain.close()

        manager = ModelManager(Loader(), max_loaded=1, freeze_after_load=True)
        cycle = _Node()
        cycle.ref = cycle
        alive = weakref.ref(cycle)
        manager.get_sync("a")
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect()
        assert alive() is not None  # frozen with everything else: collections no longer scan it
        release_memory("cpu")  # what an embedder's close() does after an unload
        assert alive() is None
        assert gc.get_freeze_count() > 0  # what survived is frozen again
        manager.close()
    finally:
        gc.unfreeze()


def test_max_loaded_one_alternating_keeps_one_model() -> None:
    manager = ModelManager(Loader(), max_loaded=1)
    for name in ["a", "b", "a", "b"]:
        manager.get_sync(name)
        assert [m.name for m in manager.loaded()] == [name]
    manager.close()


def test_warm_up_runs_once_per_load_and_changes_are_reported() -> None:
    loader = Loader()
    manager = ModelManager(loader, max_loaded=3)
    seen: list[list[str]] = []
    manager.on_change = lambda infos: seen.append([i.name for i in infos])
    manager.get_sync("a")
    manager.get_sync("a")
    assert loader.made["a"][0].calls == [["warm-up"]]
    assert seen == [["a"]]
    manager.unload("a")
    assert seen[-1] == [] and not manager.is_loaded("a")
    manager.close()


def test_load_errors_propagate_and_leave_cache_unchanged() -> None:
    manager = ModelManager(Loader(), max_loaded=2)
    manager.get_sync("a")
    with pytest.raises(ModelLoadError, match="Failed to load model missing"):
        manager.get_sync("missing")
    assert [m.name for m in manager.loaded()] == ["a"]
    manager.close()


def test_a_name_that_fails_to_load_never_unloads_a_working_model() -> None:
    loader = Loader()
    manager = ModelManager(loader, max_loaded=1)
    first = manager.get_sync("a")
    for _ in range(3):  # a task with a misspelled model_name, again and again
        with pytest.raises(ModelLoadError):
            manager.get_sync("missing")
    assert [m.name for m in manager.loaded()] == ["a"] and not first.closed
    assert manager.get_sync("a") is first  # not reloaded
    manager.close()


async def test_async_embedding_runs_off_the_event_loop() -> None:
    import threading

    threads: list[str] = []

    class Recording(FakeEmbedder):
        def embed_texts(self, texts, *, batch_size, normalize):  # type: ignore[override]
            threads.append(threading.current_thread().name)
            return super().embed_texts(texts, batch_size=batch_size, normalize=normalize)

    manager = ModelManager(lambda name: Recording(name), max_loaded=1, warmup=False)
    vectors, info = await manager.embed_texts("m", ["x", "y"], batch_size=2, normalize=True)
    assert vectors.shape == (2, 8) and info.name == "m"
    assert threads and all(t.startswith("model-device") for t in threads)
    assert threading.current_thread().name not in threads
    results = await asyncio.gather(*(manager.get("m") for _ in range(5)))
    assert len({id(r) for r in results}) == 1
    manager.close()


def test_family_routing_and_a_missing_clip_model_says_where_to_put_it(tmp_path) -> None:
    assert family_of("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers"
    assert family_of("ViT-B/32") == "clip"
    loader = make_loader(device="cpu", cache_dir=str(tmp_path), allow_download=False)
    with pytest.raises(ModelLoadError, match="Failed to load model ViT-B/32: not found in") as info:
        loader("ViT-B/32")
    assert str(tmp_path / "ViT-B-32") in str(info.value) and "downloads are off" in str(info.value)


def test_models_allowed_refuses_other_names_before_looking_for_them(tmp_path, monkeypatch) -> None:
    """models.allowed: names and patterns; the configured models always pass; a pattern never climbs a folder."""
    from core.settings import load_settings
    from models.families import build_manager, is_allowed, make_size_hint

    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "model.safetensors").write_bytes(b"x" * 1000)
    loader = make_loader(
        device="cpu", cache_dir=str(tmp_path), allow_download=False, allowed=["team/*", "exact", "*secret*"]
    )
    refused = ["bert-base-uncased", "team/../secret", "exactly", str(tmp_path / "secret"), "hf:" + str(tmp_path)]
    refused += ["~/secret", "./secret", "HF:" + str(tmp_path / "secret"), "Clip:/x/secret"]  # paths under a pattern
    refused += ["hf:team/model"]  # a prefix the pattern lacks
    for name in refused:
        with pytest.raises(ModelLoadError) as info:
            loader(name)
        assert str(info.value).startswith(f"Failed to load model {name}: it is not among"), info.value
        assert "team/*, exact, *secret*" in str(info.value) and "VECTORIZE_WORKER_MODELS_ALLOWED" in str(info.value)
    assert is_allowed(str(tmp_path / "secret"), [str(tmp_path / "secret")])  # a path listed as it is
    with pytest.raises(ModelLoadError, match="Failed to load model team/model: not found in"):
        loader("team/model")  # allowed: looked for, and not there
    hint = make_size_hint(cache_dir=str(tmp_path), allowed=["team/*"])
    assert hint(str(tmp_path / "secret")) is None  # not even measured on disk
    assert make_size_hint(cache_dir=str(tmp_path))(str(tmp_path / "secret")) == 1000
    assert is_allowed("anything/at-all", []) and is_allowed("exact", ["exact"])

    for key in [k for k in __import__("os").environ if k.startswith("VECTORIZE_WORKER_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VECTORIZE_WORKER_MODELS_ALLOWED", "team/*, other,")
    monkeypatch.setenv("VECTORIZE_WORKER_MODELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("VECTORIZE_WORKER_MODELS_ALLOW_DOWNLOAD", "false")
    settings = load_settings()
    assert settings.models_allowed == ["team/*", "other"]
    manager = build_manager(settings, "cpu")
    with pytest.raises(ModelLoadError, match="it is not among"):
        manager.get_sync("bert-base-uncased")
    with pytest.raises(ModelLoadError, match="Failed to load model ViT-B/32: not found in"):
        manager.get_sync(settings.default_image_model)  # the configured image model is always allowed
    manager.close()


class Gate(FakeEmbedder):
    """Calls that wait at ``entered`` until released, counting how many run at once."""

    def __init__(self, name: str, *, concurrent: bool) -> None:
        import threading

        super().__init__(name)
        self.concurrent_calls = concurrent
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.threads: list[int] = []

    def embed_texts(self, texts, *, batch_size, normalize):  # type: ignore[override]
        import torch

        if texts == ["warm-up"]:
            return super().embed_texts(texts, batch_size=batch_size, normalize=normalize)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.append(torch.get_num_threads())
        self.entered.release()
        try:
            assert self.release.wait(10), "never released"
            return super().embed_texts(texts, batch_size=batch_size, normalize=normalize)
        finally:
            with self.lock:
                self.running -= 1


async def _two_calls(manager: ModelManager, model: Gate) -> tuple[int, list[int]]:
    """Start two calls of ``model``, let them run, return how many ran at once and their torch threads."""
    calls = [
        asyncio.ensure_future(manager.embed_texts(model.info.name, [t], batch_size=1, normalize=None)) for t in "xy"
    ]
    await asyncio.get_running_loop().run_in_executor(None, model.entered.acquire)
    await asyncio.sleep(0.2)  # the second call, if it may run, has entered by now
    most = model.most
    model.release.set()
    results = await asyncio.gather(*calls)
    assert [r[0].shape for r in results] == [(1, 8), (1, 8)]
    return most, model.threads


async def test_parallel_calls_run_a_concurrent_model_at_once_on_their_share_of_threads() -> None:
    """``models.parallel_calls`` 2: two calls of a model that declares ``concurrent_calls`` compute together,
    each device thread with ``call_threads`` torch threads."""
    model = Gate("m", concurrent=True)
    manager = ModelManager(lambda name: model, max_loaded=1, parallel_calls=2, call_threads=1)
    most, threads = await _two_calls(manager, model)
    assert most == 2 and threads == [1, 1]
    manager.close()


async def test_a_model_without_concurrent_calls_runs_one_call_at_a_time_on_all_threads() -> None:
    import torch

    model = Gate("m", concurrent=False)
    manager = ModelManager(lambda name: model, max_loaded=1, parallel_calls=2, call_threads=1)
    most, threads = await _two_calls(manager, model)
    assert most == 1 and threads == [2, 2]  # one call at a time, on call_threads x parallel_calls threads
    # the device thread goes back to its share afterwards
    after = await manager.run(torch.get_num_threads)
    assert after == 1
    manager.close()


async def test_one_parallel_call_leaves_torch_threads_alone() -> None:
    import torch

    model = Gate("m", concurrent=True)
    manager = ModelManager(lambda name: model, max_loaded=1)
    before = await manager.run(torch.get_num_threads)
    most, threads = await _two_calls(manager, model)
    assert most == 1 and threads == [before, before]
    manager.close()


async def test_a_model_unloaded_while_another_thread_calls_it_closes_when_the_call_ends() -> None:
    model = Gate("m", concurrent=True)
    manager = ModelManager(lambda name: model, max_loaded=1, parallel_calls=2, call_threads=1)
    call = asyncio.ensure_future(manager.embed_texts("m", ["x"], batch_size=1, normalize=None))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.acquire)
    assert await manager.run(lambda: manager.unload("m"))  # on the other device thread, mid-call
    assert not manager.is_loaded("m") and not model.closed  # out of view, still computing
    model.release.set()
    vectors, _ = await call
    assert vectors.shape == (1, 8) and model.closed
    assert manager.embed_loaded_sync("m", ["x"], batch_size=1, normalize=None) is None  # never loads
    manager.close()


def test_embed_loaded_sync_uses_a_loaded_model_and_never_loads_one() -> None:
    loader = Loader()
    manager = ModelManager(loader, max_loaded=1, warmup=False)
    assert manager.embed_loaded_sync("a", ["x"], batch_size=1, normalize=None) is None and "a" not in loader.made
    manager.get_sync("a")
    vectors, info = manager.embed_loaded_sync("a", ["x"], batch_size=1, normalize=True)
    assert info.name == "a" and vectors.shape == (1, 8) and loader.made["a"][0].calls == [["x"]]
    manager.close()


def test_the_call_plan_splits_torch_threads_among_the_calls() -> None:
    import torch

    from models.device import call_plan

    threads = torch.get_num_threads()
    assert call_plan("cpu", 1) == (1, None)
    assert call_plan("cuda", 0) == (1, None)  # a GPU runs one call at a time anyway
    assert call_plan("cpu", 3) == (3, max(1, threads // 3))
    assert call_plan("cpu", 0) == ((2, threads // 2) if threads >= 2 else (1, None))
    with pytest.raises(ValueError, match="parallel_calls"):
        ModelManager(Loader(), parallel_calls=0)
