"""The Faust application object and its topics (``faust -A app worker``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import faust

from app.errors import ConfigError
from app.logs import logging_config
from app.settings import Settings, load_settings


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
    # Task payloads are parsed by our own validator (bad JSON must become a
    # dead letter, not a codec crash); `faust send` then writes the text as is.
    key_serializer="raw",
    value_serializer="raw",
    datadir=str(DATADIR),
    web_port=settings.web_port,
    web_bind=settings.web_host,
    topic_partitions=settings.topic_partitions,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    producer_max_request_size=max(1_048_576, settings.max_task_bytes * 2),
    # Faust's own wait for in-flight records can hang on records buffered but
    # never handed to the agent (see README, "Delivery"); the worker drains its
    # batch in flight itself on SIGTERM (agents/lifecycle.py) before Faust commits.
    stream_wait_empty=False,
    # A worker killed with -9 holds its partitions until the session times out.
    broker_session_timeout=settings.kafka_session_timeout,
    broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
    logging_config=logging_config(settings.log_level),
)

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
