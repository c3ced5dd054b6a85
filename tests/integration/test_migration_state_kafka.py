"""The migration state topic on the real broker (issue 16, app/migration_state.py): created compacted, states
published and read back whole by a fresh reader (the latest per alias, malformed records skipped), followed after
the start, and resumed by a second process. Each test uses its own topic (a uuid suffix) and deletes it after."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.migration_state import MigrationStateReader, MigrationStateWriter, describe_topic_configs, ensure_topic
from core.errors import ConfigError
from core.settings import Settings
from core.versioning import ModelIdentity
from engine.migrations import Backfill, Collection, MigrationState, MigrationView, advance
from tests.integration.harness import BOOTSTRAP, ROOT, create_topics, produce, require_kafka

pytestmark = pytest.mark.integration

A = ModelIdentity("org/model-a", "a" * 64, 4, normalize=True, pooling="mean", family="sentence-transformers")
B = ModelIdentity("org/model-b", "b" * 64, 8, family="transformers")


def settings() -> Settings:
    return Settings(kafka_bootstrap_servers=BOOTSTRAP, worker_id="it-migrations")


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A fresh topic name (the test creates the topic), deleted afterwards."""
    require_kafka()
    name = f"it-migrations-{uuid.uuid4().hex[:8]}"
    yield name
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        if name in await admin.list_topics():
            await admin.delete_topics([name])
    finally:
        await admin.close()


def migration(alias: str) -> list[MigrationState]:
    """The states a migration of ``alias`` from A to B publishes up to its backfill, progress included."""
    states = [MigrationState.bound(alias, Collection(f"{alias}__a", A), owner="it")]
    states.append(advance(states[-1], "shadow_created", shadow=Collection(f"{alias}__b", B)))
    states.append(advance(states[-1], "dual_write"))
    states.append(advance(states[-1], "backfill", backfill=Backfill("qdrant", None, 0)))
    for page in range(1, 4):
        states.append(advance(states[-1], "backfill", backfill=Backfill("qdrant", page * 100, page * 100)))
    return states


async def test_the_topic_is_created_compacted_with_one_partition(topic: str) -> None:
    assert await ensure_topic(settings(), topic) is True
    assert await ensure_topic(settings(), topic) is False  # already there: checked, not created
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        configs = await describe_topic_configs(admin, topic)
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert configs["cleanup.policy"] == "compact"
    assert configs["max.message.bytes"] == str(1024 * 1024)
    assert len(described["partitions"]) == 1


async def test_an_existing_topic_that_deletes_old_records_or_has_more_partitions_is_refused(topic: str) -> None:
    await create_topics([topic], partitions=2)  # the broker's default: cleanup.policy=delete
    with pytest.raises(ConfigError) as info:
        await ensure_topic(settings(), topic)
    message = str(info.value)
    assert f"topic {topic} has cleanup.policy=delete but must be compact" in message
    assert f"--entity-name {topic} --add-config cleanup.policy=compact" in message
    assert f"topic {topic} has 2 partitions, not 1" in message
    with pytest.raises(ConfigError, match="cannot hold states safely"):
        await MigrationStateReader(settings(), topic).start()


async def test_a_reader_that_may_not_create_the_topic_says_how_to(topic: str) -> None:
    with pytest.raises(ConfigError) as info:
        await MigrationStateReader(settings(), topic, create=False).start()
    assert f"The migration state topic {topic} does not exist on {BOOTSTRAP}" in str(info.value)
    assert "kafka-topics.sh --create" in str(info.value)


