"""OffsetGuard: records are admitted strictly in offset order; holes are sought back, real ones passed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.offsets import STALL_ERROR_ROUNDS, OffsetGuard


class Consumer:
    """Records the guard's calls; a fake clock the tests move by hand."""

    def __init__(self, committed: int = 0) -> None:
        self.committed = committed
        self.seeks: list[tuple[str, int]] = []
        self.gaps: list[tuple[str, int, int]] = []
        self.positions: dict[str, int] = {}
        self.asked: list[str] = []
        self.now = 0.0

    async def seek(self, tp: str, offset: int) -> None:
        self.seeks.append((tp, offset))
        if tp in self.positions:
            self.positions[tp] = offset  # as aiokafka: the next fetch starts there

    async def start(self, tp: str) -> int:
        self.asked.append(tp)
        return self.committed

    async def read_positions(self) -> dict[str, int]:
        return dict(self.positions)

    async def real_gap(self, tp: str, first: int, last: int) -> None:
        self.gaps.append((tp, first, last))

    def guard(self) -> OffsetGuard:
        return OffsetGuard(
            seek=self.seek,
            committed=self.start,
            real_gap=self.real_gap,
            positions=self.read_positions,
            reseek_after=1.0,
            stall_after=3.0,
            clock=lambda: self.now,
        )

    def tick(self, guard: OffsetGuard, seconds: float = 1.0) -> None:
        """The intake's one-second timer."""
        self.now += seconds
        asyncio.run(guard.reseek_stalled())


def admit_all(guard: OffsetGuard, tp: str, offsets: list[int]) -> list[int]:
    async def go() -> list[int]:
        return [o for o in offsets if await guard.admit(tp, o)]

    return asyncio.run(go())


def test_in_order_records_start_at_the_committed_offset() -> None:
    c = Consumer(committed=10)
    g = c.guard()
    assert admit_all(g, "p0", [10, 11, 12]) == [10, 11, 12]
    assert g.expected("p0") == 13
    assert c.seeks == []


def test_duplicates_below_the_expected_offset_are_dropped() -> None:
    c = Consumer(committed=5)
    g = c.guard()
    assert admit_all(g, "p0", [3, 4, 5, 5, 6, 4]) == [5, 6]
    assert c.seeks == []


def test_a_hole_seeks_back_and_nothing_is_admitted_until_the_missing_record_comes() -> None:
    c = Consumer(committed=24)
    g = c.guard()
    # Faust lost 24..37 around a rebalance and hands over 38, 39, 40
    assert admit_all(g, "p0", [38, 39, 40]) == []
    assert c.seeks == [("p0", 24)]
    # the seek brings the missing records back, then the rest in order
    assert admit_all(g, "p0", list(range(24, 45))) == list(range(24, 45))
    assert c.gaps == []
    assert g.expected("p0") == 45


def test_an_empty_seek_is_repeated_after_the_wait() -> None:
    c = Consumer(committed=0)
    g = c.guard()
    assert admit_all(g, "p0", [7]) == []
    asyncio.run(g.reseek_stalled())
    assert c.seeks == [("p0", 0)]  # too early for another seek
    c.now = 1.5
    asyncio.run(g.reseek_stalled())
    assert c.seeks == [("p0", 0), ("p0", 0)]
    assert admit_all(g, "p0", [0, 1]) == [0, 1]


def test_a_real_hole_is_confirmed_by_repeated_seeks_then_reported_and_passed() -> None:
    c = Consumer(committed=50)
    g = c.guard()
    # offset 50 is a transaction marker: every seek to 50 resumes at 51
    assert admit_all(g, "p0", [53, 54]) == []  # round 1: records fetched before the seek
    c.now += 1.0
    asyncio.run(g.reseek_stalled())
    for _ in range(3):
        assert admit_all(g, "p0", [51]) == []
        c.now += 1.0
        asyncio.run(g.reseek_stalled())
    assert c.gaps == [("p0", 50, 50)]
    assert c.seeks[-1] == ("p0", 51)
    assert admit_all(g, "p0", [51, 52]) == [51, 52]


