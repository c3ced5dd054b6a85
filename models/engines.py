"""Which engine runs a text model's transformer: the fastest faithful one on this machine, measured at load.

``models.backend`` (core/settings.py) names an engine or ``auto``:

* ``torch`` — torch in float32, the reference every other engine is checked against;
* ``torch-bf16`` — the transformer's weights in bfloat16 (a copy; the float32 one is released), on a CPU with
  AMX or AVX-512 BF16 (``amx_bf16`` / ``avx512_bf16`` in /proc/cpuinfo) or a CUDA GPU that supports it;
* ``torch-fp16`` — float16 weights, CUDA only;
* ``onnx`` — ONNX Runtime float32 on the CPU (models/onnx_runtime.py: exported once, cached);
* ``onnx-int8`` — that export with its weights quantized to int8 (ONNX Runtime dynamic quantization), CPU;
* ``onnx-int8-static`` — that export quantized to int8 with activation ranges calibrated on fixed texts (ONNX
  Runtime static quantization, QDQ; :func:`~models.onnx_runtime.static_quantized_model`), CPU;
* ``auto`` (default) — every engine the device supports is built, checked and timed; the fastest that
  passes runs the model, else torch.

Faithfulness (every engine but ``torch``): the family embeds :data:`~models.onnx_runtime.PROBE_TEXTS`
(mixed case, accents, padding, one text past the length limit) with the engine and with torch float32;
the cosine of every probe's two vectors must be at least :data:`COSINE_FLOOR`. ``onnx`` must also match
to :data:`~models.onnx_runtime.PARITY_TOLERANCE` of the norm (it is float32 too). A quantized engine must
also keep :data:`OVERLAP_FLOOR` of the top-10 neighbours of :data:`RETRIEVAL_QUERIES` held-out queries
among :data:`RETRIEVAL_DOCS` held-out texts. An engine that fails is refused: under ``auto`` it is left
out (the reason goes into ``engine_reason``); forced, the model fails to load with that reason.

Speed (``auto`` only): each engine embeds :data:`TIMING_TEXTS` texts in one call (batched as the worker's
bulk tasks are) and four texts one by one (its one-text tasks) after a warm-up; the best of
:data:`TIMING_REPS` runs counts. A large model gets fewer timing texts (the float32 warm-up decides), and
the whole measurement stops timing engines after :data:`MEASURE_BUDGET_S` seconds (they are still built
and checked). Such a choice is not cached, nor one where an engine could not be built (onnx not installed,
an export that failed, an unwritable cache folder): the next load measures again.

The choice is cached (``<models.cache_dir>/engines/<hash>.json``) per model — its identity, the hash of its
weights and vector settings (models/fingerprint.py) — and machine (CPU model name and flags, thread count,
GPU name, torch and onnxruntime versions): a restart builds and checks the cached engine without timing
anything. An entry that cannot be read, or was written for another model or machine, is ignored and
measured anew; delete the folder to measure again after a change the key does not see.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from core.errors import ModelLoadError
from models.onnx_runtime import BACKEND_SETTING, PROBE_BATCH, PROBE_TEXTS, OnnxUnavailable, own_partial

log = logging.getLogger("worker.model_manager")
T = TypeVar("T")

TORCH = "torch"
TORCH_BF16 = "torch-bf16"
TORCH_FP16 = "torch-fp16"
ONNX = "onnx"
ONNX_INT8 = "onnx-int8"
ONNX_INT8_STATIC = "onnx-int8-static"
#: every engine, in the order ``auto`` builds them (the reference first; the int8 ones reuse the ONNX export)
ENGINES = (TORCH, ONNX, TORCH_BF16, TORCH_FP16, ONNX_INT8, ONNX_INT8_STATIC)
#: the values of ``models.backend``
BACKENDS = ("auto", *ENGINES)
#: what runs each engine (EmbedderInfo.backend)
RUNTIME = {
    TORCH: "torch",
    TORCH_BF16: "torch",
    TORCH_FP16: "torch",
    ONNX: "onnxruntime",
    ONNX_INT8: "onnxruntime",
    ONNX_INT8_STATIC: "onnxruntime",
}
#: the lowest cosine between an engine's probe vector and torch float32's
COSINE_FLOOR = 0.999
#: the share of top-10 neighbours a quantized engine must keep on the held-out set
OVERLAP_FLOOR = 0.99
TOP_K = 10
RETRIEVAL_DOCS = 96
RETRIEVAL_QUERIES = 16
TIMING_TEXTS = 32
TIMING_SINGLES = 4
TIMING_REPS = 2
#: a timing run of the float32 reference longer than this shrinks the timing texts (large models)
TIMING_TARGET_S = 0.4
#: after this many seconds of measuring, engines not yet timed are left out (the reason says so)
MEASURE_BUDGET_S = 8.0
CACHE_VERSION = 1
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class EngineUnavailable(Exception):
    """This engine cannot run this model faithfully here; the message says why."""


@dataclass
class Candidate:
    """An engine the family can build: ``build()`` returns its encoder (the callable the family's ``embed``
    takes) or raises :class:`EngineUnavailable`; ``strict`` checks the probes further (raises too)."""

    engine: str
    build: Callable[[], Any]
    quantized: bool = False
    strict: Callable[[np.ndarray, np.ndarray], None] | None = None


@dataclass(frozen=True)
class Choice:
    engine: str
    encoder: Any  # None: torch float32, the family's own path
    reason: str


Embed = Callable[[Sequence[str], int, Any], np.ndarray]


# -- what the machine supports ---------------------------------------------------------------------------------


def cpu_description() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (``("unknown", {})`` where there is none)."""
    name, flags = "unknown", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "unknown":
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                if name != "unknown" and flags:
                    break
    except OSError:
        pass
    return name, flags


