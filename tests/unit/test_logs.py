from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator

import pytest

from ops.logs import ProducerBufferNoise, logging_config


@pytest.fixture
def configured() -> Iterator[logging.Logger]:
    """Our dictConfig applied as Faust applies it (without Faust's own handlers), undone afterwards."""
    producer = logging.getLogger("faust.transport.producer")
    worker = logging.getLogger("worker")
    saved = (producer.filters[:], producer.handlers[:], worker.level)
    config = logging_config("INFO")
    config.pop("merge")
    logging.config.dictConfig(config)
    yield producer
    producer.filters[:], producer.handlers[:] = saved[0], saved[1]
    worker.setLevel(saved[2])


def test_fausts_producer_buffer_lines_are_debug_only(
    configured: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """Under load the tracker's table writes make Faust log these every second; other producer lines stay."""
    assert any(isinstance(f, ProducerBufferNoise) for f in configured.filters)
    caplog.set_level(logging.DEBUG)
    configured.warning("producer buffer full size 860")
    configured.info("producer flush took 0.0194")
    configured.warning("Producer: something else went wrong")
    configured.info("producer flush took 3.5")  # a slow broker, not a busy tracker: kept
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Producer: something else went wrong"),
        ("INFO", "producer flush took 3.5"),
    ]
    caplog.clear()
    logging.getLogger("worker").setLevel(logging.DEBUG)  # LOG_LEVEL=DEBUG shows them, as DEBUG
    configured.warning("producer buffer full size 860")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", "producer buffer full size 860")]
