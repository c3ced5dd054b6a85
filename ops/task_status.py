"""Each task's latest status in Redis, written by the worker that sends it: what ``/tasks/{id}`` answers.

The worker that publishes a status record to ``vectorization-status`` also queues it here; a background
flusher writes what queued, one pipelined round trip per flush, through one server-side script per
record (:data:`FOLD`): the task's last 10 steps in time order (``<group>:task-status:{<task id>}:history``)
and its latest record as sent (``<group>:task-status:{<task id>}``), both expiring after
``kafka.task_status_retention_hours``; the same round trip files the task ids in the group's index of recent
tasks (``<group>:task-status:recent``, a sorted set by latest timestamp, the newest :data:`RECENT_KEPT`), so
``/tasks`` on any worker lists the group's tasks. The fold is idempotent (a step already in the history leaves both
keys as they are) and works across workers: a redelivered task's new steps join the earlier attempt's,
and statuses that arrive out of order leave the latest in place. The two keys of a task share a hash slot (the task
id is the key's hash tag), so the script also runs on a Redis Cluster.

This replaced reading every status record back from Kafka into Faust's ``task-status`` table by default
(``kafka.task_status_table``, still there): on a one-text task that read-back cost the worker's event loop
0.6–0.8 ms, more than anything else the worker adds to the model (docs/performance.md).

Best effort, like the heartbeats: the status records on Kafka are the record of truth. Redis away, the
statuses wait in a bounded queue (:data:`QUEUE_LIMIT`, the oldest dropped beyond it) and the writer tries
again every :data:`RETRY_S`, so a short outage loses nothing and a long one does not grow the worker; what is
dropped is counted in ``worker_errors{kind="task_status_store"}`` (one warning per outage); the tasks go on. Errors name the Redis URL redacted (ops/heartbeat.py ``redis_error``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import RetryableError
from core.secrets import redact_url
from ops.heartbeat import failfast_redis_client, redis_error

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("worker.task_status")

#: statuses waiting for the flusher at most; beyond it the oldest are dropped (Redis away for long)
QUEUE_LIMIT = 20_000
#: records written per round trip at most
FLUSH_BATCH = 500
#: seconds between tries while Redis is away
RETRY_S = 1.0
#: steps of a task's history kept (as the table's fold, tasks/records.py ``fold_status``)
HISTORY = 10
#: task ids the group-wide index of recent tasks keeps (``/tasks`` lists its newest)
RECENT_KEPT = 1000

#: the order of statuses made at the same instant (a held ``received`` and ``processing`` are sent together)
RANK = {"received": "0", "processing": "1", "completed": "2", "failed": "2"}

#: KEYS: the record's key, the history's key (a sorted set scored by the statuses' timestamps); ARGV: the record
#: (JSON, stored as sent), the step (its rank, then its JSON), the timestamp, the time to live in seconds, the
#: steps kept. A step already there: nothing changes (0). Else it joins the history in time order (the oldest
#: beyond the limit cut), and the record replaces the stored one if it is the latest (1): statuses arriving out
#: of order (two workers on one redelivered task) leave the latest.
FOLD = """
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
local latest = redis.call('ZRANGE', KEYS[2], -1, -1)[1]
if latest == ARGV[2] or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
else
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1
"""


class TaskStatusError(RetryableError):
    """The task-status Redis did not answer; ``/tasks/{id}`` says so, tasks go on."""


def step_of(status: str, timestamp: float) -> str:
    """A history step as the script keeps it: the same status and timestamp give the same member."""
    return RANK.get(status, "2") + json.dumps({"status": status, "timestamp": timestamp}, separators=(",", ":"))


class RedisTaskStatus:
    """:meth:`track` queues a status (never waits); :meth:`run` writes the queue; :meth:`get` reads a task."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ttl_seconds: int,
        password: SecretStr | None = None,
        ssl_ca_file: str | None = None,
        timeout: float = 2.0,
        on_error: Callable[[int], None] | None = None,
    ) -> None:
        self.name = f"Redis at {redact_url(url)}"
        self.prefix = prefix
        self.ttl_seconds = max(1, int(ttl_seconds))
        self._raw_url, self._password = url, password
        self._client = failfast_redis_client(url, password=password, ssl_ca_file=ssl_ca_file, timeout=timeout)
        #: the fold runs by its digest (EVALSHA): no ``SCRIPT EXISTS`` round trip per flush, as a registered
        #: script in a pipeline costs; a Redis without it (restarted, SCRIPT FLUSH) is given it once and asked again
        self._fold_sha = hashlib.sha1(FOLD.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._queue: deque[tuple[str, str, float, bytes]] = deque()  # task id, status, timestamp, record
        self._wake = asyncio.Event()
        self._on_error = on_error
        self.dropped = 0  # statuses lost to a Redis outage or a full queue
        self.up: bool | None = None  # None until the first write
        #: the group's index of recent tasks; the task keys' braces keep it apart from any task's keys
        self.recent_key = f"{prefix}recent"
        self._indexed = True  # False while Redis refuses the index (one warning, not one per flush)

    @classmethod
    def from_settings(cls, settings: Settings, on_error: Callable[[int], None] | None = None) -> RedisTaskStatus:
        return cls(
            settings.redis_url,
            prefix=f"{settings.kafka_group_id}:task-status:",
            ttl_seconds=int(settings.task_status_retention_hours * 3600),
            password=settings.redis_password,
            ssl_ca_file=settings.redis_ssl_ca_file,
            on_error=on_error,
        )

    def keys(self, task_id: str) -> tuple[str, str]:
        key = f"{self.prefix}{{{task_id}}}"  # the task id is the hash tag: both keys in one slot
        return key, f"{key}:history"

    def track(self, task_id: str, status: str, timestamp: float, record: bytes) -> None:
        """Queue a status record as it was sent (the publisher's hook); the flusher writes it soon."""
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self._lost(1)
        self._queue.append((task_id, status, timestamp, record))  # the step is made off the task's path
        self._wake.set()

    async def run(self) -> None:
        """Write what queued, a batch per round trip, until cancelled; with Redis away, again every
        :data:`RETRY_S` (what queues meanwhile waits, up to :data:`QUEUE_LIMIT`)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if not await self.flush():
                    await asyncio.sleep(RETRY_S)

    async def flush(self) -> bool:
        """Write up to :data:`FLUSH_BATCH` queued statuses in one round trip. False when Redis could not be
        reached: the batch goes back to the front of the queue (the fold is idempotent, so a batch written in
        part is written again safely; so does a flush cancelled at shutdown, for :meth:`close`). A status Redis
        refuses (a key of another type in the way) is dropped; so is a batch that fails any other way, with its
        traceback logged: the writer goes on with the next."""
        batch = [self._queue.popleft() for _ in range(min(FLUSH_BATCH, len(self._queue)))]
        if not batch:
            return True
        latest: dict[str, float] = {}
        for task_id, _, timestamp, _ in batch:
            latest[task_id] = max(timestamp, latest.get(task_id, timestamp))
        try:
            replies = await self._write(batch, latest)
            if any(isinstance(reply, NoScriptError) for reply in replies[: len(batch)]):
                await self._client.script_load(FOLD)  # Redis lost its scripts: the fold is idempotent, send again
                replies = await self._write(batch, latest)
        except asyncio.CancelledError:
            self._requeue(batch)
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._requeue(batch)
            if self.up is not False:
                log.warning(
                    "Task statuses are not being written to Redis, trying again every %.0fs (/tasks/{id} falls "
                    "behind meanwhile; the status records on Kafka are complete): %s",
                    RETRY_S,
                    redis_error(self._raw_url, exc, self._password),
                )
            self.up = False
            return False
        except Exception:  # noqa: BLE001 - a bug here must not stop every later status
            self._lost(len(batch))
            log.exception("Writing %d task statuses to %s failed; they are dropped", len(batch), self.name)
            return True
        replies, indexed = replies[: len(batch)], replies[len(batch) :]
        refused = [reply for reply in replies if isinstance(reply, Exception)]
        unindexed = next((reply for reply in indexed if isinstance(reply, Exception)), None)
        if unindexed is not None and self._indexed:  # the statuses are written; only the listing misses them
            log.warning(
                "Redis refused the index of recent tasks %r (/tasks misses the tasks written meanwhile; check that "
                "key, and that Redis is 6.2 or newer): %s",
                self.recent_key,
                redis_error(self._raw_url, unindexed, self._password),
            )
        elif unindexed is None and not self._indexed:
            log.info("The index of recent tasks %r is written again", self.recent_key)
        self._indexed = unindexed is None
        if refused:
            self._lost(len(refused))
            log.warning(
                "Redis refused %d task statuses (dropped; check the keys under %r): %s",
                len(refused),
                self.prefix,
                redis_error(self._raw_url, refused[0], self._password),
            )
        if self.up is False:
            log.info("Task statuses are written to %s again", self.name)
        self.up = True
        return True

    async def _write(self, batch: list[tuple[str, str, float, bytes]], latest: dict[str, float]) -> list[Any]:
        """One round trip: the fold of each status, then the group's index; each reply or its error."""
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id, status, timestamp, record in batch:
                args = [record, step_of(status, timestamp), repr(timestamp), self.ttl_seconds, HISTORY]
                pipe.evalsha(self._fold_sha, 2, *self.keys(task_id), *args)
            # the group's index: a task's score only goes up (a late older step leaves it); entries past the
            # retention or beyond the newest RECENT_KEPT go
            pipe.zadd(self.recent_key, latest, gt=True)
            pipe.zremrangebyscore(self.recent_key, "-inf", f"({max(latest.values()) - self.ttl_seconds!r}")
            pipe.zremrangebyrank(self.recent_key, 0, -RECENT_KEPT - 1)
            pipe.expire(self.recent_key, self.ttl_seconds)
            return await pipe.execute(raise_on_error=False)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """The task's latest status record with its ``history`` (oldest first); None when Redis holds none."""
        return (await self.get_many([task_id]))[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    key, history = self.keys(task_id)
                    pipe.get(key)
                    pipe.zrange(history, 0, -1)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise TaskStatusError(redis_error(self._raw_url, exc, self._password)) from None
        out: list[dict[str, Any] | None] = []
        for raw, steps in zip(replies[::2], replies[1::2], strict=True):
            if raw is None:
                out.append(None)
                continue
            out.append({**json.loads(raw), "history": [json.loads(step[1:]) for step in steps]})  # rank cut
        return out

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The group's ``limit`` most recent tasks (by their latest status's timestamp), newest first, each as
        :meth:`get` answers; tasks whose keys expired meanwhile are left out."""
        try:
            ids = [raw.decode() for raw in await self._client.zrevrange(self.recent_key, 0, max(0, limit - 1))]
        except (RedisError, OSError) as exc:
            raise TaskStatusError(redis_error(self._raw_url, exc, self._password)) from None
        return [entry for entry in await self.get_many(ids) if entry is not None]

    def _requeue(self, batch: list[tuple[str, str, float, bytes]]) -> None:
        """``batch`` back at the front, in order; the oldest beyond :data:`QUEUE_LIMIT` dropped."""
        self._queue.extendleft(reversed(batch))
        while len(self._queue) > QUEUE_LIMIT:
            self._queue.popleft()
            self._lost(1)

    def _lost(self, count: int) -> None:
        self.dropped += count
        if self._on_error is not None:
            self._on_error(count)

    async def close(self, timeout: float = 2.0) -> None:
        """Write what is still queued (at most ``timeout`` seconds, one try), then close the client."""
        try:
            await asyncio.wait_for(self._drain(), timeout)
        except TimeoutError:
            pass
        if self._queue:
            log.warning("%d task statuses still queued for Redis at shutdown were dropped", len(self._queue))
            self._lost(len(self._queue))
            self._queue.clear()
        await self._client.aclose()

    async def _drain(self) -> None:
        while self._queue and await self.flush():
            pass
