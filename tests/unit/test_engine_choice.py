"""The engine choice (models/engines.py) with fake engines: a fake clock, fake vectors, no model, no GPU.

The CUDA cases run here too: only the decision logic is exercised (which engines a CUDA device offers,
which one wins); no test in this file needs a GPU or runs one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelLoadError
from models import engines
from models.engines import Candidate, ChoiceCache, EngineUnavailable, choose, engine_support
from models.onnx_runtime import PROBE_TEXTS, OnnxUnavailable

BF16_CPU = frozenset({"avx512f", "avx512_bf16"})
PLAIN_CPU = frozenset({"avx2", "fma"})
DIM = 16


def base_vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEncoder:
    """An engine's encoder: ``cost`` fake seconds per text; ``noise`` bends probe vectors; ``scramble`` bends
    every other text's (the held-out set) while the probes stay faithful."""

    def __init__(self, engine: str, cost: float, *, noise: float = 0.0, scramble: bool = False) -> None:
        self.engine, self.cost, self.noise, self.scramble = engine, cost, noise, scramble
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Family:
    """A family's ``embed(texts, batch_size, encoder)``: torch float32 costs ``torch_cost`` per text."""

    def __init__(self, clock: Clock, torch_cost: float = 1e-3) -> None:
        self.clock = clock
        self.torch_cost = torch_cost
        self.calls: list[str] = []  # which engine embedded what: "torch" or the encoder's engine

    def embed(self, texts, batch_size, encoder):
        assert batch_size >= 1
        engine = "torch" if encoder is None else encoder.engine
        self.calls.append(engine)
        self.clock.now += len(texts) * (self.torch_cost if encoder is None else encoder.cost)
        rows = []
        for text in texts:
            vector = base_vector(text)
            if encoder is not None and encoder.noise:
                vector = vector + encoder.noise * base_vector(text + "#noise")
            if encoder is not None and encoder.scramble and text not in PROBE_TEXTS:
                vector = base_vector(text[::-1])
            rows.append(vector)
        return np.stack(rows)


def candidate(engine: str, encoder: FakeEncoder | None = None, *, fails: str = "", **kw) -> Candidate:
    built: list[FakeEncoder] = []

    def build():
        if fails:
            raise (OnnxUnavailable if engine.startswith("onnx") else EngineUnavailable)(fails)
        assert encoder is not None
        built.append(encoder)
        return encoder

    c = Candidate(engine, build, quantized=engine in (engines.ONNX_INT8, engines.ONNX_INT8_STATIC), **kw)
    c.built = built  # type: ignore[attr-defined]
    return c


def cpu_support(flags=BF16_CPU):
    return engine_support("cpu", cpu_flags=flags)


def run(family, candidates, *, requested="auto", device="cpu", support=None, cache=None):
    return choose(
        "m",
        requested,
        device=device,
        candidates=candidates,
        support=support or cpu_support(),
        embed=family.embed,
        cache=cache,
        timer=family.clock,
    )


def test_auto_picks_the_fastest_faithful_engine_and_closes_the_others() -> None:
    family = Family(Clock())
    onnx = FakeEncoder("onnx", 0.6e-3)
    bf16 = FakeEncoder("torch-bf16", 0.3e-3, noise=0.02)  # faithful: cosine ~0.9998
    int8 = FakeEncoder("onnx-int8", 0.1e-3, noise=0.5)  # fastest, but bent
    choice = run(family, [candidate("onnx", onnx), candidate("torch-bf16", bf16), candidate("onnx-int8", int8)])
    assert (choice.engine, choice.encoder) == ("torch-bf16", bf16)
    assert onnx.closed and int8.closed and not bf16.closed
    assert choice.reason.startswith("auto: fastest faithful engine")
    assert "torch-bf16 " in choice.reason and "ms (cosine ≥ 0.99" in choice.reason
    assert "onnx-int8 refused: probe" in choice.reason and "at least 0.999 needed" in choice.reason
    assert "torch-fp16: float16 runs on a CUDA GPU only" in choice.reason  # what this device cannot run, and why


def test_torch_float32_stays_when_nothing_is_faster() -> None:
    family = Family(Clock())
    slow = FakeEncoder("onnx", 5e-3)
    choice = run(family, [candidate("onnx", slow)])
    assert (choice.engine, choice.encoder) == ("torch", None) and slow.closed
    assert "onnx " in choice.reason and "ms (cosine" in choice.reason


