"""Everything one worker process holds: model manager, stores, publisher, pipeline.

Created lazily inside the worker (importing :mod:`app` stays light, so
``faust -A app send`` does not load torch).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from app.migration_state import MigrationStateReader, MigrationStateWriter
from core.errors import ConfigError, RetryableError
from core.settings import Settings
from engine.acks import AckTracker, MissingOffsets, Ticket
from engine.embedding_cache import EmbeddingCache
from engine.migrations import MigrationState, MigrationView
from engine.pipeline import TaskPipeline
from engine.publisher import SEND_ERRORS, RecordPublisher, SendPort
from models.device import resolve_device
from models.manager import ModelManager
from ops.embedding_cache import RedisVectors
from ops.heartbeat import Heartbeat
from ops.metrics import Metrics
from ops.task_status import RedisTaskStatus
from sinks.base import BaseVectorDB
from sinks.registry import create_stores

log = logging.getLogger("worker.main")


#: seconds a cancelled background task may take to end before the worker goes on without it
CANCEL_WAIT_S = 5.0


async def cancel_and_wait(tasks: list[asyncio.Task[None]], timeout: float = CANCEL_WAIT_S) -> None:
    """Cancel ``tasks`` and wait for them, at most ``timeout`` seconds: a library that swallows the cancel (redis-py
    does, see ``Heartbeat.run``) must not hold the worker's shutdown for ever."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        log.warning("A background task (%s) did not end within %.0fs of being cancelled; going on", task, timeout)


