"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.harness import Topics, create_topics, require_kafka, run


@pytest.fixture
def topics() -> Topics:
    """Fresh topic names and group on the real broker (fails, never skips, without Kafka)."""
    require_kafka()
    t = Topics()
    run(create_topics([t.tasks], partitions=4))
    return t
