"""``make bench-migration``: a model migration's backfill throughput against ``worker_bulk``, in the same worker.

python -m bench.migration [--runs 3] [--store weaviate|chroma] [--worker-env KEY=VALUE]

Each run starts one worker (embedding cache off, the engine `auto` picks) and sends the bench's sentences as
batch tasks of 256 into a fresh collection: that is ``worker_bulk`` (texts/s). Then ``faust -A app migrate``
moves the collection to the same model (an adoption: every stored text is embedded again, by the worker, from
the ``reembed`` records the command sends through Kafka). The backfill's throughput is the records the new
collection holds divided by the time from the command's first line of the backfill (``Backfill: scanning``) to
the moment the new collection holds as many records as the live one (counted every 0.1 s). The ratio
``migration/worker_bulk`` is within one run; the medians are over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import corpus
from bench.run import CACHE_OFF, STORES, load, measure, start_worker
from bench.worker_cases import bulk_tasks
from core.settings import load_settings
from sinks.registry import create_stores
from tests.integration.harness import require_kafka

ROOT = Path(__file__).resolve().parents[1]


def store_settings(name: str) -> Any:
    extra: dict[str, Any] = {"vector_dbs": [name]}
    if name == "chroma":
        extra["chroma"] = {"url": STORES["chroma"]["VECTORIZE_WORKER_CHROMA__URL"]}
    return load_settings(**extra)


async def one_run(args: argparse.Namespace, texts: list[str], run: int) -> dict[str, Any]:
    alias = f"BenchMig_{os.getpid()}_{run}"
    env = {
        **CACHE_OFF,
        "VECTORIZE_WORKER_DEFAULT_COLLECTION": alias,
        "VECTORIZE_WORKER_MIGRATIONS_TOPIC": f"bench-migrations-{os.getpid()}-{run}",
        "VECTORIZE_WORKER_HEARTBEAT_INTERVAL": "1",
        # a collection under its own name, as one made before aliases: migrated to its own model (an adoption),
        # every record is embedded again by the same model as worker_bulk's, so the two figures compare
        "VECTORIZE_WORKER_COLLECTION_ALIASES": "false",
    }
    worker, rss, driver, port = await start_worker(args, f"mig{run}", env)
    store = create_stores(store_settings(args.store))[0]
    try:
        await driver.run(bulk_tasks(f"warm{run}", texts[:256]))
        bulk = await measure(driver, rss, port, bulk_tasks(f"bulk{run}", texts))
        live = store.count(alias)
        name = worker.get("/models")[1]["default"]  # the model the collection holds
        command_env = {**worker.env, "VECTORIZE_WORKER_WORKER_ID": f"bench-migrate-{run}"}
        cmd = [sys.executable, "-m", "app", "migrate", alias, "--to-model", name, "--yes"]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=command_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines: list[str] = []
        started: list[float] = []

        def read() -> None:
            for line in iter(proc.stdout.readline, ""):  # type: ignore[union-attr]
                lines.append(line)
                if line.startswith("Backfill: scanning") and not started:
                    started.append(time.monotonic())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while not started and proc.poll() is None:
            await asyncio.sleep(0.05)
        if not started:
            raise RuntimeError("the migrate command ended before its backfill:\n" + "".join(lines)[-4000:])
        shadow = re.search(r"^\s+new:\s+(\S+),", "".join(lines), re.M)
        if shadow is None:
            raise RuntimeError("no new collection in the command's plan:\n" + "".join(lines)[-4000:])
        held = 0
        while held < live:
            held = store.count(shadow.group(1))
            await asyncio.sleep(0.1)
        seconds = time.monotonic() - started[0]
        code = proc.wait(600)
        reader.join(10)
        if code != 0:
            raise RuntimeError(f"migrate exited {code}:\n" + "".join(lines)[-4000:])
        migration = {"records": live, "seconds": seconds, "records_per_s": live / seconds}
        print(
            f"  run {run + 1}: worker_bulk {bulk['texts_per_s']:.1f} texts/s, migration backfill "
            f"{migration['records_per_s']:.1f} records/s ({live} records in {seconds:.1f} s): "
            f"ratio {migration['records_per_s'] / bulk['texts_per_s']:.2f}",
            flush=True,
        )
        return {"worker_bulk": bulk, "migration": migration, "model": name}
    finally:
        rss.stop()
        await driver.stop()
        worker.stop(timeout=90)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--store", choices=["weaviate", "chroma"], default="weaviate")
    parser.add_argument("--worker-env", action="append", default=[], help="KEY=VALUE for the worker's environment")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "migration.json")
    args = parser.parse_args()
    require_kafka()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = corpus.sentences()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"bench.migration: {len(texts)} sentences, store {args.store}, {args.runs} run(s), load {load()}, CPU {cpu}")
    runs = [asyncio.run(one_run(args, texts, run)) for run in range(args.runs)]
    ratios = [r["migration"]["records_per_s"] / r["worker_bulk"]["texts_per_s"] for r in runs]
    summary = {
        "cpu": cpu,
        "store": args.store,
        "model": runs[0]["model"],
        "worker_bulk_texts_per_s": statistics.median(r["worker_bulk"]["texts_per_s"] for r in runs),
        "migration_records_per_s": statistics.median(r["migration"]["records_per_s"] for r in runs),
        "migration/worker_bulk": statistics.median(ratios),
        "ratios": ratios,
        "runs": runs,
    }
    print(
        f"median over {len(runs)} run(s): worker_bulk {summary['worker_bulk_texts_per_s']:.1f} texts/s, migration "
        f"{summary['migration_records_per_s']:.1f} records/s, migration/worker_bulk {summary['migration/worker_bulk']:.2f} "
        f"(each run: {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.8)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
