"""The peer: Infinity (``infinity-emb``) on the same model and texts, in its own virtualenv.

Run by ``bench.run --peer-python PYTHON`` with that virtualenv's interpreter
(infinity-emb pins its own torch/transformers stack, so it does not share the
worker's); prints one JSON object on the last line of stdout.

Two cases, as the worker's: ``bulk`` sends all texts in one ``embed`` call,
``small`` sends one ``embed`` call per text, all at once, and lets Infinity's
batch handler batch them across requests (its answer to the per-task flow).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def main() -> dict[str, object]:
    from infinity_emb import AsyncEngineArray, EngineArgs  # type: ignore[import-not-found]

    from bench import corpus

    texts = corpus.sentences()
    model_path = os.environ["BENCH_MODEL_PATH"]  # the packaged all-MiniLM-L6-v2 (no download)
    args = EngineArgs(
        model_name_or_path=model_path,
        engine="torch",
        device="cpu",
        batch_size=32,
        bettertransformer=False,
        model_warmup=True,
    )
    array = AsyncEngineArray.from_args([args])
    engine = array[0]
    out: dict[str, object] = {"peer": "infinity-emb", "texts": len(texts)}
    async with engine:
        await engine.embed(sentences=texts[:64])  # warm-up
        t0 = time.perf_counter()
        vectors, _ = await engine.embed(sentences=texts)
        bulk = time.perf_counter() - t0
        assert len(vectors) == len(texts)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(engine.embed(sentences=[t]) for t in texts))
        small = time.perf_counter() - t0
        assert len(results) == len(texts)
    out["texts_per_s"] = {"infinity_bulk": len(texts) / bulk, "infinity_small": len(texts) / small}
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