def test_changing_resume_points_are_not_taken_for_a_real_hole() -> None:
    c = Consumer(committed=0)
    g = c.guard()
    for first in (9, 5, 7, 6, 8):
        assert admit_all(g, "p0", [first]) == []
        c.now += 1.0
        asyncio.run(g.reseek_stalled())
    assert c.gaps == []
    assert admit_all(g, "p0", [0]) == [0]


def test_revoked_partitions_start_again_from_the_committed_offset() -> None:
    c = Consumer(committed=3)
    g = c.guard()
    assert admit_all(g, "p0", [3, 4]) == [3, 4]
    g.forget({"p0"})
    c.committed = 4  # another worker committed 3 only
    assert admit_all(g, "p0", [4, 5]) == [4, 5]


def test_partitions_are_independent() -> None:
    c = Consumer(committed=0)
    g = c.guard()
    assert admit_all(g, "p0", [0, 2]) == [0]
    assert admit_all(g, "p1", [0, 1]) == [0, 1]
    assert c.seeks == [("p0", 1)]


def test_records_of_partitions_no_longer_assigned_are_dropped_without_seeking() -> None:
    c = Consumer(committed=0)
    owned = {"p0"}
    g = OffsetGuard(seek=c.seek, committed=c.start, real_gap=c.real_gap, assigned=owned.__contains__)
    assert admit_all(g, "p1", [5, 0]) == []
    assert admit_all(g, "p0", [0]) == [0]
    assert c.seeks == []


def test_a_failing_seek_is_retried_in_the_next_round() -> None:
    c = Consumer(committed=0)
    calls: list[int] = []

    async def flaky(tp: str, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 1:
            raise RuntimeError("not assigned yet")

    g = OffsetGuard(seek=flaky, committed=c.start, real_gap=c.real_gap, clock=lambda: c.now)
    assert admit_all(g, "p0", [3]) == []
    c.now = 1.0
    asyncio.run(g.reseek_stalled())
    assert calls == [0, 0]


def test_faust_read_offsets_and_gaps_are_switched_off_for_the_tasks_topic_only() -> None:
    from faust.transport.consumer import Consumer
    from faust.types import TP

    from app.compat import _ReadOffsets, guarded_topics, install_offset_guard

    tasks_topic = "vectorization-tasks"
    install_offset_guard(tasks_topic)  # as building the app does
    install_offset_guard("other-guarded")  # idempotent: adds a topic to the same patch
    assert {tasks_topic, "other-guarded"} <= guarded_topics()
    offsets = _ReadOffsets(set(guarded_topics()))
    offsets[TP(tasks_topic, 0)] = 40
    offsets[TP("vectorization-status", 0)] = 40
    assert offsets[TP(tasks_topic, 0)] is None  # Faust then delivers every fetched record
    assert offsets[TP("vectorization-status", 0)] == 40
    assert offsets[TP("vectorization-status", 1)] is None

    from collections import defaultdict

    from intervaltree import IntervalTree

    class FakeConsumer:
        def __init__(self) -> None:
            self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
            self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)

    fake = FakeConsumer()
    tasks, status = TP(tasks_topic, 0), TP("vectorization-status", 0)
    asyncio.run(Consumer._add_gap(fake, tasks, 24, 37))
    asyncio.run(Consumer._add_gap(fake, status, 5, 6))
    assert not fake._gap[tasks]  # never counted as acknowledged behind the guard's back
    assert len(fake._gap[status]) == 1  # other topics keep Faust's behaviour


def test_offsets_without_a_record_are_acked_so_faust_commits_past_a_marker_at_the_end() -> None:
    from collections import defaultdict

    from faust.transport.consumer import Consumer
    from faust.types import TP
    from intervaltree import IntervalTree

    from app.compat import ack_offsets_without_records

    class FakeConsumer:
        """The state ``Consumer.ack`` writes and ``Consumer._new_offset`` reads."""

        def __init__(self) -> None:
            self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
            self._acked: defaultdict[TP, list[int]] = defaultdict(list)
            self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
            self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
            self._n_acked = 0

    fake = FakeConsumer()
    tp = TP("vectorization-tasks", 0)
    fake._committed_offset[tp] = 40  # records up to 39 committed
    for offset in (40, 41):  # the partition's last two records, acked as Consumer.ack does
        fake._acked_index[tp].add(offset)
        fake._acked[tp].append(offset)
    ack_offsets_without_records(fake, tp, 42, 42)  # the producer's commit marker after them
    ack_offsets_without_records(fake, tp, 30, 42)  # already committed or acked: nothing twice
    assert fake._n_acked == 1
    assert Consumer._new_offset(fake, tp) == 43  # Faust's own computation now commits past the marker


