"""Where migrations' states live: the compacted Kafka topic ``vectorization-migrations`` (issue 16).

One record per alias (key: the alias, value: :meth:`engine.migrations.MigrationState.to_json`), in a topic
of one partition with ``cleanup.policy=compact``: Kafka keeps at least the latest record of every alias, so
reading the topic whole gives the latest state of each (docs/migration.md, "State of a migration").

* :func:`ensure_topic` creates the topic when it is missing (1 partition, compacted, records of at most
  :data:`TOPIC_MAX_MESSAGE_BYTES`) and refuses one that is not compacted (Kafka would delete states).
* :class:`MigrationStateWriter` publishes a state, keyed by its alias, and waits until every in-sync replica
  has it.
* :class:`MigrationStateReader` reads the topic from its beginning to the end offset it found at start (no
  consumer group: ``assign`` + ``seek_to_beginning``), feeding a :class:`~engine.migrations.MigrationView`;
  ``await reader.caught_up()`` returns once it has; it then follows the topic for new states. A malformed or
  oversized record is skipped with a log line naming its topic, partition and offset.

Both use the worker's Kafka security settings (SASL/TLS) exactly as the worker's other clients do
(:func:`app.kafka_security.aiokafka_security_kwargs`). Why a topic and not a Faust table: a table's partitions
live only on the worker they are assigned to, GlobalTable is unreliable with several workers in
faust-streaming, and the migrate command must write the state outside any stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from app.kafka_security import aiokafka_security_kwargs
from core.errors import ConfigError, RetryableError
from core.settings import Settings
from engine.migrations import MAX_STATE_BYTES, MIGRATIONS_TOPIC, MigrationState, MigrationView

log = logging.getLogger("worker.migrations")

__all__ = [
    "MIGRATIONS_TOPIC",
    "TOPIC_CONFIGS",
    "describe_topic_configs",
    "MigrationStateReader",
    "MigrationStateWriter",
    "ensure_topic",
    "topic_config_problems",
]

#: the broker's limit on one record batch of the topic: a few states, far below the broker's default
TOPIC_MAX_MESSAGE_BYTES = 1024 * 1024
#: the topic-level settings of a created topic
TOPIC_CONFIGS = {"cleanup.policy": "compact", "max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
#: the most replicas a created topic asks for (fewer on a smaller cluster)
MAX_REPLICATION = 3
_TOPIC_ALREADY_EXISTS = 36
_BACKOFF_MAX_S = 30.0


def _client_id(settings: Settings, role: str) -> str:
    return f"vectorize-worker-{settings.worker_id}-migrations-{role}"


def _create_hint(topic: str) -> str:
    return (
        f"kafka-topics.sh --create --topic {topic} --partitions 1 --config cleanup.policy=compact "
        f"--config max.message.bytes={TOPIC_MAX_MESSAGE_BYTES}"
    )


def topic_config_problems(topic: str, configs: Mapping[str, str | None]) -> list[str]:
    """What in the topic-level ``configs`` of ``topic`` (as ``describe_configs`` reports them) would lose or
    refuse states; empty when they fit."""
    problems = []
    policy = {part.strip() for part in (configs.get("cleanup.policy") or "").split(",") if part.strip()}
    if policy != {"compact"}:
        shown = configs.get("cleanup.policy")
        problems.append(
            f"topic {topic} has cleanup.policy={shown} but must be compact alone (with delete, Kafka drops the "
            f"states of aliases not migrated for retention.ms): kafka-configs.sh --alter --entity-type topics "
            f"--entity-name {topic} --add-config cleanup.policy=compact"
        )
    limit = configs.get("max.message.bytes")
    if limit is not None and limit.isdigit() and int(limit) < MAX_STATE_BYTES + 1024:
        problems.append(
            f"topic {topic} has max.message.bytes={limit}, below one state record ({MAX_STATE_BYTES} bytes): "
            f"kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config "
            f"max.message.bytes={TOPIC_MAX_MESSAGE_BYTES}"
        )
    return problems


#: DescribeConfigs' answer for a topic the broker's metadata does not know yet (just created)
_UNKNOWN_TOPIC = 3


class _TopicNotKnownYet(ConfigError):
    """The broker answered "unknown topic" about a topic that was just listed or created."""


def _describe_entries(responses: list[Any], topic: str) -> dict[str, str | None]:
    """``{name: value}`` of a DescribeConfigs answer about ``topic``; ``ConfigError`` on an error code."""
    values: dict[str, str | None] = {}
    for response in responses:
        for resource in response.to_object().get("resources", []):
            if resource.get("resource_name") != topic:
                continue
            if resource.get("error_code") == _UNKNOWN_TOPIC:
                raise _TopicNotKnownYet(f"Kafka does not know topic {topic} (yet)")
            if resource.get("error_code"):
                raise ConfigError(
                    f"Kafka refused to describe the configuration of topic {topic} (error "
                    f"{resource['error_code']}: {resource.get('error_message')}): grant the worker's user "
                    "DescribeConfigs on it."
                )
            for entry in resource.get("config_entries", []):
                name = entry.get("config_names", entry.get("config_name"))
                values[name] = entry.get("config_value")
    return values


async def describe_topic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str | None]:
    """The effective topic-level configuration of ``topic`` (``cleanup.policy``, ``max.message.bytes``…)."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return _describe_entries(responses, topic)