class WorkerRuntime:
    """Builds and owns the worker's parts; :meth:`start` blocks until they are ready."""

    def __init__(
        self, settings: Settings, send: SendPort, *, lag: Callable[[], dict[tuple[str, int], int]] | None = None
    ) -> None:
        self.settings = settings
        self._send = send
        self._lag = lag
        self.consumer_lag: int | None = None  # the tasks topic's lag summed over this worker's partitions
        self._lag_labels: set[tuple[str, str]] = set()  # the partitions the lag gauge shows
        self.tracker = AckTracker()
        self.metrics = Metrics()
        self.heartbeat = Heartbeat(
            settings.redis_url,
            settings.worker_id,
            self.state,
            interval=settings.heartbeat_interval,
            password=settings.redis_password,
            ssl_ca_file=settings.redis_ssl_ca_file,
        )
        self.store_up: bool | None = None
        self.model_ready = False
        self._background: list[asyncio.Task[None]] = []
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._metrics_served = False
        self.device = "cpu"
        self.manager: ModelManager | None = None
        self.stores: list[BaseVectorDB] = []
        self.pipeline: TaskPipeline | None = None
        self.cache: EmbeddingCache | None = None
        #: each task's status in Redis, behind /tasks/{id} (redis.task_status; ops/task_status.py)
        self.task_status: RedisTaskStatus | None = None
        self._task_status_writer: asyncio.Task[None] | None = None
        self._acker: Callable[[list[Ticket]], Awaitable[None]] | None = None
        self._lane: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self.migrations = MigrationView()  # every alias's migration state, read from the migrations topic
        self.migration_reader: MigrationStateReader | None = None
        self.migration_writer: MigrationStateWriter | None = None  # publishes the binding of a new collection

    async def start(self) -> None:
        if self.pipeline is not None:
            return
        s = self.settings
        loop = asyncio.get_running_loop()
        self.device = await loop.run_in_executor(None, resolve_device, s.device)
        self.heartbeat.watch_gpus(self.device, self.metrics)  # GPU readings in heartbeats and on /metrics (CUDA)
        from models.families import build_manager  # the families import core.errors: keep app's import light

        self.manager = build_manager(s, self.device)
        self.stores = await loop.run_in_executor(None, create_stores, s)
        if s.task_status_redis:
            errors = self.metrics.errors.labels("task_status_store")
            self.task_status = RedisTaskStatus.from_settings(s, on_error=errors.inc)
            self._task_status_writer = asyncio.ensure_future(self.task_status.run())
        publisher = RecordPublisher(
            self._send,
            errors=(*SEND_ERRORS, KafkaError, ProducerSendError),  # what Faust's producer raises
            worker_id=s.worker_id,
            status_topic=s.status_topic,
            results_topic=s.results_topic,
            dlq_topic=s.dlq_topic,
            on_status=self.task_status.track if self.task_status is not None else None,
        )
        # the embedding cache in Redis (docs/embedding-cache.md); a Redis outage only turns it off for a while
        self.cache = (
            EmbeddingCache.from_settings(s, RedisVectors.from_settings(s), self.metrics) if s.cache_enabled else None
        )
        await self._read_migrations()
        self.pipeline = TaskPipeline(
            settings=s,
            manager=self.manager,
            stores=self.stores,
            publisher=publisher,
            on_done=self._done,
            metrics=self.metrics,
            cache=self.cache,
            migrations=self.migrations,
            bind=self._bind if s.collection_aliases else None,
        )
        self.manager.on_change = lambda infos: self.metrics.loaded_models.set(len(infos))
        if not self._metrics_served:
            self.metrics.serve(s.metrics_port, addr=s.metrics_host)
            self._metrics_served = True
        if not self._background:
            self._heartbeat_task = asyncio.ensure_future(self.heartbeat.run())
            self._background = [self._heartbeat_task, asyncio.ensure_future(self._refresh_loop())]
        log.info(
            "Worker %s starting: device=%s stores=%s default model=%s",
            s.worker_id,
            self.device,
            ", ".join(st.describe() for st in self.stores),
            s.default_model,
        )
        try:
            await self.manager.get(s.default_model)
            self.model_ready = True
        except Exception as exc:  # noqa: BLE001 - the worker still serves other models
            log.error("Default model could not be loaded; tasks that use it will fail: %s", exc)
        self._started.set()

    async def _read_migrations(self) -> None:
        """Read the migration states whole before any task is taken (docs/migration.md): a worker that took tasks
        first could write a migrating collection without its twin. Kafka unreachable: retried, said in the log."""
        if self.migration_reader is not None:
            return
        pause = 1.0
        while True:
            reader = MigrationStateReader(self.settings, self.settings.migrations_topic, view=self.migrations)
            try:
                await reader.start()
                await reader.caught_up(timeout=60.0)
            except ConfigError:
                await reader.stop()
                raise  # a topic that is not compacted, or cannot be made: the worker must not start
            except Exception as exc:  # noqa: BLE001 - the broker may come later: wait for it
                await reader.stop()
                log.warning(
                    "Could not read the migration states from topic %s (%s: %s); retrying in %.0fs. No task is taken "
                    "before they are read.",
                    self.settings.migrations_topic,
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(30.0, pause * 2)
                continue
            self.migration_reader = reader
            migrating = self.migrations.migrating()
            if migrating:
                states = [self.migrations.get(alias) for alias in migrating]
                log.info("Migrations under way: %s", "; ".join(st.describe() for st in states if st is not None))
            return

    async def _bind(self, state: MigrationState) -> None:
        """Publish the state of a collection just made behind an alias (engine/store_writer.py); a Kafka error is
        retryable (the write waits and tries again)."""
        try:
            if self.migration_writer is None:
                self.migration_writer = await MigrationStateWriter(
                    self.settings, self.settings.migrations_topic, create=False
                ).start()
            await self.migration_writer.publish(state)
        except (KafkaError, OSError, TimeoutError) as exc:
            writer, self.migration_writer = self.migration_writer, None
            if writer is not None:
                await writer.stop()
            raise RetryableError(
                f"Publishing the binding of collection {state.alias} to topic {self.settings.migrations_topic} on "
                f"{self.settings.kafka_bootstrap_servers} failed ({type(exc).__name__}: {exc}); retrying."
            ) from exc

    def ensure_lane(self) -> None:
        """(Re)start the lanes task (text and image lanes) if it is not running."""
        assert self.pipeline is not None
        if self._lane is None or self._lane.done():
            self._lane = asyncio.ensure_future(self.pipeline.run_lanes())
            self._lane.add_done_callback(_lanes_ended)

    def set_acker(self, acker: Callable[[list[Ticket]], Awaitable[None]]) -> None:
        self._acker = acker

    async def pass_missing(self, tp: Any, first: int, last: int) -> None:
        """Offsets ``first..last`` of ``tp`` hold no record: acknowledge them after every earlier record of ``tp``."""
        await self._done(self.tracker.add(tp, first, MissingOffsets(first, last)))

    async def _done(self, ticket: Ticket) -> None:
        ready = self.tracker.complete(ticket)
        if ready and self._acker is not None:
            await self._acker(ready)

    async def _refresh_loop(self) -> None:
        """Gauges, dependency checks and lag, every couple of seconds."""
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - monitoring must never take the worker down
                log.exception("Refreshing metrics failed")
            await asyncio.sleep(2.0)

    async def refresh(self) -> None:
        m = self.metrics
        m.refresh_memory()
        m.active_tasks.set(self.tracker.in_flight())
        if self.manager is not None:
            m.loaded_models.set(len(self.manager.loaded()))
        if self._lag is not None:
            lags = self._lag()
            labels = {(topic, str(partition)) for topic, partition in lags}
            for topic, partition in self._lag_labels - labels:  # partitions this worker no longer holds
                m.consumer_lag.remove(topic, partition)
            for (topic, partition), lag in lags.items():
                m.consumer_lag.labels(topic, str(partition)).set(lag)
            self._lag_labels = labels
            self.consumer_lag = sum(lags.values())
        if self.pipeline is not None and self.stores:
            up = await self._stores_answer()
            if up != self.store_up and self.store_up is not None:
                log.warning("Vector store %s", "is back" if up else "stopped answering; worker not ready")
            self.store_up = up
            m.dependency_up.labels("store").set(1 if up else 0)
        m.dependency_up.labels("redis").set(1 if self.heartbeat.redis_up else 0)

    async def _stores_answer(self) -> bool:
        assert self.pipeline is not None
        for store in self.stores:
            if not await self.pipeline.writer.answers(store):
                return False
        return True

    async def leave(self) -> None:
        """Stop heartbeating and remove this worker's key, so it leaves the live list at once."""
        self.heartbeat.halt()
        if self._heartbeat_task is not None:
            await cancel_and_wait([self._heartbeat_task])
        await self.heartbeat.stop()

    async def stop(self) -> None:
        self.heartbeat.halt()
        await cancel_and_wait(self._background)
        self._background = []
        await self.heartbeat.stop()
        reader, self.migration_reader = self.migration_reader, None
        if reader is not None:
            await reader.stop()
        writer, self.migration_writer = self.migration_writer, None
        if writer is not None:
            await writer.stop()
        if self._lane is not None:
            await cancel_and_wait([self._lane])
            self._lane = None
        if self.pipeline is not None:
            # waits for a write in progress: off the event loop
            await asyncio.get_running_loop().run_in_executor(None, self.pipeline.close)
        for store in self.stores:
            store.close()
        if self.manager is not None:
            self.manager.close()
        if self.cache is not None:
            await self.cache.close()  # the cache writes in flight, briefly
            self.cache = None
        if self._task_status_writer is not None:
            await cancel_and_wait([self._task_status_writer])
            self._task_status_writer = None
        if self.task_status is not None:
            await self.task_status.close()  # the last statuses (the pipeline sent them above), briefly
            self.task_status = None
        self.pipeline = None
        self.stores = []
        self.manager = None

    def state(self) -> dict[str, Any]:
        """What the heartbeat, /workers and the dashboard show about this worker."""
        p = self.pipeline
        return {
            "worker_id": self.settings.worker_id,
            "group": self.settings.kafka_group_id,
            "web_port": self.settings.web_port,
            "web_url": f"http://{self.settings.web_advertised_host}:{self.settings.web_port}",
            "device": self.device,
            "ready": self.ready(),
            "processed": p.processed if p else 0,
            "failed": p.failed if p else 0,
            "active_tasks": p.active_tasks if p else 0,
            "consumer_lag": self.consumer_lag,  # the dashboard's lag chart sums it over the workers
            "in_flight": self.tracker.in_flight(),
            "loaded_models": [m.name for m in self.manager.loaded()] if self.manager else [],
            # what runs each loaded model: onnxruntime or torch (models.backend)
            "model_backends": {m.name: m.backend for m in self.manager.loaded()} if self.manager else {},
            # the engine models.backend chose for each (auto: the fastest faithful one measured) and why
            "model_engines": {m.name: {"engine": m.engine, "reason": m.engine_reason} for m in self.manager.loaded()}
            if self.manager
            else {},
            # the embedding cache: hits / inputs asked about since start (None: off, or nothing asked yet)
            "cache_hit_ratio": self.cache.hit_ratio if self.cache is not None else None,
            "cache_hits": self.cache.hits if self.cache is not None else 0,
            "cache_misses": self.cache.misses if self.cache is not None else 0,
            # the migration epoch of each alias this worker applies (faust -A app migrate waits for every worker)
            "migrations": p.applied_epochs() if p is not None else {},
        }

    def ready(self) -> bool:
        return bool(self.pipeline is not None and self.model_ready and self.store_up is not False)


def _lanes_ended(task: asyncio.Task[None]) -> None:
    """The lanes run until the worker stops; one that ends on a bug would stall every task taken in after it:
    exit, so the records go to another worker (they are not acknowledged) and the supervisor restarts this one."""
    if task.cancelled():
        return
    log.critical(
        "The processing lanes stopped unexpectedly (%r); exiting so another worker takes the tasks",
        task.exception(),
        exc_info=task.exception(),
    )
    os._exit(70)