async def test_a_fresh_reader_sees_the_latest_state_of_every_alias(
    topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    docs, faq, gone = migration("docs"), migration("faq")[:3], migration("gone")[:1]
    async with MigrationStateWriter(settings(), topic) as writer:
        offsets = [await writer.publish(state) for pair in zip(docs, faq, strict=False) for state in pair]
        offsets += [await writer.publish(state) for state in docs[len(faq) :]]
        await writer.publish(gone[0])
        await writer.forget("gone")
    assert offsets == sorted(offsets)
    # records no migrate command wrote: not JSON, a key that is not the alias, a stale epoch
    await produce(topic, [b"{not json"], key=b"docs")
    await produce(topic, [docs[-1].to_json()], key=b"faq")
    await produce(topic, [docs[2].to_json()], key=b"docs")

    with caplog.at_level(logging.INFO, logger="worker.migrations"):
        async with MigrationStateReader(settings(), topic) as reader:
            view = await reader.caught_up(timeout=60)
            assert reader.is_caught_up
    assert view.states() == {"docs": docs[-1], "faq": faq[-1]}
    assert view.get("docs").backfill == Backfill("qdrant", 300, 300)  # type: ignore[union-attr]
    assert [(t.role, t.physical) for t in view.targets("docs")] == [("live", "docs__a"), ("shadow", "docs__b")]
    assert view.physical_for_reads("faq") == "faq__a" and view.targets("gone")[0].physical == "gone"
    assert view.skipped == 3
    end = len(docs) + len(faq) + 2  # the first bad record's offset
    assert f"Skipped the record at {topic}[0]@{end} of the migration state topic (key 'docs'): " in caplog.text
    assert f"Skipped the record at {topic}[0]@{end + 1}" in caplog.text and "is not the alias it holds" in caplog.text
    assert f"Ignored the migration state of alias 'docs' at {topic}[0]@{end + 2}" in caplog.text
    assert f"Read the migration state topic {topic} to its end: 2 alias(es), 3 record(s) skipped" in caplog.text


async def test_an_empty_topic_is_read_at_once_and_a_reader_follows_what_comes_after(topic: str) -> None:
    view = MigrationView()
    heard: list[tuple[str, int]] = []
    view.subscribe(lambda alias, state: heard.append((alias, state.epoch if state else -1)))
    async with MigrationStateReader(settings(), topic, view=view, poll_ms=200) as reader:
        assert (await reader.caught_up(timeout=30)).states() == {}
        states = migration("docs")[:3]
        async with MigrationStateWriter(settings(), topic) as writer:
            for state in states:
                await writer.publish(state)
        await wait_for(lambda: view.get("docs") == states[-1], "the reader to follow the new states")
    assert heard == [("docs", 0), ("docs", 1), ("docs", 2)]


async def test_a_second_process_resumes_the_migration_where_the_topic_left_it(topic: str) -> None:
    states = migration("docs")
    async with MigrationStateWriter(settings(), topic) as writer:
        for state in states:
            await writer.publish(state)
    view = MigrationView()
    async with MigrationStateReader(settings(), topic, view=view, poll_ms=200) as reader:
        await reader.caught_up(timeout=60)
        # another process (a restarted command) reads the topic, resumes at the cursor and moves the state on
        script = textwrap.dedent(
            f"""
            import asyncio, json
            from app.migration_state import MigrationStateReader, MigrationStateWriter
            from core.settings import Settings
            from engine.migrations import Backfill, advance

            async def main():
                s = Settings(kafka_bootstrap_servers={BOOTSTRAP!r}, worker_id="it-second")
                async with MigrationStateReader(s, {topic!r}) as reader:
                    state = (await reader.caught_up(timeout=60)).get("docs")
                print(json.dumps({{"phase": state.phase, "epoch": state.epoch, "cursor": state.backfill.cursor}}))
                done = Backfill(state.backfill.store, None, state.backfill.produced + 50)
                state = advance(advance(state, "backfill", backfill=done, owner="second"), "verify")
                async with MigrationStateWriter(s, {topic!r}) as writer:
                    await writer.publish(state)

            asyncio.run(main())
            """
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"phase": "backfill", "epoch": 3, "cursor": 300}
        await wait_for(lambda: view.get("docs") is not None and view.get("docs").phase == "verify", "verify")  # type: ignore[union-attr]
    resumed = view.get("docs")
    assert resumed is not None
    assert (resumed.epoch, resumed.owner, resumed.backfill) == (4, "second", Backfill("qdrant", None, 350))
    assert resumed.live == states[-1].live and resumed.shadow == states[-1].shadow


async def wait_for(condition, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_the_command_knows_when_the_workers_group_has_processed_its_reembed_records(topic: str) -> None:
    # the migrate command's producer remembers the offsets it produced; the group's committed offsets say when
    # the workers have processed every one (what lets the command go on while traffic keeps the counts apart)
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    from app.migrate import KafkaRecords

    group = f"it-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    records = KafkaRecords(
        Settings(kafka_bootstrap_servers=BOOTSTRAP, worker_id="it-migrate", tasks_topic=topic, kafka_group_id=group)
    )
    try:
        assert await records.consumed() is None  # nothing sent: it cannot tell
        assert await records.produce([(f"task-{i}", b'{"task_type": "reembed"}') for i in range(12)]) == []
        assert len(records.sent) > 1  # keys spread over partitions
        assert await records.consumed() is False  # no commit by the group yet
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = sorted(records.sent)
            consumer.assign([TopicPartition(topic, p) for p in partitions])
            # a commit short of the last record of one partition: not yet
            short = {TopicPartition(topic, p): OffsetAndMetadata(records.sent[p] + 1, "") for p in partitions}
            short[TopicPartition(topic, partitions[0])] = OffsetAndMetadata(records.sent[partitions[0]], "")
            await consumer.commit(short)
            assert await records.consumed() is False
            await consumer.commit(
                {TopicPartition(topic, p): OffsetAndMetadata(records.sent[p] + 1, "") for p in partitions}
            )
            assert await records.consumed() is True
        finally:
            await consumer.stop()
    finally:
        await records.stop()
