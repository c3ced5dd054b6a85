"""Worker heartbeats in Redis (redis-py's asyncio client; ``aioredis`` is abandoned).

Key ``worker:{worker_id}:heartbeat``, refreshed every ``interval`` seconds with a
TTL of ``ttl_intervals`` intervals, so a worker that dies disappears by itself.
Redis being down never stops the worker: one warning when it goes away, one
note when it is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("worker.heartbeat")
KEY = "worker:{worker_id}:heartbeat"


def heartbeat_key(worker_id: str) -> str:
    return KEY.format(worker_id=worker_id)


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
    ) -> None:
        self.url = url
        self.worker_id = worker_id
        self.interval = interval
        self.ttl = max(1, int(round(interval * ttl_intervals)))
        self._state = state
        self._redis = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.redis_up: bool | None = None  # None until the first beat
        self.beats = 0
        self._closed = False

    def payload(self, status: str = "running") -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "timestamp": time.time(),
            "status": status,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **self._state(),
        }

    async def beat(self, status: str = "running") -> bool:
        """One heartbeat; returns whether Redis took it."""
        try:
            await self._redis.set(heartbeat_key(self.worker_id), json.dumps(self.payload(status)), ex=self.ttl)
        except (RedisError, OSError) as exc:
            if self.redis_up is not False:
                log.warning(
                    "Failed to connect to Redis at %s: %s — heartbeats paused, tasks keep flowing; "
                    "will resume when Redis is back (VECTORIZE_WORKER_REDIS_URL)",
                    self.url,
                    exc,
                )
            self.redis_up = False
            return False
        if self.redis_up is False:
            log.info("Redis at %s is back; heartbeats resumed", self.url)
        self.redis_up = True
        self.beats += 1
        return True

    async def run(self) -> None:
        """Beat forever (cancel to stop)."""
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Say goodbye: remove the key so the worker leaves the live list at once (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._redis.delete(heartbeat_key(self.worker_id))
        except (RedisError, OSError):
            pass
        await self._redis.aclose()


async def live_workers(url: str) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat, sorted by worker id."""
    client = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        workers = []
        async for key in client.scan_iter(match="worker:*:heartbeat", count=500):
            raw = await client.get(key)
            if raw:
                workers.append(json.loads(raw))
        return sorted(workers, key=lambda w: w.get("worker_id", ""))
    finally:
        await client.aclose()
