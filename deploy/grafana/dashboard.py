"""Writes deploy/grafana/vectorize-worker.json, the Grafana dashboard of the workers (docs/kubernetes.md).

    python deploy/grafana/dashboard.py        # regenerate the JSON after editing the panels below

Every query reads metrics the worker exports on :9091 (ops/metrics.py); tests/unit/test_observability.py
checks that, and that the JSON file is this script's output. Import the JSON into Grafana (Dashboards >
Import) and pick the Prometheus data source that scrapes the workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("vectorize-worker.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
TASKS = 'topic="vectorization-tasks"'


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(
    kind: str,
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    grid: tuple[int, int, int, int],
    stack: bool = False,
    max_value: float | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit}
    if max_value is not None:
        defaults["max"] = max_value
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 15 if stack else 5,
            "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)],
    }
    if kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    else:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return out


def row(title: str, y: int) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def panels() -> list[dict[str, Any]]:
    lag = f"max by (topic, partition) (worker_consumer_lag{{{TASKS}}})"
    quantiles = [
        (
            f"histogram_quantile({q}, sum by (le) (rate(worker_task_processing_seconds_bucket[$__rate_interval])))",
            f"p{p}",
        )
        for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))
    ]
    out = [
        row("Overview", 0),
        panel(
            "stat",
            "Live workers",
            "Workers Prometheus scrapes (each exports worker_memory_usage_bytes from its start).",
            [("count(worker_memory_usage_bytes)", "workers")],
            grid=(0, 1, 4, 4),
        ),
        panel(
            "stat",
            "Lag (records)",
            "Records of vectorization-tasks not yet committed by the group, all partitions.",
            [(f"sum({lag})", "lag")],
            grid=(4, 1, 4, 4),
        ),
        panel(
            "stat",
            "Throughput",
            "Tasks finished per second, all workers.",
            [("sum(rate(worker_tasks_processed_total[$__rate_interval]))", "tasks/s")],
            unit="ops",
            grid=(8, 1, 4, 4),
        ),
        panel(
            "stat",
            "Tasks in flight",
            "Tasks taken in and not yet acknowledged, all workers.",
            [("sum(worker_active_tasks)", "in flight")],
            grid=(12, 1, 4, 4),
        ),
        panel(
            "stat",
            "Dead letters (1h)",
            "Failed tasks in the last hour: each is a record on vectorization-tasks-dlq.",
            [('sum(increase(worker_tasks_processed_total{status="failed"}[1h]))', "dead letters")],
            grid=(16, 1, 4, 4),
        ),
        panel(
            "stat",
            "Stores up",
            "Workers whose vector stores answer / workers.",
            [('sum(worker_dependency_up{dependency="store"})', "up")],
            grid=(20, 1, 4, 4),
        ),
        row("Throughput and latency", 5),
        panel(
            "timeseries",
            "Throughput by status",
            "Tasks finished per second by final status (failed = dead-lettered).",
            [("sum by (status) (rate(worker_tasks_processed_total[$__rate_interval]))", "{{status}}")],
            unit="ops",
            grid=(0, 6, 12, 8),
            stack=True,
        ),
        panel(
            "timeseries",
            "Task latency percentiles",
            "Intake to final status (worker_task_processing_seconds), all workers.",
            quantiles,
            unit="s",
            grid=(12, 6, 12, 8),
        ),
        row("Kafka", 14),
        panel(
            "timeseries",
            "Lag per partition",
            "Records behind on each partition of vectorization-tasks (end offset - committed offset); "
            "one partition growing alone points at its worker.",
            [(f"max by (partition) ({lag})", "partition {{partition}}")],
            grid=(0, 15, 12, 8),
            stack=True,
        ),
        panel(
            "timeseries",
            "Tasks in flight per worker",
            "worker_active_tasks: taken in, not yet acknowledged (bounded by MAX_INFLIGHT_TASKS).",
            [("sum by (instance) (worker_active_tasks)", "{{instance}}")],
            grid=(12, 15, 12, 8),
        ),
        row("Model", 23),
        panel(
            "timeseries",
            "Model busy",
            "Share of time each worker's model computes (model seconds per second); near 100% the model is "
            "the bottleneck: more workers (or GPUs) help.",
            [("sum by (instance) (rate(worker_inference_seconds_sum[$__rate_interval]))", "{{instance}}")],
            unit="percentunit",
            grid=(0, 24, 8, 8),
        ),
        panel(
            "timeseries",
            "Model call time p95",
            "Time of one model call by model.",
            [
                (
                    "histogram_quantile(0.95, sum by (le, model) (rate(worker_inference_seconds_bucket[$__rate_interval])))",
                    "{{model}}",
                )
            ],
            unit="s",
            grid=(8, 24, 8, 8),
        ),
        panel(
            "timeseries",
            "Texts per model call",
            "Batch sizes the model queue cuts (median and p95).",
            [
                ("histogram_quantile(0.5, sum by (le) (rate(worker_batch_size_bucket[$__rate_interval])))", "p50"),
                ("histogram_quantile(0.95, sum by (le) (rate(worker_batch_size_bucket[$__rate_interval])))", "p95"),
            ],
            grid=(16, 24, 8, 8),
        ),
        row("Vector stores", 32),
        panel(
            "timeseries",
            "Store write time",
            "Time of one batch write per store (p50, p95).",
            [
                (
                    f"histogram_quantile({q}, sum by (le, store) (rate(worker_store_write_seconds_bucket[$__rate_interval])))",
                    f"{{{{store}}}} p{p}",
                )
                for q, p in ((0.5, 50), (0.95, 95))
            ],
            unit="s",
            grid=(0, 33, 8, 8),
        ),
        panel(
            "timeseries",
            "Store errors",
            "Failed store writes per second by kind (store_unavailable, store_rejected).",
            [('sum by (kind) (rate(worker_errors_total{kind=~"store_.*"}[$__rate_interval]))', "{{kind}}")],
            unit="ops",
            grid=(8, 33, 8, 8),
        ),
        panel(
            "timeseries",
            "Dependencies up",
            "1 when the worker's stores (store) and Redis (redis) answer.",
            [("min by (dependency) (worker_dependency_up)", "{{dependency}}")],
            grid=(16, 33, 8, 8),
            max_value=1,
        ),
        row("Failures", 41),
        panel(
            "timeseries",
            "Dead letters",
            "Failed tasks per second by task type (invalid: records that were not tasks); each goes to "
            "vectorization-tasks-dlq.",
            [
                (
                    'sum by (task_type) (rate(worker_tasks_processed_total{status="failed"}[$__rate_interval]))',
                    "{{task_type}}",
                )
            ],
            unit="ops",
            grid=(0, 42, 12, 8),
            stack=True,
        ),
        panel(
            "timeseries",
            "Errors by kind",
            "worker_errors_total by kind: invalid_task, model_load, store_*, kafka_unavailable, internal.",
            [("sum by (kind) (rate(worker_errors_total[$__rate_interval]))", "{{kind}}")],
            unit="ops",
            grid=(12, 42, 12, 8),
            stack=True,
        ),
        row("Resources", 50),
        panel(
            "timeseries",
            "Memory per worker",
            "Resident memory of each worker process, and the limit it may use (its container's, else the machine's).",
            [("worker_memory_usage_bytes", "{{instance}}"), ("worker_memory_limit_bytes", "{{instance}} limit")],
            unit="bytes",
            grid=(0, 51, 8, 8),
        ),
        panel(
            "timeseries",
            "Loaded models",
            "Models each worker holds in memory.",
            [("worker_loaded_models", "{{instance}}")],
            grid=(8, 51, 8, 8),
        ),
        panel(
            "timeseries",
            "Embedding cache hit ratio",
            "Inputs whose vector came from the embedding cache (all layers) / inputs asked about.",
            [
                (
                    "sum(rate(worker_cache_hits_total[$__rate_interval])) / (sum(rate(worker_cache_hits_total"
                    "[$__rate_interval])) + sum(rate(worker_cache_misses_total[$__rate_interval])))",
                    "hit ratio",
                )
            ],
            unit="percentunit",
            grid=(16, 51, 8, 8),
            max_value=1,
        ),
        panel(
            "timeseries",
            "GPU utilisation",
            "Workers on CUDA with nvidia-ml-py: percent of time a kernel ran, per GPU.",
            [("worker_gpu_utilization_percent", "{{instance}} gpu {{gpu}}")],
            unit="percent",
            grid=(0, 59, 12, 8),
        ),
        panel(
            "timeseries",
            "GPU memory used",
            "GPU memory in use (all processes) per GPU.",
            [("worker_gpu_memory_used_bytes", "{{instance}} gpu {{gpu}}")],
            unit="bytes",
            grid=(12, 59, 12, 8),
        ),
    ]
    for number, item in enumerate(out, start=1):
        item["id"] = number
    return out


def dashboard() -> dict[str, Any]:
    return {
        "uid": "vectorize-worker",
        "title": "vectorize-worker",
        "description": "Kafka -> embeddings -> vector stores: throughput, latency, lag, model, stores, failures.",
        "tags": ["vectorize-worker", "kafka"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
