"""The Faust application object and its topics (``faust -A app worker``)."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust

from app.kafka_check import checked_worker
from app.kafka_security import credentials_or_exit
from core.errors import ConfigError
from core.settings import Settings, load_settings
from ops.logs import logging_config


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"vectorize-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load()
DATADIR = Path(settings.data_dir) / "faust" / settings.worker_id
DATADIR.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.kafka_group_id,
    broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap_servers.split(",") if host.strip()],
    # SASL/TLS from kafka.security_protocol & co (app/kafka_security.py); `worker` first checks the broker
    # accepts them (app/kafka_check.py) and exits with code 2 naming the setting, instead of retrying for ever
    broker_credentials=credentials_or_exit(settings),
    Worker=checked_worker(settings),
    # Task payloads are parsed by our own validator (bad JSON must become a
    # dead letter, not a codec crash); `faust send` then writes the text as is.
    key_serializer="raw",
    value_serializer="raw",
    datadir=str(DATADIR),
    # Tables on disk (RocksDB through rocksdict) keep the worker's memory flat
    # however many task statuses the retention window holds; "memory" keeps
    # them in the process (see docs/operations.md, "Faust tables").
    store=f"{settings.table_store}://",
    web_port=settings.web_port,
    web_bind=settings.web_host,
    # Faust's own /router/, /table/ and /graph/ views expose tables and topology and forward between
    # workers without our token; the worker's views (agents/web.py) cover what an operator needs
    web_router_enabled=False,
    web_tables_enabled=False,
    web_graph_enabled=False,
    topic_partitions=settings.topic_partitions,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    # Records produced within a few ms share one produce request: a one-text task sends four (received,
    # processing, completed, result) and aiokafka otherwise sends a request whenever the previous one
    # returned, 1-2 per task under load (docs/performance.md).
    producer_linger=settings.kafka_producer_linger_ms / 1000.0,
    producer_max_request_size=max(1_048_576, settings.max_task_bytes * 2),
    # Faust's own wait for in-flight records can hang on records buffered but
    # never handed to the agent (see docs/architecture.md); the worker drains its
    # batch in flight itself on SIGTERM (agents/lifecycle.py) before Faust commits.
    stream_wait_empty=False,
    # A worker killed with -9 holds its partitions until the session times out.
    broker_session_timeout=settings.kafka_session_timeout,
    broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
    # A group formed while the broker's metadata lacked the topics (a broker just started, topics being
    # created) was assigned nothing at all, and the leader noticed the topics only at its next metadata
    # refresh: 5 minutes by default, every worker idle meanwhile (seen in the distributed test). 10 s.
    consumer_metadata_max_age_ms=10_000,
    logging_config=logging_config(settings.log_level),
)


def table_options(ttl_seconds: int | None = None) -> dict[str, Any]:
    """A table's store options: for RocksDB small write buffers and block cache per partition
    (Faust's defaults are 3 x 64 MB and 2 GB per table, far more than a worker's tables need)
    and an optional time-to-live; none for the memory store."""
    if settings.table_store != "rocksdb":
        return {}
    options: dict[str, Any] = {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2, "block_cache_size": 16 << 20}
    if ttl_seconds is not None:
        options["ttl"] = ttl_seconds
    return options


_data_dir_lock: Any = None  # held open for the worker's lifetime


def claim_data_dir() -> None:
    """One worker per data folder; a second one exits at once with what to change.

    Otherwise it would crash later and obscurely, on RocksDB's lock of the
    tables (after ~30 s of Faust's retries) or the embedded Qdrant's. Called by
    the intake agent, so only a running worker claims the folder (``faust send``
    and ``doctor`` import the same app).
    """
    global _data_dir_lock
    if _data_dir_lock is not None:
        return
    handle = open(DATADIR / "worker.lock", "a+")  # noqa: SIM115 - kept open: the lock lives as long as the worker
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        logging.getLogger("worker.main").critical(
            "Another worker already runs with worker id %r and data dir %s (its tables and embedded store are "
            "locked there). Give each worker on this machine its own VECTORIZE_WORKER_WORKER_ID (e.g. @hostname) "
            "or VECTORIZE_WORKER_DATA_DIR, or stop the other worker.",
            settings.worker_id,
            settings.data_dir,
        )
        os._exit(2)
    _data_dir_lock = handle


_topics: dict[str, Any] = {}


def raw_topic(name: str) -> Any:
    """The topic ``name`` with raw bytes keys/values, created with ``topic_partitions`` when missing."""
    topic = _topics.get(name)
    if topic is None:
        topic = _topics[name] = app.topic(
            name, key_serializer="raw", value_serializer="raw", internal=True, partitions=settings.topic_partitions
        )
    return topic


tasks_topic = raw_topic(settings.tasks_topic)
OUTPUT_TOPICS = (settings.status_topic, settings.results_topic, settings.dlq_topic)


class _ReadOffsets(defaultdict):  # type: ignore[type-arg]
    """Faust's per-partition read offsets, hidden (read as None) for the guarded topics."""

    def __init__(self, topics: set[str], *args: Any) -> None:
        super().__init__(lambda: None, *args)
        self.topics = topics

    def __getitem__(self, tp: Any) -> Any:
        if tp.topic in self.topics:
            return None
        return super().__getitem__(tp)


def guard_offsets(topic: str) -> None:
    """Hand ``topic``'s offset bookkeeping from Faust to the intake's :class:`~app.offsets.OffsetGuard`.

    faust-streaming 0.15.3 drops fetched records below its read offset and
    counts any jump above it as a hole to acknowledge (``Consumer._add_gap``).
    Around rebalances its read offset is wrong both ways: records fetched
    before the rebalance push it up, so the re-read records are dropped (a
    stalled partition), or records it lost make a jump (unprocessed tasks
    committed). For ``topic`` every fetched record now reaches the agent,
    whose guard admits offsets strictly in order and seeks back over holes;
    offsets it confirmed hold no record reach Faust, acknowledged in order
    through :func:`ack_missing_offsets`.
    """
    from faust.transport.consumer import Consumer

    guarded: set[str] | None = getattr(Consumer, "_vw_guarded_topics", None)
    if guarded is not None:
        guarded.add(topic)
        return
    from app.compat import check_versions

    try:  # before patching: on an unverified faust-streaming/aiokafka/mode the patch could lose tasks silently
        check_versions()
    except ConfigError as exc:
        print(f"vectorize-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    guarded = {topic}
    init, add_gap = Consumer.__init__, Consumer._add_gap

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._read_offset = _ReadOffsets(guarded, self._read_offset)

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in guarded:
            await add_gap(self, tp, offset_from, offset_to)

    Consumer.__init__ = __init__
    Consumer._add_gap = _add_gap
    Consumer._vw_guarded_topics = guarded


def ack_missing_offsets(consumer: Any, tp: Any, first: int, last: int) -> None:
    """Acknowledge offsets ``first..last`` of ``tp``, which hold no record, so Faust's commits pass them.

    What ``Consumer.ack`` does for a record, done for offsets without one (a
    transaction marker the offset guard confirmed). Called in partition order
    (the ack tracker releases it after every earlier record of ``tp``), so
    Faust never sees them ahead of a record still in flight (faust#606).
    Faust's own gap list would not do: it is merged only below an acked
    record, so a marker at the end of a partition was never committed.
    """
    from faust.types.tuples import ack_lock

    with ack_lock:
        committed = consumer._committed_offset[tp]
        index, acked = consumer._acked_index[tp], consumer._acked[tp]
        for offset in range(first if committed is None else max(first, committed), last + 1):
            if offset not in index:
                index.add(offset)
                acked.append(offset)
                consumer._n_acked += 1


guard_offsets(settings.tasks_topic)
