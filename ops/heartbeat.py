"""Worker heartbeats in Redis (redis-py's asyncio client; ``aioredis`` is abandoned).

Key ``worker:{worker_id}:heartbeat``, refreshed every ``interval`` seconds with a
TTL of ``ttl_intervals`` intervals, so a worker that dies disappears by itself.
Redis being down never stops the worker: one warning when it goes away, one
note when it is back. The Redis URL is shown only redacted (``redis://:***@host``);
a password from ``redis.password`` (or a secret file) and a CA for ``rediss://``
go into the client, never into a log line or a heartbeat.

On CUDA (once :meth:`Heartbeat.watch_gpus` is told the device), each beat
also reads the GPUs through NVML (ops/gpu.py): the payload's ``gpus`` and the
``worker_gpu_*`` gauges, even while Redis is away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.secrets import redact_url, reveal
from ops.gpu import GpuMonitor, GpuReading

if TYPE_CHECKING:
    from ops.metrics import Metrics

log = logging.getLogger("worker.heartbeat")
KEY = "worker:{worker_id}:heartbeat"


def heartbeat_key(worker_id: str) -> str:
    return KEY.format(worker_id=worker_id)


def redis_client(
    url: str, *, password: SecretStr | None = None, ssl_ca_file: str | None = None, **overrides: Any
) -> aioredis.Redis:
    """A client for ``url`` with short timeouts; ``password`` replaces one in the URL, ``ssl_ca_file``
    verifies a ``rediss://`` server (redis-py lets the URL's own options win over keyword arguments,
    so the URL's password is taken out first). ``overrides``: more of redis-py's client options (the
    embedding cache's shorter timeouts, no retries)."""

    options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2, **overrides}
    if password is not None:
        url = _without_password(url)
        options["password"] = reveal(password)
    if ssl_ca_file:
        if urlsplit(url).scheme == "rediss":
            options["ssl_ca_certs"] = ssl_ca_file
        else:
            log.warning(
                "redis.ssl_ca_file (VECTORIZE_WORKER_REDIS_SSL_CA_FILE) is set but the Redis URL %s is not "
                "rediss://, so the connection is not encrypted and the CA is unused; use rediss:// for TLS",
                redact_url(url),
            )
    return aioredis.from_url(url, **options)


