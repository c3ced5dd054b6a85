"""ONNX Runtime for the text families (models/onnx_runtime.py), through the real loaders and the real exporter.

all-MiniLM-L6-v2 comes from its PyPI package; the transformers family uses
the seeded tiny models. Every export goes to the test's own cache folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelLoadError
from models.families import make_loader

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: real sentences of very different lengths, mixed case and accents, and one past the 256-token limit
SENTENCES = [
    "The central bank raised interest rates by a quarter of a percentage point on Thursday.",
    "Rain.",
    "Café owners in Montréal say the new bylaw will hurt small businesses that rely on terraces in summer.",
    "HOW DO I RESET MY PASSWORD?",
    "Researchers found that the drug reduced symptoms in 60 per cent of patients, though side effects were common.",
    "ok",
    "Firefighters battled the blaze for six hours before bringing it under control late on Sunday evening, "
    "officials said, adding that no one was injured but several homes were damaged.",
    " ".join(["The committee will publish its findings after reviewing every submission it received."] * 40),
    "Tokyo's Nikkei index closed 1.2% higher.",
    "Ein kurzer deutscher Satz über das Wetter in Berlin.",
]


def load(name: str, cache: Path, backend: str):
    return make_loader(device="cpu", cache_dir=str(cache), allow_download=False, backend=backend)(name)


def exports(cache: Path) -> list[Path]:
    return sorted((cache / "onnx").glob("*/*"))


def warning_of(caplog: pytest.LogCaptureFixture, text: str) -> str:
    """The model manager's warning that contains ``text`` (the test fails when there is none)."""
    found = [
        r.getMessage()
        for r in caplog.records
        if r.name == "worker.model_manager" and r.levelno == logging.WARNING and text in r.getMessage()
    ]
    assert found, f"no warning containing {text!r} in {[r.getMessage() for r in caplog.records]}"
    return found[-1]


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def minilm_torch(minilm_cache: Path):
    return load(MINILM, minilm_cache, "torch")


@pytest.fixture(scope="module")
def minilm_onnx(minilm_cache: Path):
    return load(MINILM, minilm_cache, "onnx")


def test_minilm_runs_on_onnx_runtime_with_torchs_vectors(minilm_torch, minilm_onnx) -> None:
    assert (minilm_torch.info.backend, minilm_onnx.info.backend) == ("torch", "onnxruntime")
    assert minilm_onnx.info.dim == minilm_torch.info.dim == 384
    for normalize in (True, False):
        expected = minilm_torch.embed_texts(SENTENCES, batch_size=4, normalize=normalize)
        got = minilm_onnx.embed_texts(SENTENCES, batch_size=4, normalize=normalize)
        assert got.shape == expected.shape == (len(SENTENCES), 384) and got.dtype == np.float32
        assert float(np.abs(got - expected).max()) < 1e-5
    # one text alone and inside a batch: padding does not change its vector
    alone = minilm_onnx.embed_texts([SENTENCES[1]], batch_size=1, normalize=True)[0]
    batched = minilm_onnx.embed_texts(SENTENCES, batch_size=len(SENTENCES), normalize=True)[1]
    assert float(np.abs(alone - batched).max()) < 1e-5


def test_the_export_is_written_once_and_reused(minilm_cache: Path, minilm_onnx, caplog) -> None:
    files = exports(minilm_cache)
    assert [f.name for f in files] == ["model.onnx"]  # no partial file left behind
    written = files[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        again = load(MINILM, minilm_cache, "onnx")
    assert again.info.backend == "onnxruntime"
    assert exports(minilm_cache) == files and files[0].stat().st_mtime_ns == written
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"Using the ONNX export {files[0]}" in m for m in messages)
    assert not any("Exporting" in m for m in messages)


def test_memory_counts_the_onnx_weights_not_the_released_torch_ones(minilm_torch, minilm_onnx, minilm_cache) -> None:
    onnx_file = exports(minilm_cache)[0].stat().st_size
    assert minilm_onnx.memory_bytes() == onnx_file  # pooling and normalize hold no weights
    assert abs(minilm_onnx.memory_bytes() - minilm_torch.memory_bytes()) < 0.05 * minilm_torch.memory_bytes()


def test_torch_backend_exports_nothing(tmp_path: Path) -> None:
    model = load(MINILM, tmp_path, "torch")
    assert model.info.backend == "torch" and not (tmp_path / "onnx").exists()


