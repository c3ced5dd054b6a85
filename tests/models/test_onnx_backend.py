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


def tiny_export(tiny_bert: Path, cache: Path):
    from transformers import AutoModel, AutoTokenizer

    import models.onnx_runtime as onnx_runtime

    model, tok = AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    names, path = onnx_runtime.exported_model(
        model, tok(["a b c", "a"], padding=True, return_tensors="pt"), cache_dir=cache
    )
    return names, path, tok


def test_smoothing_for_static_int8_keeps_the_float32_function(tiny_bert: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    import models.onnx_runtime as onnx_runtime

    names, path, tok = tiny_export(tiny_bert, tmp_path)
    feeds = onnx_runtime.calibration_feeds(tok, names, 64)
    assert len(feeds) == len(onnx_runtime.CALIBRATION_TEXTS) and all(f["input_ids"].shape[0] == 1 for f in feeds)
    assert max(f["input_ids"].shape[1] for f in feeds) == 64  # the long texts are cut at the worker's length
    smoothed, nodes = onnx_runtime.smooth_for_int8(onnx.load(str(path)), feeds)
    onnx.checker.check_model(smoothed)
    muls = [n for n in smoothed.graph.node if n.name.startswith("smoothquant/")]
    assert len(muls) == 2 * 3  # per layer: the q/k/v input, the attention output's, the feed-forward input's
    assert len(nodes) == 2 * 5 and not any("output/dense" in n and "attention" not in n for n in nodes)
    batch = {k: v.astype(np.int64) for k, v in tok(SENTENCES[:3], padding=True, return_tensors="np").items()}
    batch = {n: batch[n] for n in names}
    run = {
        which: onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, batch)[0]
        for which, model in (("float32", str(path)), ("smoothed", smoothed.SerializeToString()))
    }
    assert float(np.abs(run["smoothed"] - run["float32"]).max()) < 1e-4 * float(np.abs(run["float32"]).max())


def test_a_failing_static_quantizer_is_remembered_and_refused(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    import onnxruntime.quantization

    from core.model_settings import CustomModel

    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("calibration needs more memory than there is")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", refuse)
    entry = [CustomModel(name="tiny", path=str(tiny_bert), family="transformers")]

    def tiny(backend: str):
        return make_loader(
            device="cpu", cache_dir=str(tmp_path), allow_download=False, custom_models=entry, backend=backend
        )("tiny")

    model = tiny("auto")
    assert model.info.engine != "onnx-int8-static"
    assert "onnx-int8-static refused: quantizing " in model.info.engine_reason
    assert "to static int8 failed: RuntimeError: calibration needs more memory" in model.info.engine_reason
    [marker] = (tmp_path / "onnx").glob("*-int8-static-v1.failed")
    assert "calibration needs more memory" in marker.read_text()
    assert not list((tmp_path / "onnx").glob("*partial*")) and not list((tmp_path / "onnx").glob("*-int8-static-v1"))
    with pytest.raises(ModelLoadError) as err:
        tiny("onnx-int8-static")
    assert str(err.value).startswith("Failed to load model tiny with engine onnx-int8-static: quantizing")
    assert f"(at an earlier load; delete {marker} to quantize again)" in str(err.value)
    assert len(calls) == 1  # the marker spares the next loads the calibration


def test_static_int8_is_not_offered_for_an_export_with_external_weights(tmp_path: Path) -> None:
    from models.onnx_runtime import OnnxUnavailable, static_quantized_model

    folder = tmp_path / "onnx" / "abc"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "encoder.weight").write_bytes(b"weights")
    with pytest.raises(OnnxUnavailable, match=r"under 2 GB only, and .*abc keeps its weights in separate files"):
        static_quantized_model(folder / "model.onnx", ["input_ids"], tokenizer=None, max_length=8)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["abc"]  # nothing made, nothing remembered