def test_a_quantized_engine_must_also_keep_the_neighbours() -> None:
    family = Family(Clock())
    scrambled = FakeEncoder("onnx-int8", 0.1e-3, scramble=True)  # probes match, held-out texts do not
    choice = run(family, [candidate("onnx-int8", scrambled)])
    assert choice.engine == "torch" and scrambled.closed
    assert "onnx-int8 refused: it keeps" in choice.reason and "top-10 neighbours" in choice.reason
    good = FakeEncoder("onnx-int8", 0.1e-3, noise=0.001)
    choice = run(Family(Clock()), [candidate("onnx-int8", good)])
    assert choice.engine == "onnx-int8" and "top-10 overlap 1.000" in choice.reason


def test_static_int8_competes_as_a_quantized_engine() -> None:
    """The dynamic copy is bent (refused), the statically calibrated one is faithful and fastest: it runs."""
    family = Family(Clock())
    dynamic = FakeEncoder("onnx-int8", 0.1e-3, noise=0.2)
    static = FakeEncoder("onnx-int8-static", 0.15e-3, noise=0.001)
    bf16 = FakeEncoder("torch-bf16", 0.3e-3, noise=0.001)
    candidates = [candidate("torch-bf16", bf16), candidate("onnx-int8", dynamic), candidate("onnx-int8-static", static)]
    choice = run(family, candidates)
    assert (choice.engine, choice.encoder) == ("onnx-int8-static", static) and dynamic.closed and bf16.closed
    assert "onnx-int8 refused: probe" in choice.reason
    assert "onnx-int8-static " in choice.reason and "ms (top-10 overlap 1.000, cosine ≥ " in choice.reason
    assert engines.RUNTIME[choice.engine] == "onnxruntime"


def test_static_int8_that_loses_the_neighbours_or_bends_the_probes_is_refused() -> None:
    scrambled = FakeEncoder("onnx-int8-static", 0.1e-3, scramble=True)  # probes match, held-out texts do not
    choice = run(Family(Clock()), [candidate("onnx-int8-static", scrambled)])
    assert choice.engine == "torch" and scrambled.closed
    assert "onnx-int8-static refused: it keeps" in choice.reason and "top-10 neighbours of 16 held-out" in choice.reason
    bent = FakeEncoder("onnx-int8-static", 0.1e-3, noise=0.1)
    choice = run(Family(Clock()), [candidate("onnx-int8-static", bent)])
    assert choice.engine == "torch" and "onnx-int8-static refused: probe" in choice.reason
    assert "to torch float32 (at least 0.999 needed)" in choice.reason


def test_forced_static_int8_is_checked_for_neighbours_and_fails_the_load_naming_the_cosine() -> None:
    good = FakeEncoder("onnx-int8-static", 1.0, noise=0.001)  # slow: forced anyway
    choice = run(Family(Clock()), [candidate("onnx-int8-static", good)], requested="onnx-int8-static")
    assert choice.engine == "onnx-int8-static" and choice.encoder is good
    assert choice.reason == "models.backend is onnx-int8-static (probe cosine ≥ 1.00000, top-10 overlap 1.000)"
    bent = FakeEncoder("onnx-int8-static", 1e-4, noise=0.1)
    with pytest.raises(ModelLoadError) as err:
        run(Family(Clock()), [candidate("onnx-int8-static", bent)], requested="onnx-int8-static")
    message = str(err.value)
    assert message.startswith("Failed to load model m with engine onnx-int8-static: probe")
    assert (
        "has cosine 0.9" in message and "Set VECTORIZE_WORKER_MODELS_BACKEND (YAML models.backend) to auto" in message
    )
    assert bent.closed
    with pytest.raises(ModelLoadError, match="models.backend onnx-int8-static cannot run here: ONNX Runtime runs on"):
        run(
            Family(Clock()),
            [],
            requested="onnx-int8-static",
            device="cuda",
            support=engine_support("cuda", cpu_flags=PLAIN_CPU),
        )
    with pytest.raises(ModelLoadError, match="with engine onnx-int8-static: quantizing .* failed: ValueError: no"):
        run(Family(Clock()), [candidate("onnx-int8-static", fails="quantizing x to static int8 failed: ValueError: no")],
            requested="onnx-int8-static")  # fmt: skip