def engine_support(device: str, *, cpu_flags: frozenset[str], cuda_bf16: bool = False) -> dict[str, str | None]:
    """Each engine: None where ``device`` can run it, else why not (for the reason and the error messages)."""
    on = device.split(":")[0]
    out: dict[str, str | None] = {TORCH: None}
    if on == "cpu":
        has = [f for f in BF16_FLAGS if f in cpu_flags]
        out[TORCH_BF16] = (
            None if has else "this CPU has neither AMX nor AVX-512 BF16 (no amx_bf16 or avx512_bf16 in /proc/cpuinfo)"
        )
        out[TORCH_FP16] = "float16 runs on a CUDA GPU only and the device is cpu"
        out[ONNX] = out[ONNX_INT8] = out[ONNX_INT8_STATIC] = None
    else:
        onnx_off = f"ONNX Runtime runs on the CPU only and the device is {device}"
        out[ONNX] = out[ONNX_INT8] = out[ONNX_INT8_STATIC] = onnx_off
        if on == "cuda":
            out[TORCH_FP16] = None
            out[TORCH_BF16] = None if cuda_bf16 else f"the GPU ({device}) does not support bfloat16"
        else:
            out[TORCH_FP16] = out[TORCH_BF16] = f"reduced precision is measured on CPU and CUDA only, not {device}"
    return out


def machine_signature(device: str) -> dict[str, Any]:
    """What a measured choice depends on besides the model: CPU, flags, threads, GPU, library versions."""
    import torch

    name, flags = cpu_description()
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    gpu = None
    if device.startswith("cuda"):
        try:
            gpu = torch.cuda.get_device_name(torch.device(device))
        except Exception:  # noqa: BLE001 - a name only
            gpu = "unknown"
    return {
        "cpu": name,
        "flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
        "threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "onnxruntime": ort,
    }


# -- checks -----------------------------------------------------------------------------------------------------


