"""The sentence-transformers family with the packaged all-MiniLM-L6-v2 (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelLoadError
from models.manager import ModelManager
from models.resolve import packaged_model_dir
from models.sentence_transformers import load_sentence_transformer

NAME = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def model():
    return load_sentence_transformer(NAME, device="cpu", cache_dir=None, allow_download=False)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_loads_offline_from_the_package(model) -> None:
    assert model.info.dim == 384 and model.info.max_tokens == 256
    assert model.info.source == str(packaged_model_dir(NAME))
    assert model.memory_bytes() > 10_000_000


def test_same_model_by_path_and_short_name(model, tmp_path: Path) -> None:
    by_path = load_sentence_transformer(
        str(packaged_model_dir(NAME)), device="cpu", cache_dir=None, allow_download=False
    )
    short = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu", cache_dir=None, allow_download=False)
    text = ["the same text"]
    a = model.embed_texts(text, batch_size=1, normalize=None)[0]
    assert cos(a, by_path.embed_texts(text, batch_size=1, normalize=None)[0]) > 0.9999
    assert cos(a, short.embed_texts(text, batch_size=1, normalize=None)[0]) > 0.9999


def test_batch_equals_one_by_one_and_is_deterministic(model) -> None:
    texts = ["A man is eating food.", "一个男人在吃东西。", "The weather is lovely today, isn't it?" * 3]
    batch = model.embed_texts(texts, batch_size=8, normalize=None)
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    for i, text in enumerate(texts):
        single = model.embed_texts([text], batch_size=1, normalize=None)[0]
        assert cos(batch[i], single) >= 0.9999
    assert np.allclose(batch, model.embed_texts(texts, batch_size=8, normalize=None), atol=1e-6)


def test_normalisation_is_honoured(model) -> None:
    v = model.embed_texts(["norm"], batch_size=1, normalize=True)[0]
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def test_semantic_quality(model) -> None:
    q, near, far = model.embed_texts(
        ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."],
        batch_size=3,
        normalize=True,
    )
    assert cos(q, near) > cos(q, far) + 0.2


def test_missing_model_fails_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_sentence_transformer("acme/no-such-model", device="cpu", cache_dir=str(tmp_path), allow_download=False)
    message = str(info.value)
    assert message.startswith("Failed to load model acme/no-such-model: not found in")
    assert "downloads are off" in message and str(tmp_path / "acme/no-such-model") in message


def test_cache_dir_lookup(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(packaged_model_dir(NAME), tmp_path / "my-org__my-model")
    found = load_sentence_transformer("my-org/my-model", device="cpu", cache_dir=str(tmp_path), allow_download=False)
    assert found.info.dim == 384 and found.info.source == str(tmp_path / "my-org__my-model")


def test_manager_with_real_model() -> None:
    from models.families import make_loader

    manager = ModelManager(make_loader(device="cpu", cache_dir=None, allow_download=False), max_loaded=1)
    vectors, info = manager.embed_texts_sync(NAME, ["x", "y"], batch_size=2, normalize=None)
    assert vectors.shape == (2, 384) and info.family == "sentence-transformers"
    manager.close()