def test_static_int8_calibrates_on_texts_that_are_neither_probes_nor_held_out() -> None:
    from models.onnx_runtime import CALIBRATION_TEXTS

    docs, queries = engines.heldout_texts()
    assert 16 <= len(CALIBRATION_TEXTS) <= 64  # a few dozen: quantizing stays a matter of seconds
    assert len(set(CALIBRATION_TEXTS)) == len(CALIBRATION_TEXTS)
    assert not set(CALIBRATION_TEXTS) & (set(PROBE_TEXTS) | set(docs) | set(queries) | set(engines.timing_texts()))
    assert min(map(len, CALIBRATION_TEXTS)) <= 2 and max(len(t.split()) for t in CALIBRATION_TEXTS) > 256


def test_every_engine_is_a_value_of_the_setting() -> None:
    from typing import get_args

    from core.settings import Settings

    values = get_args(Settings.model_fields["models_backend"].annotation)
    assert sorted(values) == sorted(engines.BACKENDS) and values[0] == "auto"
    assert set(engines.RUNTIME) == set(engines.ENGINES)


def test_a_refused_onnx_export_warns_as_before_and_auto_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    family = Family(Clock())
    bf16 = FakeEncoder("torch-bf16", 0.3e-3)
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        choice = run(family, [candidate("onnx", fails="exporting BertModel failed"), candidate("torch-bf16", bf16)])
    assert choice.engine == "torch-bf16"
    assert "onnx refused: exporting BertModel failed" in choice.reason
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Model m runs on torch, not ONNX Runtime: exporting BertModel failed" in warning
    assert "VECTORIZE_WORKER_MODELS_BACKEND=torch" in warning


def test_a_strict_check_refuses_what_the_cosine_lets_through() -> None:
    def strict(got, expected):
        raise OnnxUnavailable("its probe vectors differ from torch's by 2.0e-03")

    family = Family(Clock())
    onnx = FakeEncoder("onnx", 0.1e-3, noise=0.001)
    choice = run(family, [candidate("onnx", onnx, strict=strict)])
    assert choice.engine == "torch" and onnx.closed
    assert "onnx refused: its probe vectors differ from torch's" in choice.reason


def test_bf16_is_not_a_candidate_on_a_cpu_without_it() -> None:
    family = Family(Clock())
    bf16 = FakeEncoder("torch-bf16", 0.1e-3)
    c = candidate("torch-bf16", bf16)
    choice = run(family, [c], support=cpu_support(PLAIN_CPU))
    assert choice.engine == "torch" and c.built == []
    assert "torch-bf16: this CPU has neither AMX nor AVX-512 BF16" in choice.reason


def test_engine_support_by_device() -> None:
    cpu = engine_support("cpu", cpu_flags=frozenset({"amx_bf16"}))
    assert [e for e, why in cpu.items() if why is None] == [
        "torch",
        "torch-bf16",
        "onnx",
        "onnx-int8",
        "onnx-int8-static",
    ]
    cuda = engine_support("cuda:1", cpu_flags=PLAIN_CPU, cuda_bf16=False)
    assert [e for e, why in cuda.items() if why is None] == ["torch", "torch-fp16"]
    assert cuda["onnx"] == cuda["onnx-int8-static"] == "ONNX Runtime runs on the CPU only and the device is cuda:1"
    assert cuda["torch-bf16"] == "the GPU (cuda:1) does not support bfloat16"
    assert engine_support("cuda", cpu_flags=PLAIN_CPU, cuda_bf16=True)["torch-bf16"] is None
    mps = engine_support("mps", cpu_flags=PLAIN_CPU)
    assert [e for e, why in mps.items() if why is None] == ["torch"]


def test_on_cuda_the_half_precision_engines_compete_and_onnx_is_never_built() -> None:
    """The decision logic only (fakes; no GPU here): fp16 and bf16 checked against float32 like on the CPU."""
    family = Family(Clock())
    fp16 = FakeEncoder("torch-fp16", 0.2e-3, noise=0.002)
    bf16 = FakeEncoder("torch-bf16", 0.1e-3, noise=0.3)  # faster, but bent
    onnx = candidate("onnx", FakeEncoder("onnx", 1e-6))
    support = engine_support("cuda:0", cpu_flags=PLAIN_CPU, cuda_bf16=True)
    choice = run(
        family,
        [onnx, candidate("torch-bf16", bf16), candidate("torch-fp16", fp16)],
        device="cuda:0",
        support=support,
    )
    assert choice.engine == "torch-fp16" and bf16.closed and onnx.built == []
    assert "onnx: ONNX Runtime runs on the CPU only" in choice.reason
    with pytest.raises(ModelLoadError, match="models.backend onnx runs on the CPU only and the device is cuda:0"):
        run(family, [onnx], requested="onnx", device="cuda:0", support=support)