def check_faithful(engine: str, got: np.ndarray, expected: np.ndarray) -> float:
    """The lowest probe cosine to torch float32; raises :class:`EngineUnavailable` below :data:`COSINE_FLOOR`."""
    if got.shape != expected.shape:
        raise EngineUnavailable(f"its probe vectors have shape {got.shape}, torch float32's {expected.shape}")
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosines = np.sum(got.astype(np.float64) * expected, axis=1) / np.maximum(norms, 1e-12)
    if not np.all(np.isfinite(cosines)):
        raise EngineUnavailable("its probe vectors are not finite (NaN or inf)")
    worst = int(np.argmin(cosines))
    if cosines[worst] < COSINE_FLOOR:
        raise EngineUnavailable(
            f"probe {worst + 1} of {len(cosines)} has cosine {cosines[worst]:.5f} to torch float32 "
            f"(at least {COSINE_FLOOR} needed)"
        )
    return float(cosines.min())


def heldout_texts() -> tuple[list[str], list[str]]:
    """Seeded documents and queries over a few topics (the retrieval check's held-out set; no file, no download)."""
    topics = {
        "finance": ["bank", "interest rates", "stock market", "bonds", "inflation", "the central bank", "investors"],
        "weather": ["rain", "storm", "snow", "heat wave", "the forecast", "wind", "flooding"],
        "sport": ["the team", "the match", "the coach", "the league", "a goal", "the final", "the striker"],
        "cooking": ["the recipe", "garlic", "the oven", "fresh bread", "a sauce", "the chef", "vegetables"],
        "science": ["the experiment", "researchers", "the telescope", "a new species", "the vaccine", "data"],
        "travel": ["the flight", "the hotel", "the train", "tourists", "the border", "a beach", "the museum"],
    }
    verbs = ["rose", "fell", "changed", "surprised everyone", "was delayed", "improved", "was praised", "worried"]
    tails = ["on Monday", "this week", "after the report", "in the north", "despite the warnings", "again", ""]
    rng = random.Random(1807)
    names = list(topics)

    def sentence() -> str:
        topic = topics[rng.choice(names)]
        a, b = rng.sample(topic, 2)
        return f"{a.capitalize()} {rng.choice(verbs)} and {b} {rng.choice(verbs)} {rng.choice(tails)}".strip() + "."

    return [sentence() for _ in range(RETRIEVAL_DOCS)], [sentence() for _ in range(RETRIEVAL_QUERIES)]


