"""The engine choice (models/engines.py) through the real loaders: seeded tiny models and all-MiniLM-L6-v2.

The CPU is told it has AVX-512 BF16 (``cpu_description`` patched) so the bfloat16 engine is a candidate on
every machine that runs these tests; torch runs bfloat16 on any x86 CPU, only slower without those units.
Which engine ``auto`` picks depends on this machine's timings: the tests check what holds whichever wins.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelLoadError
from core.model_settings import CustomModel
from models import engines
from models.families import make_loader
from models.fingerprint import model_identity

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["Hello world, the cat sits.", "a dog", "The quick brown fox jumps over the lazy dog " * 9, "x", "Café"]


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    name, flags = engines.cpu_description()
    monkeypatch.setattr(engines, "cpu_description", lambda: (name, flags | {"avx512_bf16"}))


def tiny(path: Path, cache: Path, backend: str, pooling: str = "mean"):
    entry = [CustomModel(name="tiny", path=str(path), family="transformers", pooling=pooling)]
    return make_loader(device="cpu", cache_dir=str(cache), allow_download=False, custom_models=entry, backend=backend)(
        "tiny"
    )


def minilm(cache: Path, backend: str):
    return make_loader(device="cpu", cache_dir=str(cache), allow_download=False, backend=backend)(MINILM)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def measured(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fastest faithful engine" in r.getMessage()]


def test_auto_measures_once_caches_and_matches_torch(tiny_bert: Path, tmp_path: Path, caplog) -> None:
    reference = tiny(tiny_bert, tmp_path, "torch")
    assert (reference.info.engine, reference.info.engine_reason) == ("torch", "models.backend is torch")
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        first = tiny(tiny_bert, tmp_path, "auto")
    assert first.info.engine in ("torch", "onnx", "torch-bf16", "onnx-int8", "onnx-int8-static")
    assert first.info.backend == engines.RUNTIME[first.info.engine]
    assert first.info.engine_reason.startswith("auto: fastest faithful engine")
    for engine in ("torch ", "onnx ", "torch-bf16", "onnx-int8 ", "onnx-int8-static"):
        assert engine in first.info.engine_reason  # every candidate is named, with its time or why it was refused
    assert len(measured(caplog)) == 1
    [entry] = (tmp_path / "engines").glob("*.json")
    assert json.loads(entry.read_text())["engine"] == first.info.engine
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        second = tiny(tiny_bert, tmp_path, "auto")
    assert measured(caplog) == []  # a restart reads the choice
    assert second.info.engine == first.info.engine
    assert second.info.engine_reason == f"{first.info.engine_reason} (measured earlier; cached in {entry})"
    expected = reference.embed_texts(TEXTS, batch_size=2, normalize=True)
    assert min_cosine(second.embed_texts(TEXTS, batch_size=2, normalize=True), expected) >= engines.COSINE_FLOOR
    # another pooling is another model identity: measured anew, in its own entry
    tiny(tiny_bert, tmp_path, "auto", pooling="cls")
    assert len(list((tmp_path / "engines").glob("*.json"))) == 2


def test_forced_bf16_halves_the_weights_keeps_the_identity_and_the_vectors(tiny_bert: Path, tmp_path: Path) -> None:
    reference = tiny(tiny_bert, tmp_path, "torch")
    bf16 = tiny(tiny_bert, tmp_path, "torch-bf16")
    assert (bf16.info.engine, bf16.info.backend) == ("torch-bf16", "torch")
    assert bf16.info.engine_reason.startswith("models.backend is torch-bf16 (probe cosine ≥ 0.99")
    assert bf16.memory_bytes() < 0.55 * reference.memory_bytes()  # integer buffers (position ids) stay
    assert model_identity(bf16) == model_identity(reference)  # the embedding cache is shared
    got = bf16.embed_texts(TEXTS, batch_size=3, normalize=False)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), bf16.info.dim)
    assert min_cosine(got, reference.embed_texts(TEXTS, batch_size=3, normalize=False)) >= engines.COSINE_FLOOR
    assert not (tmp_path / "engines").exists()  # a forced engine measures nothing, caches nothing


def test_a_broken_engine_is_refused_under_auto_and_fails_a_forced_load(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engines.reduced_precision

    def broken(transformer, engine, device):
        encoder = real(transformer, engine, device)
        call = encoder.__call__

        class Broken(type(encoder)):
            def __call__(self, features):
                states = call(features)
                return states.flip(-1)  # a wrong kernel: every token state's components reversed

        encoder.__class__ = Broken
        return encoder

    monkeypatch.setattr(engines, "reduced_precision", broken)
    model = tiny(tiny_bert, tmp_path, "auto")
    assert model.info.engine != "torch-bf16"
    assert "torch-bf16 refused: probe" in model.info.engine_reason
    with pytest.raises(ModelLoadError) as err:
        tiny(tiny_bert, tmp_path / "forced", "torch-bf16")
    message = str(err.value)
    assert message.startswith("Failed to load model tiny with engine torch-bf16: probe") and "cosine" in message
    assert "Set VECTORIZE_WORKER_MODELS_BACKEND (YAML models.backend) to auto" in message


def test_a_cpu_without_bf16_refuses_the_forced_engine(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engines, "cpu_description", lambda: ("Old CPU", frozenset({"avx2"})))
    with pytest.raises(ModelLoadError, match="torch-bf16 cannot run here: this CPU has neither AMX nor AVX-512 BF16"):
        tiny(tiny_bert, tmp_path, "torch-bf16")
    model = tiny(tiny_bert, tmp_path, "auto")
    assert model.info.engine != "torch-bf16" and "torch-bf16: this CPU has neither" in model.info.engine_reason


def test_minilm_bf16_and_int8_against_float32(tmp_path: Path) -> None:
    reference = minilm(tmp_path, "torch")
    bf16 = minilm(tmp_path, "torch-bf16")
    expected = reference.embed_texts(TEXTS, batch_size=4, normalize=True)
    got = bf16.embed_texts(TEXTS, batch_size=4, normalize=True)
    assert min_cosine(got, expected) >= engines.COSINE_FLOOR
    assert abs(float(np.linalg.norm(got[0])) - 1) < 1e-5
    assert bf16.memory_bytes() < 0.55 * reference.memory_bytes()
    # dynamic int8 bends the shortest probe ("x") too far for this model: the check refuses it
    with pytest.raises(ModelLoadError, match=r"with engine onnx-int8: probe \d of 4 has cosine 0\.9"):
        minilm(tmp_path, "onnx-int8")


def quantized_matmuls(path: Path) -> tuple[int, int]:
    """(MatMuls of a weight that run in int8, MatMuls of a weight left in float32); each of the latter must be
    fed by an activation function (GELU ends in Mul): the feed-forward output projection."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    producers = {out: node.op_type for node in graph.node for out in node.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    quantized = [n for n in matmuls if producers.get(n.input[1]) == "DequantizeLinear"]
    assert all(producers.get(n.input[0]) == "DequantizeLinear" for n in quantized)  # activations in int8 too
    left = [n for n in matmuls if n.input[1] in weights]
    assert all(producers.get(n.input[0]) == "Mul" for n in left)
    return len(quantized), len(left)


