"""The bench's fresh collection per case (bench/case_collections.py) and the task field that routes to it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.case_collections import CaseCollections, server_pid
from bench.worker_cases import bulk_tasks, mixed_tasks, repeated_tasks, small_tasks
from core.errors import StoreUnavailableError
from tests.fakes import FakeStore


def bodies(tasks: list[tuple[str, bytes, int]]) -> list[dict[str, object]]:
    return [json.loads(value) for _, value, _ in tasks]


def test_every_task_builder_sends_its_tasks_into_the_named_collection() -> None:
    texts = [f"sentence {i}" for i in range(40)]
    built = [
        small_tasks("s", texts, "bench_small_1"),
        bulk_tasks("b", texts, size=16, collection="bench_small_1"),
        repeated_tasks("r", texts, collection="bench_small_1"),
        mixed_tasks("m", texts, ["Title. Body of an article."], collection="bench_small_1"),
    ]
    for tasks in built:
        assert {b.get("collection") for b in bodies(tasks)} == {"bench_small_1"}
    # without one, the worker's default collection: no field at all
    assert all("collection" not in b for b in bodies(small_tasks("s", texts)))


def test_names_are_fresh_per_case_and_all_are_dropped_alias_first(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    cases = CaseCollections("weaviate", {})
    monkeypatch.setattr(cases, "_adapter", lambda: store)
    small, bulk = cases.new("worker_small0"), cases.new("worker_bulk0")
    assert small != bulk and small.startswith("bench_worker_small0_")
    # as the worker leaves them: an alias for each, pointing at a physical collection bound to the model
    for name in (small, bulk):
        store.collections[f"{name}__model"] = {}
        store.point(name, f"{name}__model")
    store.collections["vectorize"] = {}  # not the bench's: left alone

    assert cases.drop_all() == []
    assert set(store.collections) == {"vectorize"} and store.aliases == {}
    assert cases.drop_all() == []  # nothing named any more


def test_a_store_that_fails_leaves_a_line_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    cases = CaseCollections("chroma", {})
    monkeypatch.setattr(cases, "_adapter", lambda: store)
    name = cases.new("worker_small0")
    store.fail_next.append(StoreUnavailableError("chroma at http://127.0.0.1:8000 is down"))
    problems = cases.drop_all()
    assert len(problems) == 1 and name in problems[0] and "is down" in problems[0]


def test_qdrant_local_mode_has_nothing_to_drop_and_no_server_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = CaseCollections("qdrant", {})
    cases.new("worker_small0")
    assert cases.drop_all() == []
    assert server_pid("qdrant") is None
    monkeypatch.setenv("VW_STATE", str(tmp_path))
    assert server_pid("weaviate") is None  # no pid file
    (tmp_path / "weaviate").mkdir()
    (tmp_path / "weaviate" / "weaviate.pid").write_text("not a pid\n")
    assert server_pid("weaviate") is None
    (tmp_path / "weaviate" / "weaviate.pid").write_text(f"{os.getpid()}\n")
    assert server_pid("weaviate") == os.getpid()
    (tmp_path / "redis").mkdir()  # Redis too (scripts/redis.sh): the statuses and the cache cost it CPU per task
    (tmp_path / "redis" / "redis.pid").write_text(f"{os.getpid()}\n")
    assert server_pid("redis") == os.getpid()


def test_a_progress_line_names_every_server_measured() -> None:
    from bench.run import servers_part

    case = {"store_cpu_ms_per_text": 0.5, "broker_cpu_ms_per_text": 0.25, "redis_cpu_ms_per_text": 0.125}
    assert servers_part(case) == ", store 0.50, broker 0.25, redis 0.12"
    assert servers_part({"broker_cpu_ms_per_text": 0.25}) == ", broker 0.25"  # Qdrant's local mode: no store


def test_ceilings_are_the_bare_models_cpu_over_itself_and_the_servers() -> None:
    from bench.run import ceilings

    def run(model: float, store: float, broker: float) -> dict[str, dict[str, float]]:
        return {
            "bf16_parallel": {"cpu_ms_per_text": model},
            "worker_small": {"store_cpu_ms_per_text": store, "broker_cpu_ms_per_text": broker},
            "worker_bulk": {"store_cpu_ms_per_text": store},  # the broker not measured: no ceiling
        }

    # medians over the runs: model 2.0, store 0.5, broker 0.3
    got = ceilings([run(2.0, 0.5, 0.3), run(1.0, 0.4, 0.9), run(3.0, 0.6, 0.2)], "bf16_parallel")
    assert got == {"worker_small/best_bare": pytest.approx(2.0 / 2.8)}