def test_forced_torch_builds_nothing_and_measures_nothing() -> None:
    family = Family(Clock())
    c = candidate("onnx", FakeEncoder("onnx", 1e-6))
    choice = run(family, [c], requested="torch")
    assert (choice.engine, choice.encoder, choice.reason) == ("torch", None, "models.backend is torch")
    assert c.built == [] and family.calls == []


def test_a_forced_engine_is_checked_but_not_timed() -> None:
    family = Family(Clock())
    slow = FakeEncoder("torch-bf16", 1.0, noise=0.02)  # slower than torch: forced anyway
    choice = run(family, [candidate("torch-bf16", slow)], requested="torch-bf16")
    assert choice.engine == "torch-bf16" and choice.encoder is slow
    assert choice.reason.startswith("models.backend is torch-bf16 (probe cosine ≥ 0.99")
    assert family.calls == ["torch", "torch-bf16"]  # the probes once each: no timing runs


def test_a_forced_engine_that_does_not_match_fails_the_load_naming_the_setting() -> None:
    family = Family(Clock())
    bent = FakeEncoder("onnx-int8", 1e-4, noise=0.5)
    with pytest.raises(ModelLoadError) as err:
        run(family, [candidate("onnx-int8", bent)], requested="onnx-int8")
    message = str(err.value)
    assert message.startswith("Failed to load model m with engine onnx-int8: probe")
    assert "cosine" in message and "VECTORIZE_WORKER_MODELS_BACKEND (YAML models.backend) to auto" in message
    assert bent.closed


def test_forced_onnx_keeps_its_message_and_unsupported_engines_say_why() -> None:
    family = Family(Clock())
    with pytest.raises(ModelLoadError, match=r"with ONNX Runtime: export refused\. Set .* to auto \(falls back"):
        run(family, [candidate("onnx", fails="export refused")], requested="onnx")
    with pytest.raises(ModelLoadError) as err:
        run(family, [], requested="torch-bf16", support=cpu_support(PLAIN_CPU))
    assert "models.backend torch-bf16 cannot run here: this CPU has neither AMX nor AVX-512 BF16" in str(err.value)
    with pytest.raises(ModelLoadError, match="models.backend torch-fp16 cannot run here: float16 runs on a CUDA"):
        run(family, [], requested="torch-fp16")
    with pytest.raises(ModelLoadError, match="with engine torch-bf16: its family runs on torch float32 only"):
        run(family, [], requested="torch-bf16")
    with pytest.raises(ModelLoadError, match="models.backend 'tensorrt' is not one of auto, torch, onnx"):
        run(family, [], requested="tensorrt")


def test_a_failing_probe_embed_is_a_refusal_not_a_crash() -> None:
    family = Family(Clock())

    class Exploding(FakeEncoder):
        pass

    boom = Exploding("torch-bf16", 1e-4)
    original = family.embed

    def embed(texts, batch_size, encoder):
        if encoder is boom:
            raise RuntimeError("expected scalar type BFloat16 but found Float")
        return original(texts, batch_size, encoder)

    choice = choose(
        "m", "auto", device="cpu", candidates=[candidate("torch-bf16", boom)], support=cpu_support(),
        embed=embed, timer=family.clock,
    )  # fmt: skip
    assert (
        choice.engine == "torch" and "embedding the probe texts failed: RuntimeError: expected scalar" in choice.reason
    )


def test_faithfulness_refuses_nan_and_other_shapes() -> None:
    good = np.ones((4, 3), dtype=np.float32)
    assert engines.check_faithful("x", good, good) == pytest.approx(1.0)
    with pytest.raises(EngineUnavailable, match="not finite"):
        engines.check_faithful("x", np.full((4, 3), np.nan, dtype=np.float32), good)
    with pytest.raises(EngineUnavailable, match=r"shape \(4, 2\)"):
        engines.check_faithful("x", np.ones((4, 2), dtype=np.float32), good)


