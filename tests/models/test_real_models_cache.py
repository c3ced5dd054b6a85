"""The model cache with real (tiny and packaged) models: count, memory budget, settings wiring, MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelMemoryError
from core.settings import load_settings
from models.families import build_manager, make_loader, make_size_hint
from models.manager import ModelManager
from tests.models.conftest import cache_with, cos

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def cache(tmp_path: Path, tiny_bert: Path, tiny_clip: Path, tiny_roberta: Path) -> str:
    cache_with(tmp_path, "bert-base-uncased", tiny_bert)
    cache_with(tmp_path, "roberta-base", tiny_roberta)
    return cache_with(tmp_path, "ViT-B-32", tiny_clip)


def test_max_loaded_one_alternating_two_families_keeps_one(cache: str) -> None:
    manager = ModelManager(make_loader(device="cpu", cache_dir=cache, allow_download=False), max_loaded=1)
    gauge: list[int] = []
    manager.on_change = lambda infos: gauge.append(len(infos))
    for name in ["bert-base-uncased", "ViT-B/32", "bert-base-uncased", "ViT-B/32"]:
        vectors, info = manager.embed_texts_sync(name, ["hello"], batch_size=1, normalize=None)
        assert info.name == name and [m.name for m in manager.loaded()] == [name]
    assert max(gauge) == 1 and gauge[-1] == 1
    manager.close()


def test_memory_budget_with_real_sizes(cache: str) -> None:
    # torch float32, as the weight files hold them: under auto a faster bfloat16 engine halves the memory, and
    # which engine wins depends on this machine's timings
    load = make_loader(device="cpu", cache_dir=cache, allow_download=False, backend="torch")
    sizes = {name: load(name).memory_bytes() for name in ["bert-base-uncased", "roberta-base", "ViT-B/32"]}
    hint = make_size_hint(cache_dir=cache)
    for name, size in sizes.items():
        estimate = hint(name)
        assert estimate is not None and 0.5 * size <= estimate <= 1.5 * size, (name, estimate, size)
    # slack for the estimate: a weights file is a little larger than the tensors it holds
    budget = sizes["bert-base-uncased"] + sizes["roberta-base"] + 100_000
    manager = ModelManager(load, max_loaded=5, memory_budget=budget, size_hint=hint)
    manager.get_sync("bert-base-uncased")
    manager.get_sync("roberta-base")
    assert manager.memory_used() == budget - 100_000  # both fit
    assert sizes["ViT-B/32"] > budget  # its token embedding alone is 49408 x 32 floats
    with pytest.raises(ModelMemoryError, match=r"Failed to load model ViT-B/32: it needs [\d.]+ MiB .* budget is"):
        manager.get_sync("ViT-B/32")
    assert [m.name for m in manager.loaded()] == ["bert-base-uncased", "roberta-base"]  # nothing evicted for it
    manager.close()
    small = ModelManager(load, max_loaded=5, memory_budget=max(sizes["bert-base-uncased"], sizes["roberta-base"]) + 10)
    small.get_sync("bert-base-uncased")
    small.get_sync("roberta-base")  # does not fit beside bert: bert goes first
    assert [m.name for m in small.loaded()] == ["roberta-base"]
    small.close()


def test_settings_build_the_manager(cache: str, tmp_path: Path, tiny_bert: Path, monkeypatch) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"""
models:
  cache_dir: {cache}
  max_loaded: 2
  memory_budget: 1GiB
  idle_unload_seconds: 120
  sentence_transformers:
    - {{name: my-bert, path: {tiny_bert}, pooling: cls, normalize: true}}
""",
        encoding="utf-8",
    )
    monkeypatch.delenv("VECTORIZE_WORKER_CONFIG", raising=False)
    settings = load_settings(config)
    manager = build_manager(settings, "cpu")
    assert (manager.max_loaded, manager.memory_budget, manager.idle_unload_seconds) == (2, 1024**3, 120)
    assert manager.keep_loaded == {settings.default_model}
    vectors, info = manager.embed_texts_sync("my-bert", ["hello"], batch_size=1, normalize=None)
    assert info.family == "transformers" and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-5
    manager.close()
    gpu = build_manager(settings.model_copy(update={"gpu_memory_limit": 2 * 1024**3}), "cuda")
    assert gpu.memory_budget == 2 * 1024**3 and "GPU_MEMORY_LIMIT" in gpu.budget_setting
    gpu.close()


def test_minilm_tokenizer_and_quality_through_the_manager() -> None:
    manager = ModelManager(make_loader(device="cpu", cache_dir=None, allow_download=False), max_loaded=1)
    model = manager.get_sync(MINILM)
    tok = model.text_tokenizer()
    assert tok.max_tokens == 254  # max_seq_length 256 minus [CLS] and [SEP]
    text = "Vectorization workers embed documents."
    spans = tok.offsets(text)
    assert len(spans) == tok.count(text) and text[spans[0][0] : spans[0][1]] == "Vector"
    q, near, far = manager.embed_texts_sync(
        MINILM,
        ["How do I reset my password?", "Steps to change a forgotten password", "The recipe needs two eggs."],
        batch_size=3,
        normalize=True,
    )[0]
    assert cos(q, near) > cos(q, far) + 0.2
    manager.close()


def test_minilm_custom_entry_length_and_normalize(tmp_path: Path) -> None:
    from core.errors import ModelLoadError
    from core.model_settings import CustomModel
    from models.resolve import packaged_model_dir

    path = str(packaged_model_dir(MINILM))
    entries = [
        CustomModel(name="short-minilm", path=path, max_length=32, normalize=True),
        CustomModel(name="too-long", path=path, max_length=4096),
    ]
    load = make_loader(device="cpu", cache_dir=None, allow_download=False, custom_models=entries)
    short = load("short-minilm")
    assert short.info.family == "sentence-transformers" and short.info.max_tokens == 32
    assert short.text_tokenizer().max_tokens == 30
    vector = short.embed_texts(["hello"], batch_size=1, normalize=None)[0]
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    with pytest.raises(ModelLoadError, match="max_length 4096 is more than the model's limit of 512 tokens"):
        load("too-long")