def test_records_read_but_never_delivered_are_sought_back_once_the_intake_has_waited() -> None:
    # the chaos test's stall: Faust read p0 up to 181 but the intake got 126 last, and nothing follows
    c = Consumer(committed=120)
    g = c.guard()
    assert admit_all(g, "p0", list(range(120, 127))) == list(range(120, 127))
    c.positions = {"p0": 182}
    g.waiting()
    for _ in range(3):
        c.tick(g)
    assert c.seeks == []  # waited 3 s, first sighting: the records may still be in Faust's buffers
    c.tick(g)
    assert c.seeks == [("p0", 127)] and g.stalls == 1  # same position a second later, nothing delivered
    c.positions["p0"] = 182  # the seek brings them again
    assert admit_all(g, "p0", list(range(127, 182))) == list(range(127, 182))
    g.waiting()
    for _ in range(8):
        c.tick(g)
    assert c.seeks == [("p0", 127)] and c.gaps == [] and g.stalls == 1  # all delivered: nothing more to do


def test_a_record_arriving_between_the_two_checks_cancels_the_suspicion() -> None:
    c = Consumer(committed=0)
    g = c.guard()
    c.positions = {"p0": 40, "p1": 0}
    g.waiting()
    for _ in range(3):
        c.tick(g)  # p0 suspected
    assert admit_all(g, "p1", [0]) == [0]  # the intake is fed
    g.waiting()
    for _ in range(3):
        c.tick(g)
    assert c.seeks == []  # idle again for 3 s: p0 is a first sighting again
    c.tick(g)
    assert c.seeks == [("p0", 0)]


def test_a_record_admitted_while_the_positions_are_read_stops_the_check() -> None:
    c = Consumer(committed=0)
    g = c.guard()
    g.waiting()

    async def positions_while_a_record_arrives() -> dict[str, int]:
        await g.admit("p0", 0)  # the intake takes a record during the read
        return {"p0": 40}

    g._positions = positions_while_a_record_arrives
    for _ in range(6):
        c.tick(g)
        g._waiting_since = 0.0  # waiting "since the start" again before each tick
    assert c.seeks == [] and g.stalls == 0


def test_a_partition_that_delivered_nothing_since_its_assignment_is_checked_against_its_committed_offset() -> None:
    c = Consumer(committed=50)
    g = c.guard()
    c.positions = {"p1": 150, "p3": 50}
    g.waiting()
    for _ in range(4):
        c.tick(g)
    assert sorted(c.asked) == ["p1", "p3"]  # asked once each, then remembered
    assert c.seeks == [("p1", 50)]
    for _ in range(3):
        c.tick(g)  # the seek round brought nothing yet; p1's position is 50 (not evidence of a hole)
    assert sorted(c.asked) == ["p1", "p3"] and c.gaps == []
    assert c.seeks == [("p1", 50)] * 4
    assert admit_all(g, "p1", [50, 51]) == [50, 51]


def test_a_broker_error_while_asking_for_the_committed_offset_skips_the_partition_for_now() -> None:
    c = Consumer(committed=5)
    g = c.guard()
    failures = [RuntimeError("broker not available")] * 2

    async def committed(tp: str) -> int:
        if failures:
            raise failures.pop()
        return 5

    g._committed = committed
    c.positions = {"p0": 9}
    g.waiting()
    for _ in range(5):
        c.tick(g)  # no exception escapes the timer (a Faust timer that raises stops the worker)
    assert g.expected("p0") == 5 and c.seeks == []
    c.tick(g)
    assert c.seeks == [("p0", 5)]


def test_no_seek_while_the_intake_is_held_up_by_backpressure() -> None:
    c = Consumer(committed=0)
    g = c.guard()
    assert admit_all(g, "p0", [0, 1]) == [0, 1]
    c.positions = {"p0": 500}  # read ahead, waiting in Faust's buffer while the pipeline is full
    for _ in range(10):
        c.tick(g)  # the intake never called waiting(): it is busy
    assert c.seeks == []


