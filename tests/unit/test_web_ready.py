"""/readyz answers 503 with its checks, never a 500, while Faust's consumer is still starting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import web


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
    monkeypatch: pytest.MonkeyPatch, consumer: Any, assigned: bool
) -> None:
    monkeypatch.setattr(web.app, "_consumer", consumer)
    view = web.readyz(web.app, Web())  # the view class Faust's @app.page made
    body, status = asyncio.run(view.get(None))
    assert body["checks"]["kafka_assigned"] is assigned
    assert status == 503  # the model is not warmed in a unit test, so never ready here
    assert body["ready"] is False and body["checks"]["model_warmed"] is False