def test_static_int8_is_calibrated_once_and_faithful_or_refused_with_its_cosine(
    tiny_bert: Path, tmp_path: Path, caplog
) -> None:
    reference = tiny(tiny_bert, tmp_path, "torch")
    with caplog.at_level(logging.INFO):  # the root logger too: where the quantizer talks
        try:
            model = tiny(tiny_bert, tmp_path, "onnx-int8-static")
        except ModelLoadError as exc:  # refused: the reason names the probe's cosine or the neighbours kept
            assert str(exc).startswith("Failed to load model tiny with engine onnx-int8-static: ")
            assert "has cosine 0." in str(exc) or "top-10 neighbours" in str(exc)
            model = None
    [made] = (tmp_path / "onnx").glob("*-int8-static-v*/model.onnx")
    assert [p.name for p in made.parent.iterdir()] == ["model.onnx"]  # the smoothed float32 copy is not kept
    assert quantized_matmuls(made) == (2 * 5, 2)  # tiny BERT: q, k, v, out, ffn-in of 2 layers; ffn-out float
    assert sum("Quantizing" in r.getMessage() and "calibrated on 32 texts" in r.getMessage() for r in caplog.records)
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == []  # its per-tensor lines and advice
    if model is not None:
        assert (model.info.engine, model.info.backend) == ("onnx-int8-static", "onnxruntime")
        assert re.fullmatch(
            r"models\.backend is onnx-int8-static \(probe cosine ≥ \d\.\d{5}, top-10 overlap \d\.\d{3}\)",
            model.info.engine_reason,
        )
        expected = reference.embed_texts(TEXTS, batch_size=2, normalize=True)
        assert min_cosine(model.embed_texts(TEXTS, batch_size=2, normalize=True), expected) >= engines.COSINE_FLOOR
        assert model.memory_bytes() == made.stat().st_size
    written = made.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        again = tiny(tiny_bert, tmp_path, "auto")  # auto builds it too, from the file made above
    assert made.stat().st_mtime_ns == written
    assert not any("Quantizing" in r.getMessage() for r in caplog.records)
    assert "onnx-int8-static" in again.info.engine_reason