def failfast_redis_client(
    url: str, *, password: SecretStr | None = None, ssl_ca_file: str | None = None, timeout: float
) -> aioredis.Redis:
    """:func:`redis_client` with ``timeout`` for connecting and each reply and no retries of its own: for
    the embedding cache and the task statuses, whose callers give up on Redis for a while after one failure
    (a worker must not wait on them)."""
    return redis_client(
        url,
        password=password,
        ssl_ca_file=ssl_ca_file,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def redis_error(url: str, exc: BaseException, password: SecretStr | None = None) -> str:
    """Why Redis at ``url`` failed, for a log line or a view: the URL redacted, any password cut out of the
    client's message, the settings to check named."""

    text = str(exc) or type(exc).__name__
    try:
        in_url = urlsplit(url).password
    except ValueError:
        in_url = None
    for secret in (reveal(password), in_url):
        if secret:
            text = text.replace(secret, "***")
    return (
        f"Failed to connect to Redis at {redact_url(url)}: {text[:300]} (check VECTORIZE_WORKER_REDIS_URL, "
        "VECTORIZE_WORKER_REDIS_PASSWORD, VECTORIZE_WORKER_REDIS_SSL_CA_FILE)"
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: seconds a heartbeat waits for a GPU reading before it goes out with the last ones
GPU_SAMPLE_TIMEOUT = 5.0


class Heartbeat:
    """Publishes ``state()`` (plus identity fields) to Redis until stopped."""

    def __init__(
        self,
        url: str,
        worker_id: str,
        state: Callable[[], dict[str, Any]],
        *,
        interval: float = 5.0,
        ttl_intervals: int = 3,
        password: SecretStr | None = None,
        ssl_ca_file: str | None = None,
    ) -> None:

        self.url = redact_url(url)  # for messages only
        self._raw_url, self._password = url, password  # to cut secrets out of the client's error messages
        self.worker_id = worker_id
        self.interval = interval
        self.ttl = max(1, int(round(interval * ttl_intervals)))
        self._state = state
        self._redis = redis_client(url, password=password, ssl_ca_file=ssl_ca_file)
        self.redis_up: bool | None = None  # None until the first beat
        self.beats = 0
        self._closed = False
        self._halted = False  # run() ends at its next turn: a cancel that redis-py swallowed does not keep it beating
        self._gpu_device: str | None = None  # set by watch_gpus
        self._gpu_metrics: Metrics | None = None
        self._gpu_monitor: GpuMonitor | None = None
        self._gpu_opened = False
        self._gpu_failing = False
        self._gpu_sampling: asyncio.Future[None] | None = None  # the GPU reading in progress
        self.gpus: list[GpuReading] | None = None  # the last reading; None: not on CUDA or no NVML

    def watch_gpus(self, device: str, metrics: Metrics | None = None) -> None:
        """Read the GPUs at every beat when ``device`` (the resolved one, models/device.py) is CUDA: the
        payload's ``gpus`` and, with ``metrics``, the ``worker_gpu_*`` gauges. Does not block: NVML starts
        at the next beat, off the event loop (ops/gpu.py; without nvidia-ml-py it logs why and does nothing)."""
        self._gpu_device = device
        self._gpu_metrics = metrics
        self._gpu_opened = False

    def payload(self, status: str = "running") -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.gpus is not None:
            extra["gpus"] = [reading.as_dict() for reading in self.gpus]
        return {
            "worker_id": self.worker_id,
            "timestamp": time.time(),
            "status": status,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **self._state(),
            **extra,
        }

    async def sample_gpus(self) -> None:
        """Read the GPUs (when watched and on CUDA) into :attr:`gpus` and the gauges, on a worker thread."""
        if self._gpu_device is None:
            return
        try:
            if not self._gpu_opened:
                self._gpu_opened = True
                self._gpu_monitor = await asyncio.to_thread(GpuMonitor.open, self._gpu_device)
            if self._gpu_monitor is None:
                return
            self.gpus = await asyncio.to_thread(self._gpu_monitor.sample)
            if self._gpu_metrics is not None:
                self._gpu_metrics.set_gpus(self.gpus)
            self._gpu_failing = False
        except Exception:  # noqa: BLE001 - monitoring must never stop the heartbeat
            if not self._gpu_failing:  # once per run of failures
                log.exception("Reading the GPUs through NVML failed; the heartbeat goes on without them")
            self._gpu_failing = True

    async def beat(self, status: str = "running") -> bool:
        """One heartbeat (after a GPU reading, when watched); returns whether Redis took it.

        A GPU reading that does not finish within :data:`GPU_SAMPLE_TIMEOUT` (a wedged driver) does not hold the
        beat up: it goes out with the last readings, and no second reading starts while that one hangs."""
        if self._gpu_device is not None:
            if self._gpu_sampling is None or self._gpu_sampling.done():
                self._gpu_sampling = asyncio.ensure_future(self.sample_gpus())
            try:
                await asyncio.wait_for(asyncio.shield(self._gpu_sampling), GPU_SAMPLE_TIMEOUT)
            except TimeoutError:
                if not self._gpu_failing:
                    log.warning(
                        "Reading the GPUs through NVML took over %.0fs; heartbeats go on with the last readings",
                        GPU_SAMPLE_TIMEOUT,
                    )
                self._gpu_failing = True
        try:
            await self._redis.set(heartbeat_key(self.worker_id), json.dumps(self.payload(status)), ex=self.ttl)
        except (RedisError, OSError) as exc:
            if self.redis_up is not False:
                log.warning(
                    "%s — heartbeats paused, tasks keep flowing; will resume when Redis is back",
                    redis_error(self._raw_url, exc, self._password),
                )
            self.redis_up = False
            return False
        if self.redis_up is False:
            log.info("Redis at %s is back; heartbeats resumed", self.url)
        self.redis_up = True
        self.beats += 1
        return True

    async def run(self) -> None:
        """Beat until :meth:`halt` (or a cancel) ends it.

        Cancelling alone is not enough: redis-py 8.1 swallows a cancel that arrives in parts of a command
        (``tests/integration/test_resilience.py`` cancels a beating loop 100 times; without the flag over a third
        of them went on beating), and whoever awaited the cancelled task waited for ever — a SIGTERMed worker
        that never left. :meth:`halt` sets a flag this loop checks at every turn.
        """
        while not self._halted:
            await self.beat()
            if self._halted:
                break
            await asyncio.sleep(self.interval)

    def halt(self) -> None:
        """End :meth:`run` at its next turn (a beat in progress finishes, within the client's timeouts)."""
        self._halted = True

    async def stop(self) -> None:
        """Say goodbye: remove the key so the worker leaves the live list at once (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._gpu_monitor is not None:
            self._gpu_monitor.close()
            self._gpu_monitor = None
        try:
            await self._redis.delete(heartbeat_key(self.worker_id))
        except (RedisError, OSError):
            pass
        await self._redis.aclose()


async def live_workers(
    url: str, *, password: SecretStr | None = None, ssl_ca_file: str | None = None
) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat, sorted by worker id (a key that is not a JSON object is skipped).

    Raises what redis-py raises when Redis cannot be reached; its messages carry host and port, not the password.
    """
    client = redis_client(url, password=password, ssl_ca_file=ssl_ca_file)
    try:
        workers = []
        async for key in client.scan_iter(match="worker:*:heartbeat", count=500):
            raw = await client.get(key)
            try:
                beat = json.loads(raw) if raw else None
            except ValueError:
                continue
            if isinstance(beat, dict):
                workers.append(beat)
        return sorted(workers, key=lambda w: str(w.get("worker_id", "")))
    finally:
        await client.aclose()