async def _settled_configs(admin: AIOKafkaAdminClient, topic: str, timeout: float) -> dict[str, str | None]:
    """:func:`describe_topic_configs`, asked again for up to ``timeout`` seconds while the broker still answers
    "unknown topic": right after a topic is created its metadata takes a moment to reach every broker."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await describe_topic_configs(admin, topic)
        except _TopicNotKnownYet:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"Kafka still does not know topic {topic} {timeout:.0f} s after it was listed or created: check "
                    "the brokers' logs (kafka-topics.sh --describe --topic ...)."
                ) from None
        await asyncio.sleep(0.2)


async def _partition_count(admin: AIOKafkaAdminClient, topic: str) -> int:
    for described in await admin.describe_topics([topic]):
        if described.get("topic") == topic:
            return len(described.get("partitions") or [])
    return 0


async def ensure_topic(
    settings: Settings,
    topic: str = MIGRATIONS_TOPIC,
    *,
    create: bool = True,
    replication_factor: int | None = None,
    timeout: float = 30.0,
) -> bool:
    """Create the state topic when missing (1 partition, :data:`TOPIC_CONFIGS`, ``replication_factor`` replicas,
    by default as many as the cluster has brokers up to :data:`MAX_REPLICATION`), then check it; whether it was
    created here.

    Raises :class:`ConfigError` when the topic is missing and ``create`` is false or it cannot be created (no
    right to), or when it exists with other than one partition or with settings that would lose states
    (:func:`topic_config_problems`); :class:`RetryableError` when Kafka does not answer.
    """
    bootstrap = settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=_client_id(settings, "admin"),
        request_timeout_ms=int(timeout * 1000),
        **aiokafka_security_kwargs(settings),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (KafkaError, OSError, TimeoutError) as exc:
        await admin.close()
        raise RetryableError(
            f"Cannot reach Kafka at {bootstrap} to check the migration state topic {topic} ({type(exc).__name__}: "
            f"{exc}): is the broker running? (VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS)"
        ) from None
    created = False
    try:
        if topic not in set(await admin.list_topics()):
            if not create:
                raise ConfigError(
                    f"The migration state topic {topic} does not exist on {bootstrap}: create it "
                    f"({_create_hint(topic)}), or start a reader or writer that may create it."
                )
            if replication_factor is None:
                brokers = (await admin.describe_cluster()).get("brokers") or []
                replication_factor = max(1, min(MAX_REPLICATION, len(brokers)))
            response = await admin.create_topics([NewTopic(topic, 1, replication_factor, topic_configs=TOPIC_CONFIGS)])
            for _name, code, *rest in response.topic_errors:
                if code == _TOPIC_ALREADY_EXISTS:
                    continue  # another worker or command created it meanwhile
                if code:
                    message = rest[0] if rest else ""
                    raise ConfigError(
                        f"Cannot create the migration state topic {topic} on {bootstrap} (Kafka error {code}: "
                        f"{message}): create it yourself ({_create_hint(topic)}), or grant the worker's user "
                        "CreateTopics."
                    )
                created = True
                log.info(
                    "Created the migration state topic %s (1 partition, %d replica(s), cleanup.policy=compact)",
                    topic,
                    replication_factor,
                )
        problems = topic_config_problems(topic, await _settled_configs(admin, topic, timeout))
        partitions = await _partition_count(admin, topic)
        if partitions != 1:
            problems.append(
                f"topic {topic} has {partitions} partitions, not 1 (the readers read partition 0, in order): "
                f"delete it if it holds no state and let the worker create it, or create it again "
                f"({_create_hint(topic)})"
            )
        if problems:
            raise ConfigError("The migration state topic cannot hold states safely: " + "; ".join(problems) + ".")
    except KafkaError as exc:
        raise RetryableError(
            f"Kafka at {bootstrap} failed while checking the migration state topic {topic} ({type(exc).__name__}: "
            f"{exc}); try again once the broker answers."
        ) from None
    finally:
        await admin.close()
    return created


class MigrationStateWriter:
    """Publishes migration states to the topic, one record per state keyed by its alias, each awaited until
    the in-sync replicas have it (``acks=all``). Use ``async with`` or :meth:`start` / :meth:`stop`."""

    def __init__(self, settings: Settings, topic: str = MIGRATIONS_TOPIC, *, create: bool = True) -> None:
        self.settings = settings
        self.topic = topic
        self.create = create
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> MigrationStateWriter:
        await ensure_topic(self.settings, self.topic, create=self.create)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=_client_id(self.settings, "writer"),
            acks="all",
            max_request_size=TOPIC_MAX_MESSAGE_BYTES,
            **aiokafka_security_kwargs(self.settings),
        )
        await producer.start()
        self._producer = producer
        return self

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> MigrationStateWriter:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError(f"MigrationStateWriter for topic {self.topic} is not started: await start() first")
        return self._producer

    async def publish(self, state: MigrationState) -> int:
        """Write ``state`` (keyed by its alias) and wait until Kafka has it; its offset.

        :class:`~engine.migrations.MigrationStateError` when the state is over the size limit (nothing sent).
        """
        value = state.to_json()
        metadata = await self._started().send_and_wait(self.topic, value, key=state.alias.encode())
        log.info(
            "Published migration state %s at %s[%d]@%d",
            state.describe(),
            self.topic,
            metadata.partition,
            metadata.offset,
        )
        return metadata.offset

    async def forget(self, alias: str) -> int:
        """Write a tombstone for ``alias`` (readers drop it; compaction removes it later); its offset."""
        metadata = await self._started().send_and_wait(self.topic, None, key=alias.encode())
        log.info(
            "Published a tombstone for alias %r at %s[%d]@%d", alias, self.topic, metadata.partition, metadata.offset
        )
        return metadata.offset


class MigrationStateReader:
    """Reads the state topic whole, then follows it, into :attr:`view` (a :class:`MigrationView`).

    No consumer group and no committed offsets: every reader (each worker, the migrate command) starts at
    the beginning. :meth:`caught_up` returns once every record up to the end offsets seen at :meth:`start` is
    applied. A Kafka error while following is logged and retried with a growing pause (up to 30 s); a bad
    record is skipped by the view with a log line naming where it is.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str = MIGRATIONS_TOPIC,
        *,
        view: MigrationView | None = None,
        create: bool = True,
        poll_ms: int = 500,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.view = view if view is not None else MigrationView()
        self.create = create
        self.poll_ms = poll_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ends: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()

    async def start(self, timeout: float = 30.0) -> MigrationStateReader:
        """Check the topic (:func:`ensure_topic`; created when missing unless ``create=False``), assign its
        partition from the beginning, note its end offset, and start following; :meth:`caught_up` tells when the
        start is read."""
        await ensure_topic(self.settings, self.topic, create=self.create, timeout=timeout)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=_client_id(self.settings, "reader"),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **aiokafka_security_kwargs(self.settings),
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, 0)]  # ensure_topic checked it has this one partition
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            self._ends = await consumer.end_offsets(partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        await self._check_caught_up()
        self._task = asyncio.create_task(self._follow(), name=f"migration-state-reader:{self.topic}")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> MigrationStateReader:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def is_caught_up(self) -> bool:
        return self._caught_up.is_set()

    async def caught_up(self, timeout: float | None = None) -> MigrationView:
        """Wait until the records that were in the topic at :meth:`start` are applied; the view.

        ``TimeoutError`` naming the topic and how far the reader got when ``timeout`` passes first.
        """
        if self._consumer is None and not self._caught_up.is_set():
            raise RuntimeError(f"MigrationStateReader for topic {self.topic} is not started: await start() first")
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            got = ", ".join(
                f"partition {tp.partition}: {self._positions.get(tp, 0)} of {end}" for tp, end in self._ends.items()
            )
            raise TimeoutError(
                f"The migration state topic {self.topic} on {self.settings.kafka_bootstrap_servers} was not read to "
                f"its end within {timeout}s ({got}): is the broker reachable? Its log may say more."
            ) from None
        return self.view

    async def _check_caught_up(self) -> None:
        if self._caught_up.is_set() or self._consumer is None:
            return
        for tp in self._ends:
            self._positions[tp] = await self._consumer.position(tp)
        if all(self._positions[tp] >= end for tp, end in self._ends.items()):
            log.info(
                "Read the migration state topic %s to its end: %d alias(es), %d record(s) skipped",
                self.topic,
                len(self.view.states()),
                self.view.skipped,
            )
            self._caught_up.set()

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        pause = 0.5
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=500)
                for tp, records in batch.items():
                    for record in records:
                        where = f"{tp.topic}[{tp.partition}]@{record.offset}"
                        try:
                            self.view.apply_record(record.key, record.value, where)
                        except Exception as exc:  # noqa: BLE001 - one record must not cost the rest of the batch
                            log.warning(
                                "Skipped the migration state record at %s: %s: %s", where, type(exc).__name__, exc
                            )
                await self._check_caught_up()
                pause = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the reader outlives a broker outage; it logs and retries
                log.warning(
                    "Reading the migration state topic %s from %s failed (%s: %s); retrying in %.1fs. Until it "
                    "reads again, this process keeps the migration states it has.",
                    self.topic,
                    self.settings.kafka_bootstrap_servers,
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(_BACKOFF_MAX_S, pause * 2)