def test_top_k_overlap() -> None:
    rng = np.random.default_rng(0)
    docs, queries = rng.standard_normal((50, 8)), rng.standard_normal((5, 8))
    assert engines.top_k_overlap((docs, queries), (docs * 3, queries)) == 1.0
    assert engines.top_k_overlap((docs, queries), (-docs, queries)) == 0.0


# -- the cache --------------------------------------------------------------------------------------------------

MACHINE = {"cpu": "AMD EPYC", "flags": "abc", "threads": 2, "torch": "2.x", "onnxruntime": "1.x"}
ENGINES = ["torch", "onnx", "torch-bf16", "onnx-int8"]


def cache_at(root: Path, model: str = "model-1", machine=MACHINE) -> ChoiceCache:
    return ChoiceCache(root, model, machine, ENGINES)


def three(family: Family) -> tuple[list[Candidate], FakeEncoder]:
    bf16 = FakeEncoder("torch-bf16", 0.3e-3)
    return [candidate("onnx", FakeEncoder("onnx", 0.6e-3)), candidate("torch-bf16", bf16)], bf16


def test_the_choice_is_cached_and_a_restart_does_not_measure(tmp_path: Path) -> None:
    family = Family(Clock())
    candidates, _ = three(family)
    first = run(family, candidates, cache=cache_at(tmp_path))
    assert first.engine == "torch-bf16"
    [saved] = tmp_path.iterdir()
    entry = json.loads(saved.read_text())
    assert (
        entry["engine"] == "torch-bf16"
        and entry["key"]["model"] == "model-1"
        and set(entry["seconds"])
        == {
            "torch",
            "onnx",
            "torch-bf16",
        }
    )
    again = Family(Clock())
    candidates, bf16 = three(again)
    second = run(again, candidates, cache=cache_at(tmp_path))
    assert second.engine == "torch-bf16" and second.encoder is bf16
    assert candidates[0].built == []  # onnx not built: nothing measured
    assert again.calls == ["torch", "torch-bf16"]  # only the probe check of the cached engine
    assert second.reason == f"{first.reason} (measured earlier; cached in {saved})"


def test_another_model_or_machine_measures_anew(tmp_path: Path) -> None:
    family = Family(Clock())
    run(family, three(family)[0], cache=cache_at(tmp_path))
    for cache in (cache_at(tmp_path, model="model-2"), cache_at(tmp_path, machine={**MACHINE, "cpu": "Xeon"})):
        other = Family(Clock())
        candidates, _ = three(other)
        run(other, candidates, cache=cache)
        assert candidates[0].built  # measured: onnx was built and timed
    assert len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"engine": "torch-bf16", "reason": "r", "key": {"model": "someone else's"}}),
        "FOREIGN",  # the right key, an engine this machine does not measure
    ],
)
def test_a_corrupt_or_foreign_cache_entry_is_ignored_and_replaced(tmp_path: Path, content: str, caplog) -> None:
    cache = cache_at(tmp_path)
    if content == "FOREIGN":
        content = json.dumps({"key": cache.key, "engine": "tensorrt", "reason": "r"})
    cache.path.write_text(content)
    family = Family(Clock())
    candidates, _ = three(family)
    with caplog.at_level(logging.INFO, logger="worker.model_manager"):
        choice = run(family, candidates, cache=cache)
    assert choice.engine == "torch-bf16" and candidates[0].built  # measured again
    assert any(f"Ignoring the engine choice cache {cache.path}" in r.getMessage() for r in caplog.records)
    assert json.loads(cache.path.read_text())["engine"] == "torch-bf16"


def test_a_cached_engine_that_no_longer_matches_is_measured_again(tmp_path: Path, caplog) -> None:
    family = Family(Clock())
    run(family, three(family)[0], cache=cache_at(tmp_path))
    again = Family(Clock())
    bent = FakeEncoder("torch-bf16", 0.1e-3, noise=0.5)
    onnx = FakeEncoder("onnx", 0.6e-3)
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        choice = run(again, [candidate("onnx", onnx), candidate("torch-bf16", bent)], cache=cache_at(tmp_path))
    assert choice.engine == "onnx" and bent.closed
    assert any("the cached engine torch-bf16 no longer holds" in r.getMessage() for r in caplog.records)