def top_k_overlap(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean share of each query's top-k documents (by cosine) that the candidate's vectors keep."""

    def top(docs: np.ndarray, queries: np.ndarray) -> np.ndarray:
        d = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        k = min(TOP_K, len(d))
        return np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :k]

    want, got = top(*reference), top(*candidate)
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(want, got, strict=True)]))


def timing_texts(count: int = TIMING_TEXTS) -> list[str]:
    """Texts of the lengths tasks usually have (10 to 60 words), seeded."""
    docs, _ = heldout_texts()
    rng = random.Random(7)
    return [" ".join(rng.choice(docs) for _ in range(1 + i % 6)) for i in range(count)]


# -- the cache --------------------------------------------------------------------------------------------------


class ChoiceCache:
    """One JSON file per model and machine under ``root``; unreadable or foreign entries are ignored."""

    def __init__(self, root: Path, model: str, machine: Mapping[str, Any], engines: Sequence[str]) -> None:
        self.key = {"version": CACHE_VERSION, "model": model, "machine": dict(machine), "engines": list(engines)}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.path = Path(root) / f"{digest}.json"

    def load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.info("Engine choice cache %s cannot be read (%s); measuring again", self.path, exc)
            return None
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            engine, reason = entry.get("engine"), entry.get("reason")
            if entry.get("key") != json.loads(json.dumps(self.key, default=str)):
                raise ValueError("written for another model, machine or version")
            if engine not in self.key["engines"] or not isinstance(reason, str):
                raise ValueError(f"engine {engine!r} is not one measured here")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            log.info("Ignoring the engine choice cache %s (%s); measuring again", self.path, exc)
            return None
        return entry

    def save(self, engine: str, reason: str, seconds: Mapping[str, float]) -> None:
        entry = {"key": self.key, "engine": engine, "reason": reason, "seconds": dict(seconds), "at": time.time()}
        partial = own_partial(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(entry, indent=1, default=str), encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as exc:  # a read-only cache: the next start measures again
            log.info("Could not save the engine choice to %s (%s); the next load measures again", self.path, exc)
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass


def cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser() / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vectorize-worker" / "engines"


# -- the choice -------------------------------------------------------------------------------------------------


def _build(candidate: Candidate) -> Any:
    """The candidate's encoder; anything it raises becomes :class:`EngineUnavailable` with the reason."""
    try:
        return candidate.build()
    except (EngineUnavailable, OnnxUnavailable) as exc:
        raise EngineUnavailable(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a library's own error: this engine is out, the model still loads
        raise EngineUnavailable(f"building it failed: {type(exc).__name__}: {exc}") from None


def _guarded(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except EngineUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - an engine that breaks on other shapes than the probes'
        raise EngineUnavailable(f"{what} failed: {type(exc).__name__}: {exc}") from None


def _close(encoder: Any) -> None:
    close = getattr(encoder, "close", None)
    if close is not None:
        close()


def _forced_error(name: str, engine: str, reason: str) -> ModelLoadError:
    if engine == ONNX:  # the message models.backend onnx always gave
        return ModelLoadError(
            f"Failed to load model {name} with ONNX Runtime: {reason}. Set {BACKEND_SETTING} to auto (falls back "
            "to torch) or torch."
        )
    return ModelLoadError(
        f"Failed to load model {name} with engine {engine}: {reason}. Set {BACKEND_SETTING} to auto (the fastest "
        "engine that matches torch float32 here) or torch."
    )


def unsupported_error(name: str, engine: str, why: str) -> ModelLoadError:
    if engine == ONNX:
        return ModelLoadError(
            f"Failed to load model {name}: models.backend onnx runs on the CPU only and {why.split(' and ')[-1]}; "
            f"set {BACKEND_SETTING} to auto or torch, or VECTORIZE_WORKER_DEVICE=cpu."
        )
    return ModelLoadError(
        f"Failed to load model {name}: models.backend {engine} cannot run here: {why}; set {BACKEND_SETTING} to "
        "auto (the fastest engine that matches torch float32 here) or torch."
    )


class _Probe:
    """Runs the checks and timings of one model, with the reference vectors computed once."""

    def __init__(self, name: str, embed: Embed, timer: Callable[[], float]) -> None:
        self.name = name
        self.embed = embed
        self.timer = timer
        self._expected = embed(PROBE_TEXTS, PROBE_BATCH, None)
        self._heldout: tuple[np.ndarray, np.ndarray] | None = None
        self.texts = timing_texts()

    def check(self, candidate: Candidate, encoder: Any) -> float:
        try:
            got = self.embed(PROBE_TEXTS, PROBE_BATCH, encoder)
        except Exception as exc:  # noqa: BLE001 - a model whose modules need more than token states
            raise EngineUnavailable(f"embedding the probe texts failed: {type(exc).__name__}: {exc}") from None
        worst = check_faithful(candidate.engine, got, self._expected)
        if candidate.strict is not None:
            try:
                candidate.strict(got, self._expected)
            except OnnxUnavailable as exc:
                raise EngineUnavailable(str(exc)) from None
        return worst

    def check_retrieval(self, encoder: Any) -> float:
        docs, queries = heldout_texts()
        if self._heldout is None:
            self._heldout = (self.embed(docs, TIMING_TEXTS, None), self.embed(queries, TIMING_TEXTS, None))
        got = _guarded(
            "embedding the held-out texts",
            lambda: (self.embed(docs, TIMING_TEXTS, encoder), self.embed(queries, TIMING_TEXTS, encoder)),
        )
        overlap = top_k_overlap(self._heldout, got)
        if overlap < OVERLAP_FLOOR:
            raise EngineUnavailable(
                f"it keeps {overlap:.3f} of the top-{TOP_K} neighbours of {len(queries)} held-out queries among "
                f"{len(docs)} texts (at least {OVERLAP_FLOOR} needed)"
            )
        return overlap

    def run(self, encoder: Any) -> float:
        start = self.timer()
        self.embed(self.texts, TIMING_TEXTS, encoder)
        for text in self.texts[:TIMING_SINGLES]:
            self.embed([text], 1, encoder)
        return self.timer() - start

    def time(self, encoder: Any) -> float:
        def timed() -> float:
            self.run(encoder)  # warm-up: kernels for these shapes, the allocator's pools
            return min(self.run(encoder) for _ in range(TIMING_REPS))

        return _guarded("timing it", timed)


def choose(
    name: str,
    requested: str,
    *,
    device: str,
    candidates: Sequence[Candidate],
    support: Mapping[str, str | None],
    embed: Embed,
    cache: ChoiceCache | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Choice:
    """The engine ``requested`` (``models.backend``) resolves to for this model on this device.

    ``candidates`` are the engines the family can build (torch float32 not among them: it is the reference,
    ``embed(texts, batch_size, None)``); ``support`` says which the device runs (:func:`engine_support`).
    Raises :class:`ModelLoadError` when a forced engine cannot run or is not faithful.
    """
    if requested not in BACKENDS:
        raise ModelLoadError(
            f"Failed to load model {name}: models.backend {requested!r} is not one of {', '.join(BACKENDS)}; "
            f"fix {BACKEND_SETTING}."
        )
    by_engine = {c.engine: c for c in candidates}
    if requested == TORCH:
        return Choice(TORCH, None, f"models.backend is {TORCH}")
    if requested != "auto":
        why = support.get(requested, f"this device ({device}) does not run it")
        if why is not None:
            raise unsupported_error(name, requested, why)
        if requested not in by_engine:
            raise _forced_error(name, requested, "its family runs on torch float32 only")
        candidate = by_engine[requested]
        encoder = None
        try:
            encoder = _build(candidate)
            probe = _Probe(name, embed, timer)
            worst = probe.check(candidate, encoder)
            extra = ""
            if candidate.quantized:
                extra = f", top-{TOP_K} overlap {probe.check_retrieval(encoder):.3f}"
        except (EngineUnavailable, OnnxUnavailable) as exc:
            _close(encoder)
            raise _forced_error(name, requested, str(exc)) from None
        return Choice(requested, encoder, f"models.backend is {requested} (probe cosine ≥ {worst:.5f}{extra})")
    usable = [c for c in candidates if support.get(c.engine, "unknown engine") is None]
    if not usable:
        unsupported = "; ".join(f"{e}: {why}" for e, why in support.items() if why is not None)
        return Choice(TORCH, None, f"auto: torch float32 is the only engine here ({unsupported})")
    if cache is not None:
        cached = _from_cache(name, cache, by_engine, embed, timer)
        if cached is not None:
            return cached
    return _measure(name, usable, support, embed, cache, timer)


def _refused(name: str, engine: str, exc: Exception, notes: dict[str, str]) -> None:
    notes[engine] = f"refused: {exc}"
    if engine == ONNX:  # the warning models.backend auto always gave
        log.warning(
            "Model %s runs on torch, not ONNX Runtime: %s. Set VECTORIZE_WORKER_MODELS_BACKEND=torch (YAML "
            "models.backend: torch) to skip the attempt.",
            name,
            exc,
        )
    else:
        log.info("Model %s: engine %s refused: %s", name, engine, exc)


def _from_cache(
    name: str, cache: ChoiceCache, by_engine: Mapping[str, Candidate], embed: Embed, timer: Callable[[], float]
) -> Choice | None:
    entry = cache.load()
    if entry is None:
        return None
    engine, reason = entry["engine"], f"{entry['reason']} (measured earlier; cached in {cache.path})"
    if engine == TORCH:
        return Choice(TORCH, None, reason)
    candidate = by_engine.get(engine)
    if candidate is None:
        return None
    encoder = None
    try:
        encoder = _build(candidate)
        _Probe(name, embed, timer).check(candidate, encoder)
    except (EngineUnavailable, OnnxUnavailable) as exc:
        _close(encoder)
        log.warning("Model %s: the cached engine %s no longer holds (%s); measuring again", name, engine, exc)
        return None
    return Choice(engine, encoder, reason)


def _measure(
    name: str,
    usable: Sequence[Candidate],
    support: Mapping[str, str | None],
    embed: Embed,
    cache: ChoiceCache | None,
    timer: Callable[[], float],
) -> Choice:
    started = timer()
    probe = _Probe(name, embed, timer)
    warm = probe.run(None)
    if warm > TIMING_TARGET_S:  # a large model: fewer timing texts keep the measurement short
        keep = max(TIMING_SINGLES, int(len(probe.texts) * TIMING_TARGET_S / warm))
        probe.texts = probe.texts[:keep]
    seconds = {TORCH: min(probe.run(None) for _ in range(TIMING_REPS))}
    best: tuple[str, Any, float] = (TORCH, None, seconds[TORCH])
    notes: dict[str, str] = {}
    cacheable = True  # a choice made without every engine built and timed is not kept
    for candidate in usable:
        engine = candidate.engine
        try:
            encoder = _build(candidate)
        except EngineUnavailable as exc:
            cacheable = False  # a missing package, an unwritable cache, an export to retry: measured again next time
            _refused(name, engine, exc, notes)
            continue
        try:
            worst = probe.check(candidate, encoder)
            if timer() - started > MEASURE_BUDGET_S:  # still built and checked: its errors show on a busy machine
                notes[engine] = f"not timed (the {MEASURE_BUDGET_S:.0f} s budget ran out; cosine ≥ {worst:.5f})"
                cacheable = False
                _close(encoder)
                continue
            took = probe.time(encoder)
            seconds[engine] = took
            if candidate.quantized and took < best[2]:
                notes[engine] = f"top-{TOP_K} overlap {probe.check_retrieval(encoder):.3f}, "
            notes[engine] = notes.get(engine, "") + f"cosine ≥ {worst:.5f}"
        except (EngineUnavailable, OnnxUnavailable) as exc:
            _close(encoder)
            seconds.pop(engine, None)
            notes.pop(engine, None)
            _refused(name, engine, exc, notes)
            continue
        if took < best[2]:
            _close(best[1])
            best = (engine, encoder, took)
        else:
            _close(encoder)
    parts = [f"{TORCH} {seconds[TORCH] * 1000:.0f} ms"]
    for candidate in usable:
        engine = candidate.engine
        note = notes.get(engine, "")
        parts.append(f"{engine} {seconds[engine] * 1000:.0f} ms ({note})" if engine in seconds else f"{engine} {note}")
    skipped = [f"{e}: {why}" for e, why in support.items() if why is not None]
    reason = (
        f"auto: fastest faithful engine, timing {len(probe.texts)} texts in one call and "
        f"{TIMING_SINGLES} alone: " + "; ".join(parts)
    )
    if skipped:
        reason += f" (not on this device: {'; '.join(skipped)})"
    log.info("Model %s runs on %s: %s (measured in %.1f s)", name, best[0], reason, timer() - started)
    if cache is not None and cacheable:
        cache.save(best[0], reason, seconds)
    return Choice(best[0], best[1], reason)


class TorchTransformer:
    """A transformer's token states (float32) from a torch module: a reduced-precision copy, or under torch float32
    the model's own module.

    The module runs traced (TorchScript, ``torch.jit.trace`` on its first call's inputs): a traced forward is one
    call that releases Python's GIL until it ends, where the module's own forward takes the GIL back between
    every operator and waits for it whenever the event loop holds it (up to the 5 ms switch interval each time).
    In the worker that made each model call two to three times slower than the same call alone
    (docs/performance.md). The trace shares the module's weights; it is checked like any engine (its vectors
    against torch float32's, models/engines.py); a module that cannot be traced, or whose trace fails on a later
    input (a shape it does not generalise to), runs as it is from then on (logged once).
    """

    def __init__(self, module: Any, dtype: Any, device: str, *, trace: bool = True) -> None:
        import inspect
        import threading

        self.module = module
        self.dtype = dtype
        self.device = device
        accepted = set(inspect.signature(module.forward).parameters)
        self.input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted)
        self.traced: Any = None
        self._traced_inputs: tuple[str, ...] = ()  # the inputs it was traced with: others run the module
        self._trace = trace
        self._trace_lock = threading.Lock()

    def __call__(self, features: Mapping[str, Any]) -> Any:
        feeds = {n: features[n].to(self.device) for n in self.input_names if n in features}
        traced = self.traced if self.traced is not None else self._traced_for(feeds)
        out = None
        if traced is not None and tuple(feeds) == self._traced_inputs:
            try:
                out = traced(**feeds)
            except RuntimeError as exc:  # a shape the trace does not generalise to: the module from now on
                from models.device import is_out_of_memory

                if is_out_of_memory(exc):
                    raise
                self._untrace(exc)
        if out is None:
            out = self.module(**feeds)
        if isinstance(out, Mapping):
            states = out["last_hidden_state"]
        else:
            states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return states.float()

    def _traced_for(self, feeds: dict[str, Any]) -> Any:
        """The traced module (traced now on ``feeds``, once), or None: tracing is off or failed."""
        if not self._trace:
            return None
        with self._trace_lock:
            if self.traced is None and self._trace:
                import warnings

                import torch

                try:
                    # traced on one input with a padded position, so that no branch for an unpadded batch
                    # (attention without a mask) is what the trace records; no longer than the input the
                    # model was given (a model's position embeddings end somewhere)
                    keep = max(1, min(next(iter(feeds.values())).shape[1] - 1, 8))
                    example = {n: torch.cat([t[:1, :keep], t[:1, :1]], dim=1) for n, t in feeds.items()}
                    if "attention_mask" in example:
                        example["attention_mask"][:, -1] = 0
                    with warnings.catch_warnings():  # the tracer warns about every Python int it records
                        warnings.simplefilter("ignore")
                        self.traced = torch.jit.trace(
                            self.module, example_kwarg_inputs=example, check_trace=False, strict=False
                        )
                    self._traced_inputs = tuple(feeds)
                except Exception as exc:  # noqa: BLE001 - untraceable: the module runs as it is
                    self._untrace(exc)
            return self.traced

    def _untrace(self, exc: BaseException) -> None:
        self._trace, self.traced = False, None
        log.warning(
            "The %s transformer runs untraced from now on (%s: %s): each call takes Python's GIL between operators",
            self.dtype,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )

    def memory_bytes(self) -> int:
        from models.base import module_bytes

        return module_bytes(self.module) if self.module is not None else 0  # the trace shares these weights

    def close(self) -> None:
        self.module = None
        self.traced = None


def reduced_precision(transformer: Any, engine: str, device: str) -> TorchTransformer:
    """A copy of ``transformer`` with its weights in bfloat16 or float16; raises :class:`EngineUnavailable`."""
    import copy

    import torch

    dtype = torch.bfloat16 if engine == TORCH_BF16 else torch.float16
    try:
        module = copy.deepcopy(transformer).to(dtype).eval()
    except Exception as exc:  # noqa: BLE001 - a module that cannot be copied or cast
        raise EngineUnavailable(f"copying the transformer to {dtype} failed: {type(exc).__name__}: {exc}") from None
    return TorchTransformer(module, dtype, device)
