"""/readyz answers 503 with its checks, never a 500, while Faust's consumer is still starting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.unit.built import build_worker


class Web:
    """Faust's web driver, reduced to the JSON response the view builds."""

    def json(self, body: Any, *, status: int = 200, **kwargs: Any) -> tuple[Any, int]:
        return body, status


class StartingConsumer:
    """Faust's consumer before its thread created the Kafka client: ``assignment()`` raises."""

    should_stop = False

    def assignment(self) -> set[Any]:
        from faust.exceptions import ConsumerNotStarted

        raise ConsumerNotStarted("Consumer thread not yet started")


class AssignedConsumer:
    should_stop = False

    def assignment(self) -> set[Any]:
        return {("vectorization-tasks", 0)}


@pytest.mark.parametrize(
    ("consumer", "assigned"), [(None, False), (StartingConsumer(), False), (AssignedConsumer(), True)]
)
def test_readyz_reports_kafka_assignment_without_raising(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, consumer: Any, assigned: bool
) -> None:
    worker, parts = build_worker(clean_env, tmp_path)
    clean_env.setattr(worker.app, "_consumer", consumer)
    body, status = asyncio.run(parts.web.readyz(Web(), None))
    assert body["checks"]["kafka_assigned"] is assigned
    assert status == 503  # the model is not warmed in a unit test, so never ready here
    assert body["ready"] is False and body["checks"]["model_warmed"] is False


async def test_the_lag_gauge_follows_the_partitions_this_worker_holds() -> None:
    from app.runtime import WorkerRuntime
    from core.settings import load_settings

    lags = {("tasks", 0): 7, ("tasks", 1): 3}

    async def send(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing is sent")

    rt = WorkerRuntime(load_settings(worker_id="w-lag"), send, lag=lambda: dict(lags))
    value = rt.metrics.registry.get_sample_value
    await rt.refresh()
    assert rt.state()["consumer_lag"] == 10
    assert value("worker_consumer_lag", {"topic": "tasks", "partition": "1"}) == 3
    del lags[("tasks", 1)]  # partition 1 went to another worker in a rebalance
    await rt.refresh()
    assert rt.state()["consumer_lag"] == 7
    assert value("worker_consumer_lag", {"topic": "tasks", "partition": "1"}) is None  # not its last value
    assert value("worker_consumer_lag", {"topic": "tasks", "partition": "0"}) == 7