def test_minilm_static_int8_is_refused_with_its_cosine(tmp_path: Path) -> None:
    """Even calibrated, smoothed and with the feed-forward output projection in float, int8 bends all-MiniLM-L6-v2
    below the floor (measured 0.994 on the one-letter probe); the load fails saying so."""
    with pytest.raises(ModelLoadError) as err:
        minilm(tmp_path, "onnx-int8-static")
    message = str(err.value)
    assert re.match(r"Failed to load model \S+ with engine onnx-int8-static: probe \d of 4 has cosine 0\.9\d+", message)
    assert "to torch float32 (at least 0.999 needed)" in message
    [made] = (tmp_path / "onnx").glob("*-int8-static-v*/model.onnx")  # made once: the next load checks, not quantizes
    assert quantized_matmuls(made) == (6 * 5, 6)  # q, k, v, attention output, ffn-in of 6 layers; ffn-out float


def test_minilm_auto_is_cached_per_machine(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        first = minilm(tmp_path, "auto")
    assert len(measured(caplog)) == 1 and first.info.engine in ("torch", "onnx", "torch-bf16")
    assert "onnx-int8 refused" in first.info.engine_reason or "onnx-int8 not timed" in first.info.engine_reason
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        second = minilm(tmp_path, "auto")
    if "not timed" in first.info.engine_reason:  # a busy machine ran out of time: measured again, not cached
        assert len(measured(caplog)) == 1
    else:
        assert measured(caplog) == [] and second.info.engine == first.info.engine


def test_the_bf16_transformer_runs_traced_and_gives_the_untraced_vectors(tiny_bert: Path, tmp_path: Path) -> None:
    """A reduced-precision engine traces its module on its first call (a forward that holds no GIL between
    operators) and the trace gives the module's own token states for any batch shape, padded or not."""
    import torch

    bf16 = tiny(tiny_bert, tmp_path, "torch-bf16")
    encoder = bf16._encoder
    assert isinstance(encoder, engines.TorchTransformer) and isinstance(encoder.traced, torch.jit.ScriptModule)
    untraced = engines.TorchTransformer(encoder.module, encoder.dtype, "cpu", trace=False)
    tokenizer = bf16._tok
    for batch in (TEXTS, TEXTS[:1], TEXTS[1:2] * 4, TEXTS[2:4]):  # padded, single, unpadded, two lengths
        features = tokenizer(batch, padding=True, truncation=True, max_length=bf16.max_length, return_tensors="pt")
        with torch.inference_mode():
            got, want = encoder(features), untraced(features)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4), batch
    assert untraced.traced is None


