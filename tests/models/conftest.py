"""Tiny random models, built once per test session (no download), and helpers to find them by name.

How a mapped name reaches a tiny model: the loaders look in ``models.cache_dir``
before anything else, so copying a tiny model to ``<cache_dir>/bert-base-uncased``
(or ``<cache_dir>/ViT-B-32`` for ``ViT-B/32``) makes that name load it through
the real resolution code; ``hf_cache_entry`` lays a model out as the Hugging
Face cache does, for the cache lookup (``models--FacebookAI--roberta-base``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import build_bert, build_clip, build_distilbert, build_roberta


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_bert(tiny_root: Path) -> Path:
    return build_bert(tiny_root / "bert")


@pytest.fixture(scope="session")
def tiny_distilbert(tiny_root: Path) -> Path:
    return build_distilbert(tiny_root / "distilbert")


@pytest.fixture(scope="session")
def tiny_roberta(tiny_root: Path) -> Path:
    return build_roberta(tiny_root / "roberta")


@pytest.fixture(scope="session")
def tiny_clip(tiny_root: Path) -> Path:
    return build_clip(tiny_root / "clip")


def cache_with(cache: Path, folder: str, model: Path) -> str:
    """Copy ``model`` to ``cache/folder`` and return the cache dir (as models_cache_dir takes it)."""
    shutil.copytree(model, cache / folder, dirs_exist_ok=True)
    return str(cache)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def images(count: int, seed: int = 0) -> list:
    """Distinct RGB images of different sizes and modes (no files, no download)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = 20 + 7 * i, 40 - 3 * i
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
        out.append(image.convert("L") if i % 3 == 2 else image)  # a grey image too: converted to RGB
    return out