def test_a_failing_export_stays_on_torch_under_auto_and_fails_under_onnx(tmp_path: Path, monkeypatch, caplog) -> None:
    import torch

    calls = []
    real_export = torch.onnx.export

    def refuse(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        model = load(MINILM, tmp_path, "auto")
    assert model.info.backend == "torch"
    vector = model.embed_texts(["still works"], batch_size=1, normalize=True)[0]
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    warning = warning_of(caplog, f"Model {MINILM} runs on torch")
    assert "exporting BertModel to ONNX in" in warning and "aten::fancy" in warning
    assert "VECTORIZE_WORKER_MODELS_BACKEND=torch" in warning
    assert not exports(tmp_path)  # nothing half-written left, only the record of the failure
    [marker] = (tmp_path / "onnx").iterdir()
    assert marker.suffix == ".failed" and "aten::fancy" in marker.read_text()
    # the next loads do not try again (an export can take minutes) and say how to make them
    with pytest.raises(ModelLoadError, match=r"with ONNX Runtime: exporting BertModel to ONNX .*aten::fancy"):
        load(MINILM, tmp_path, "onnx")
    assert load(MINILM, tmp_path, "auto").info.backend == "torch"
    assert len(calls) == 1
    assert f"delete {marker} to export again" in warning_of(caplog, "at an earlier load")
    marker.unlink()  # e.g. after upgrading torch's exporter
    monkeypatch.setattr(torch.onnx, "export", real_export)
    assert load(MINILM, tmp_path, "onnx").info.backend == "onnxruntime"


def test_vectors_that_drift_keep_the_model_on_torch(tmp_path: Path, monkeypatch, caplog) -> None:
    import models.onnx_runtime as onnx_runtime

    monkeypatch.setattr(onnx_runtime, "PARITY_TOLERANCE", 0.0)  # float noise alone now counts as drift
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        model = load(MINILM, tmp_path, "auto")
    assert model.info.backend == "torch"
    assert "probe vectors differ from torch's" in warning_of(caplog, f"Model {MINILM} runs on torch")


def test_a_corrupt_cached_export_names_its_folder(tmp_path: Path, minilm_cache: Path, minilm_onnx, caplog) -> None:
    good = exports(minilm_cache)[0]
    broken = tmp_path / "onnx" / good.parent.name / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        model = load(MINILM, tmp_path, "auto")
    assert model.info.backend == "torch"
    warning = warning_of(caplog, f"ONNX Runtime cannot open {broken}")
    assert "delete that folder" in warning


def test_a_cache_dir_that_cannot_hold_the_export_stays_on_torch(tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")  # root ignores permissions; this cannot be written
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        model = load(MINILM, blocked, "auto")
    assert model.info.backend == "torch"
    warning = warning_of(caplog, f"Model {MINILM} runs on torch")
    assert str(blocked) in warning and "failed" in warning
    with pytest.raises(ModelLoadError, match="with ONNX Runtime"):
        load(MINILM, blocked, "onnx")


def test_probes_use_other_batch_sizes_than_the_traced_one(tmp_path: Path, monkeypatch) -> None:
    import models.onnx_runtime as onnx_runtime

    seen: list[int] = []
    call = onnx_runtime.OnnxTransformer.__call__

    def spy(self, features):
        seen.append(len(features["input_ids"]))
        return call(self, features)

    monkeypatch.setattr(onnx_runtime.OnnxTransformer, "__call__", spy)
    assert load(MINILM, tmp_path, "onnx").info.backend == "onnxruntime"
    assert sorted(seen) == [1, 3]  # four probe texts in calls of 3 and 1; the export was traced on 2


def test_a_race_lost_to_another_exporter_uses_its_folder(tmp_path: Path, tiny_bert: Path, caplog) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    import models.onnx_runtime as onnx_runtime

    model, tok = AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    sample = tok(["a b c", "a"], padding=True, return_tensors="pt")
    first = onnx_runtime.export_transformer(model, sample, cache_dir=tmp_path)
    folder = first.path.parent
    before = first.path.stat().st_mtime_ns
    # the other process renamed its folder between our look and our rename
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        onnx_runtime._export(model, ["input_ids", "attention_mask", "token_type_ids"], sample, folder, torch)
    assert first.path.stat().st_mtime_ns == before and sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    assert any("exported BertModel first" in r.getMessage() for r in caplog.records)


def test_an_exporter_killed_mid_write_leaves_nothing_for_long(tmp_path: Path, tiny_bert: Path) -> None:
    import os
    import time

    from transformers import AutoModel, AutoTokenizer

    import models.onnx_runtime as onnx_runtime

    root = tmp_path / "onnx"
    stale, fresh = root / "abc.4242.partial", root / "def.4343.partial"
    for leftover in (stale, fresh):
        leftover.mkdir(parents=True)
        (leftover / "model.onnx").write_bytes(b"half")
    old = time.time() - 2 * onnx_runtime.STALE_PARTIAL_S
    os.utime(stale, (old, old))
    model, tok = AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    encoder = onnx_runtime.export_transformer(
        model, tok(["a b", "a"], padding=True, return_tensors="pt"), cache_dir=tmp_path
    )
    # the stale one is gone; one that may still be written by a live exporter stays
    assert sorted(p.name for p in root.iterdir()) == sorted([encoder.path.parent.name, fresh.name])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_transformers_family_matches_torch(family: str, pooling: str, tmp_path: Path, request) -> None:
    from core.model_settings import CustomModel
    from models.hf_transformers import HFTransformerEmbedder

    path = request.getfixturevalue(f"tiny_{family}")
    entry = [CustomModel(name="tiny", path=str(path), family="transformers", pooling=pooling)]
    loaded = {
        backend: make_loader(
            device="cpu", cache_dir=str(tmp_path), allow_download=False, custom_models=entry, backend=backend
        )("tiny")
        for backend in ("torch", "onnx")
    }
    assert all(isinstance(m, HFTransformerEmbedder) for m in loaded.values())
    assert loaded["onnx"].info.backend == "onnxruntime"
    texts = ["Hello world, the cat sits.", "a dog", "The quick brown fox jumps over the lazy dog " * 9, "x"]
    expected = loaded["torch"].embed_texts(texts, batch_size=3, normalize=False)
    got = loaded["onnx"].embed_texts(texts, batch_size=3, normalize=False)
    assert float(np.abs(got - expected).max()) < 1e-5 * max(1.0, float(np.abs(expected).max()))