def test_a_module_that_cannot_be_traced_runs_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    class Untraceable(torch.nn.Module):
        def forward(self, input_ids, attention_mask):  # noqa: ANN001
            if torch.jit.is_tracing():
                raise RuntimeError("data-dependent control flow")
            return (input_ids.float().unsqueeze(-1) * attention_mask.unsqueeze(-1),)

    encoder = engines.TorchTransformer(Untraceable(), torch.float32, "cpu")
    features = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.tensor([[1, 1, 0]])}
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        first, second = encoder(features), encoder(features)
    assert encoder.traced is None and torch.equal(first, second) and first.shape == (1, 3, 1)
    warned = [r.getMessage() for r in caplog.records if "runs untraced" in r.getMessage()]
    assert len(warned) == 1 and "data-dependent control flow" in warned[0]  # once, not per call


def test_a_trace_that_fails_on_a_later_shape_gives_way_to_the_module(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    class Baked(torch.nn.Module):
        def forward(self, input_ids, attention_mask):  # noqa: ANN001
            width = int(input_ids.shape[1])  # a Python int: the trace keeps the width it saw
            return ((input_ids.float() + torch.zeros(width)).unsqueeze(-1) * attention_mask.unsqueeze(-1),)

    encoder = engines.TorchTransformer(Baked(), torch.float32, "cpu")
    narrow = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    wide = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        assert encoder(narrow).flatten().tolist() == [1, 2, 3] and encoder.traced is not None  # traced on width 3
        got = encoder(wide)  # the trace refuses width 5: this call and the later ones run the module
        again = encoder(wide)
    assert got.flatten().tolist() == again.flatten().tolist() == [1, 2, 3, 4, 0] and encoder.traced is None
    warned = [r.getMessage() for r in caplog.records if "runs untraced from now on" in r.getMessage()]
    assert len(warned) == 1


def test_two_threads_share_a_transformers_model_without_tokenizer_clashes(tiny_bert: Path, tmp_path: Path) -> None:
    """``concurrent_calls``: the transformers family tokenizes under a lock and runs the model on any thread; many
    calls on two threads, with token counting and chunk offsets on a third, give the vectors one thread gives."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny(tiny_bert, tmp_path, "torch-bf16")
    assert model.concurrent_calls
    batches = [TEXTS[i % len(TEXTS) :] + TEXTS[: i % len(TEXTS)] for i in range(40)]
    want = [model.embed_texts(b, batch_size=2, normalize=True) for b in batches]
    tokenizer = model.text_tokenizer()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(model.embed_texts, b, batch_size=2, normalize=True) for b in batches]
        counted = [pool.submit(lambda: (tokenizer.lengths(TEXTS), tokenizer.offsets(TEXTS[2]))) for _ in range(40)]
        got = [f.result() for f in futures]
        assert all(c.result()[0] == counted[0].result()[0] for c in counted)
    for a, b in zip(got, want, strict=True):
        assert np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", ["transformers", "sentence-transformers"])
def test_torch_float32_runs_traced_on_its_own_weights(family: str, tiny_bert: Path, tmp_path: Path) -> None:
    """With torch float32 chosen (here forced) the transformer runs traced on the model's own module: no copy, the
    vectors of the family's untraced path (the engines' reference), calls that may share the model."""
    from models.base import module_bytes

    model = tiny(tiny_bert, tmp_path, "torch") if family == "transformers" else minilm(tmp_path, "torch")
    assert model._encoder is None and model.concurrent_calls
    held = model.memory_bytes()
    got = model.embed_texts(TEXTS, batch_size=3, normalize=False)
    assert model._fp32_encoder.traced is not None
    assert model.memory_bytes() == held == module_bytes(model._model)  # the trace holds no weights of its own
    want = model._embed_with(TEXTS, 3, None)  # the family's own path: transformers' forward, or encode()
    assert np.allclose(got, want, atol=1e-5)
