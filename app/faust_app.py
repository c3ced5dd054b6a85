"""The worker's Faust application, built from settings when asked (``faust -A app worker``).

Nothing happens on import: :func:`build_app` checks the Kafka client
libraries, creates the data folder, builds the ``faust.App`` and hands the
tasks topic's offsets to the offset guard; ``app/__init__.py`` calls it (and
registers the agents and commands) the first time ``app.app`` is asked for.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import faust

from app.compat import check_versions, install_offset_guard
from app.kafka_check import checked_worker
from app.kafka_security import credentials_or_exit
from core.errors import ConfigError
from core.settings import Settings, load_settings
from ops.logs import logging_config

T = TypeVar("T")


def or_exit(step: Callable[[], T]) -> T:
    """``step()``, or its :class:`ConfigError` on stderr as ``vectorize-worker: <message>`` and exit code 2
    (no traceback: the message names what to change)."""
    try:
        return step()
    except ConfigError as exc:
        print(f"vectorize-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_settings_or_exit(config: str | Path | None = None) -> Settings:
    """The settings (``config``, else ``$VECTORIZE_WORKER_CONFIG`` or ./faust.yml, then the environment); on an
    invalid value exit 2 with one message naming every bad field."""
    return or_exit(lambda: load_settings(config))


def data_dir(settings: Settings) -> Path:
    """This worker's folder for Faust's tables and the lock: ``<data_dir>/faust/<worker id>``."""
    return Path(settings.data_dir) / "faust" / settings.worker_id


def build_app(settings: Settings) -> WorkerApp:
    """The worker's Faust application for ``settings``, with the tasks topic declared and its offsets guarded.

    Exits 2 with one message, before anything is created, when the installed
    faust-streaming/aiokafka/mode are not the verified ones
    (:func:`app.compat.check_versions`) or the Kafka security settings do not
    fit together. Registers no agent: ``agents.register`` does.
    """
    or_exit(check_versions)  # before patching: on an unverified version the patch could lose tasks silently
    credentials = credentials_or_exit(settings)
    datadir = data_dir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.kafka_group_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap_servers.split(",") if host.strip()],
        # SASL/TLS from kafka.security_protocol & co (app/kafka_security.py); `worker` first checks the broker
        # accepts them (app/kafka_check.py) and exits with code 2 naming the setting, instead of retrying for ever
        broker_credentials=credentials,
        Worker=checked_worker(settings),
        # Task payloads are parsed by our own validator (bad JSON must become a
        # dead letter, not a codec crash); `faust send` then writes the text as is.
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(datadir),
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
        # 0 by default: a record goes at once; under load records share requests anyway (aiokafka keeps one
        # request in flight per broker), and a linger only made every idle task's result later (performance.md).
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
    install_offset_guard(settings.tasks_topic)
    return WorkerApp(settings, app, datadir)


class WorkerApp:
    """A built worker application: the ``faust.App``, its settings and data folder, and what the agents share."""

    def __init__(self, settings: Settings, app: faust.App, datadir: Path) -> None:
        self.settings = settings
        self.app = app
        self.datadir = datadir
        self._topics: dict[str, Any] = {}
        self._data_dir_lock: IO[str] | None = None  # held open for the worker's lifetime
        self.tasks_topic = self.raw_topic(settings.tasks_topic)
        self.output_topics = (settings.status_topic, settings.results_topic, settings.dlq_topic)

    def raw_topic(self, name: str) -> Any:
        """The topic ``name`` with raw bytes keys/values, created with ``topic_partitions`` when missing."""
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self.app.topic(
                name,
                key_serializer="raw",
                value_serializer="raw",
                internal=True,
                partitions=self.settings.topic_partitions,
            )
        return topic

    def table_options(self, ttl_seconds: int | None = None) -> dict[str, Any]:
        """A table's store options: for RocksDB small write buffers and block cache per partition
        (Faust's defaults are 3 x 64 MB and 2 GB per table, far more than a worker's tables need)
        and an optional time-to-live; none for the memory store."""
        return table_options(self.settings, ttl_seconds)

    def claim_data_dir(self) -> None:
        """One worker per data folder; a second one exits at once with what to change.

        Otherwise it would crash later and obscurely, on RocksDB's lock of the
        tables (after ~30 s of Faust's retries) or the embedded Qdrant's. Called by
        the intake agent, so only a running worker claims the folder (``faust send``
        and ``doctor`` build the same app).
        """
        if self._data_dir_lock is not None:
            return
        handle = open(self.datadir / "worker.lock", "a+")  # noqa: SIM115 - kept open: the lock lives as long as the worker
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            logging.getLogger("worker.main").critical(
                "Another worker already runs with worker id %r and data dir %s (its tables and embedded store are "
                "locked there). Give each worker on this machine its own VECTORIZE_WORKER_WORKER_ID (e.g. @hostname) "
                "or VECTORIZE_WORKER_DATA_DIR, or stop the other worker.",
                self.settings.worker_id,
                self.settings.data_dir,
            )
            os._exit(2)
        self._data_dir_lock = handle


def table_options(settings: Settings, ttl_seconds: int | None = None) -> dict[str, Any]:
    """See :meth:`WorkerApp.table_options`."""
    if settings.table_store != "rocksdb":
        return {}
    options: dict[str, Any] = {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2, "block_cache_size": 16 << 20}
    if ttl_seconds is not None:
        options["ttl"] = ttl_seconds
    return options