def test_a_measurement_cut_short_by_the_budget_is_not_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engines, "MEASURE_BUDGET_S", 0.0)
    family = Family(Clock())
    candidates, _ = three(family)
    choice = run(family, candidates, cache=cache_at(tmp_path))
    assert (
        choice.engine == "torch" and "torch-bf16 not timed (the 0 s budget ran out; cosine ≥ 1.00000)" in choice.reason
    )
    assert candidates[0].built and candidates[1].built  # still built and checked: their errors would show
    assert list(tmp_path.iterdir()) == []


def test_a_choice_made_while_an_engine_could_not_be_built_is_not_cached(tmp_path: Path) -> None:
    """An export that failed may work after its marker is deleted; a missing package may be installed."""
    family = Family(Clock())
    bf16 = FakeEncoder("torch-bf16", 0.3e-3)
    candidates = [candidate("onnx", fails="onnx is not installed"), candidate("torch-bf16", bf16)]
    assert run(family, candidates, cache=cache_at(tmp_path)).engine == "torch-bf16"
    assert list(tmp_path.iterdir()) == []


def test_a_cache_that_cannot_be_written_still_chooses(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    family = Family(Clock())
    choice = run(family, three(family)[0], cache=cache_at(blocked / "engines"))
    assert choice.engine == "torch-bf16"


def test_a_large_model_is_timed_on_fewer_texts() -> None:
    family = Family(Clock(), torch_cost=0.1)  # 36 texts would take 3.6 fake seconds per run
    choice = run(family, [candidate("torch-bf16", FakeEncoder("torch-bf16", 0.05))])
    assert choice.engine == "torch-bf16"
    assert "timing 4 texts in one call" in choice.reason


def test_cpu_description_reads_proc_cpuinfo() -> None:
    name, flags = engines.cpu_description()
    if Path("/proc/cpuinfo").exists():
        assert name != "unknown" and flags
    else:
        assert (name, flags) == ("unknown", frozenset())


def test_an_engine_that_raises_a_library_error_is_left_out_not_fatal() -> None:
    def explode():
        raise RuntimeError("oneDNN: unsupported data type")

    family = Family(Clock())
    choice = run(family, [Candidate("torch-bf16", explode)])
    assert choice.engine == "torch"
    assert "torch-bf16 refused: building it failed: RuntimeError: oneDNN: unsupported data type" in choice.reason
    with pytest.raises(ModelLoadError, match="with engine torch-bf16: building it failed: RuntimeError: oneDNN"):
        run(family, [Candidate("torch-bf16", explode)], requested="torch-bf16")


def test_an_engine_that_breaks_while_timed_is_refused() -> None:
    family = Family(Clock())
    fragile = FakeEncoder("onnx", 1e-4)
    original = family.embed

    def embed(texts, batch_size, encoder):
        if encoder is fragile and batch_size == engines.TIMING_TEXTS:
            raise MemoryError("arena exhausted")
        return original(texts, batch_size, encoder)

    choice = choose(
        "m", "auto", device="cpu", candidates=[candidate("onnx", fragile)], support=cpu_support(), embed=embed,
        timer=family.clock,
    )  # fmt: skip
    assert choice.engine == "torch" and fragile.closed
    assert "onnx refused: timing it failed: MemoryError: arena exhausted" in choice.reason


def test_a_family_without_a_transformer_stays_on_torch_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    from models.base import EmbedderInfo, TorchEmbedder

    class Plain(TorchEmbedder):
        def __init__(self) -> None:
            self._info = EmbedderInfo(name="plain", family="fake", dim=DIM, device="cpu")

        def embed_texts(self, texts, *, batch_size, normalize):
            return np.stack([base_vector(t) for t in texts])

    model = Plain()
    with caplog.at_level(logging.WARNING, logger="worker.model_manager"):
        model.select_engine("auto", None)
    assert (model.info.engine, model.info.backend) == ("torch", "torch")
    assert model.info.engine_reason == "auto: torch float32, the only engine this model runs in (the fake family " \
        "runs on torch float32 only)"  # fmt: skip
    assert any("Model plain runs on torch, not ONNX Runtime" in r.getMessage() for r in caplog.records)
    with pytest.raises(ModelLoadError, match="with ONNX Runtime: the fake family runs on torch float32 only"):
        Plain().select_engine("onnx", None)
    forced = Plain()
    forced.select_engine("torch", None)
    assert (forced.info.engine, forced.info.engine_reason) == ("torch", "models.backend is torch")