def test_nothing_is_checked_while_positions_are_unknown_or_caught_up() -> None:
    c = Consumer(committed=7)
    g = c.guard()
    g.waiting()
    c.positions = {}  # rebalancing: no positions
    for _ in range(5):
        c.tick(g)
    assert c.seeks == [] and c.asked == []
    c.positions = {"p0": 7}
    c.tick(g)
    assert c.seeks == [] and g.expected("p0") == 7


def stalled_at(position: int) -> tuple[Consumer, OffsetGuard]:
    """The guard expects offset 50 of p0; the consumer reads past it to ``position`` and nothing is delivered."""
    c = Consumer(committed=50)
    g = c.guard()
    c.positions = {"p0": position}
    g.waiting()
    for _ in range(4):
        c.tick(g)
    assert c.seeks == [("p0", 50)]
    return c, g


def rounds_passing_to(c: Consumer, g: OffsetGuard, position: int, rounds: int) -> None:
    """Seek rounds in which the consumer, sought back to 50, reads to ``position`` and delivers nothing."""
    for _ in range(rounds):
        c.positions["p0"] = position
        c.tick(g)


def test_a_transaction_marker_at_the_end_of_a_partition_is_confirmed_as_a_real_hole() -> None:
    c, g = stalled_at(51)  # offset 50 is a commit marker and nothing follows: every seek to 50 ends at 51
    rounds_passing_to(c, g, 51, 4)
    assert c.gaps == [("p0", 50, 50)]
    assert c.seeks[-1] == ("p0", 51) and g.expected("p0") == 51
    seeks = len(c.seeks)
    for _ in range(6):
        c.tick(g)
    assert len(c.seeks) == seeks  # settled


def test_a_longer_stretch_read_without_delivery_is_sought_again_never_passed(caplog: pytest.LogCaptureFixture) -> None:
    c, g = stalled_at(90)  # records 50..89 exist but keep getting lost: never a reason to skip them
    rounds_passing_to(c, g, 90, STALL_ERROR_ROUNDS + 5)
    assert c.gaps == []
    assert set(c.seeks) == {("p0", 50)}
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "has not delivered offset 50" in errors[0]


def test_an_empty_round_while_the_intake_was_busy_is_no_evidence_of_a_hole() -> None:
    c, g = stalled_at(51)
    for i in range(6):
        assert admit_all(g, "p1", [50 + i]) == [50 + i]  # another partition's records keep the intake busy
        c.positions["p0"] = 51
        c.tick(g)
    assert c.gaps == []
    assert c.seeks[1:] == [("p0", 50)] * 6  # still seeking, every round


def test_a_round_in_which_the_intake_was_fed_midway_is_no_evidence_either() -> None:
    c, g = stalled_at(51)
    for i in range(6):
        c.now += 0.5
        assert admit_all(g, "p1", [50 + i]) == [50 + i]
        g.waiting()  # waiting again, but not since the round began
        c.positions["p0"] = 51
        c.tick(g, 0.5)
    assert c.gaps == []


def test_the_tables_changelog_records_are_never_dropped_by_fausts_read_offset(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Table recovery re-reads a changelog from below where Faust's read offset stood before a rebalance; the
    records it drops there never reach recovery, which then waits for them for ever (the chaos test saw it)."""
    from faust.types import TP

    from app.compat import unfiltered_topics
    from tests.unit.built import build_worker

    worker, agents = build_worker(clean_env, tmp_path, table_store="memory", task_status_table="true")
    changelogs = {
        agents.status.task_status.changelog_topic.get_topic_name(),
        agents.status.worker_stats.changelog_topic.get_topic_name(),
    }
    assert changelogs <= unfiltered_topics()
    read_offsets = worker.app.consumer._read_offset  # Faust's real consumer (not started: no broker needed)
    for topic in (*changelogs, worker.settings.tasks_topic, worker.settings.status_topic):
        read_offsets[TP(topic, 0)] = 40
    for changelog in changelogs:
        assert read_offsets[TP(changelog, 0)] is None  # every fetched record reaches recovery
    assert read_offsets[TP(worker.settings.tasks_topic, 0)] is None  # the intake's guard, as before
    assert read_offsets[TP(worker.settings.status_topic, 0)] == 40  # other topics: Faust's own bookkeeping
