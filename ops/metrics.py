"""Every Prometheus metric of the worker, by name, in one place (served on metrics.host:metrics.port, 127.0.0.1:9091)."""

from __future__ import annotations

import resource
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from ops.gpu import GpuReading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The worker's metrics on their own registry (one per worker; tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tasks_processed = Counter(
            "worker_tasks_processed",
            "Tasks finished, by task type and final status",
            ["task_type", "status"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "worker_task_processing_seconds",
            "Time from intake to final status",
            ["task_type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loaded_models = Gauge("worker_loaded_models", "Models loaded in memory", registry=r)
        self.memory = Gauge("worker_memory_usage_bytes", "Resident memory of the worker process", registry=r)
        self.memory_limit = Gauge(
            "worker_memory_limit_bytes",
            "The memory the worker may use: the lowest cgroup limit along its cgroup path, else the machine's memory",
            registry=r,
        )
        self.active_tasks = Gauge("worker_active_tasks", "Tasks taken in and not yet finished", registry=r)
        self.batch_size = Histogram("worker_batch_size", "Texts per model call", buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "worker_inference_seconds", "Model time per call", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.store_seconds = Histogram(
            "worker_store_write_seconds",
            "Vector store write latency per batch",
            ["store"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("worker_errors", "Errors by kind", ["kind"], registry=r)
        self.handed_over = Counter(
            "worker_tasks_handed_over",
            "Tasks whose partition was revoked (a rebalance) before this worker wrote them: not written or reported "
            "here; the worker that gets the partition processes them again",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "worker_consumer_lag",
            "Records behind the end of each assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.store_unchanged = Counter(
            "worker_store_unchanged_records",
            "Records not written to a store because the same content was already there (stores.skip_unchanged)",
            ["store"],
            registry=r,
        )
        # migrations (docs/migration.md): the reembed tasks of the backfill and the twins of the dual write
        self.migration_tasks = Counter(
            "worker_migration_tasks",
            "Tasks re-embedded for a migration: written, skipped (changed or gone since, or the migration moved "
            "on: nothing to do) or failed (dead-lettered)",
            ["outcome"],
            registry=r,
        )
        self.migration_records = Counter(
            "worker_migration_records",
            "Records re-embedded for a migration (written or skipped)",
            ["outcome"],
            registry=r,
        )
        self.dependency_up = Gauge("worker_dependency_up", "1 when a dependency answers", ["dependency"], registry=r)
        # the embedding cache (engine/embedding_cache.py): hits / (hits + misses) is its hit ratio
        self.cache_hits = Counter(
            "worker_cache_hits",
            "Inputs whose vector came from the embedding cache, by layer: local (in-process LRU), redis, or "
            "inflight (an identical input already queued for the model)",
            ["layer"],
            registry=r,
        )
        self.cache_misses = Counter(
            "worker_cache_misses", "Inputs the embedding cache did not have (the model embedded them)", registry=r
        )

        # GPUs (ops/gpu.py), set at each heartbeat when the worker runs on CUDA and nvidia-ml-py is installed
        gpu = ["gpu"]  # NVML's device index, as nvidia-smi shows it
        self.gpu_utilization = Gauge(
            "worker_gpu_utilization_percent",
            "Percent of the last sample period a kernel ran on the GPU",
            gpu,
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "worker_gpu_memory_used_bytes", "GPU memory in use (all processes)", gpu, registry=r
        )
        self.gpu_memory_total = Gauge("worker_gpu_memory_total_bytes", "GPU memory in all", gpu, registry=r)
        self.gpu_temperature = Gauge("worker_gpu_temperature_celsius", "GPU core temperature", gpu, registry=r)
        self.gpu_power = Gauge("worker_gpu_power_watts", "GPU power draw", gpu, registry=r)

    def set_gpus(self, readings: Iterable[GpuReading]) -> None:
        """Set the ``worker_gpu_*`` gauges from one sample; a value NVML could not give is left out."""
        for reading in readings:
            label = str(reading.index)
            for gauge, value in (
                (self.gpu_utilization, reading.utilization_percent),
                (self.gpu_memory_used, reading.memory_used_bytes),
                (self.gpu_memory_total, reading.memory_total_bytes),
                (self.gpu_temperature, reading.temperature_celsius),
                (self.gpu_power, reading.power_watts),
            ):
                if value is not None:
                    gauge.labels(label).set(value)
                else:
                    try:
                        gauge.remove(label)
                    except KeyError:  # never set
                        pass

    def refresh_memory(self) -> None:
        self.memory.set(rss_bytes())
        limit = memory_limit_bytes()
        if limit is not None:
            self.memory_limit.set(limit)

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve /metrics on ``addr``:``port`` in a background thread (0 disables).

        Loopback by default (``metrics.host``): the endpoint has no authentication, so open it to a
        network (0.0.0.0) only where a network policy limits who reaches it (docs/security.md).
        """
        if port:
            return start_http_server(port, addr=addr, registry=self.registry)
        return None


#: cgroup v1 says "no limit" with a huge number (the largest page-aligned 64-bit value)
UNLIMITED = 1 << 60


def memory_limit_bytes(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    meminfo: Path = Path("/proc/meminfo"),
) -> int | None:
    """The memory this process may use: the lowest memory limit of its cgroup and the cgroups above it (a
    container's, a pod's, a systemd unit's ``MemoryMax``), else the machine's total memory (``MemTotal``);
    None when neither can be read (not Linux).

    cgroup v2: ``memory.max`` along the process's path from ``/proc/self/cgroup`` (``0::/…``); v1: the
    ``memory`` controller's ``memory.limit_in_bytes`` along its path. Inside a container the path is ``/``
    and the limit is at the root of its cgroup namespace."""
    total: int | None = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    limits = [limit for limit in _cgroup_limits(cgroup_root, proc_cgroup) if 0 < limit < UNLIMITED]
    if total:
        limits.append(total)
    return min(limits) if limits else None


def _cgroup_limits(root: Path, proc_cgroup: Path) -> list[int]:
    """The memory limits set along this process's cgroup path, v2 then v1 (none where "max" or unreadable)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    places: list[tuple[Path, str]] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            places.append((root / "memory.max", path or "/"))
        elif "memory" in controllers.split(","):
            places.append((root / "memory" / "memory.limit_in_bytes", path or "/"))
    if not places:  # no /proc/self/cgroup: the root files only
        places = [(root / "memory.max", "/"), (root / "memory" / "memory.limit_in_bytes", "/")]
    limits: list[int] = []
    for file, path in places:
        folder = file.parent
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):  # the process's own cgroup first, then each parent up to the root
            try:
                raw = (folder.joinpath(*parts[:depth]) / file.name).read_text().strip()
            except OSError:
                continue
            if raw != "max":
                try:
                    limits.append(int(raw))
                except ValueError:
                    continue
    return limits


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
