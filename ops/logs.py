"""Log format of the product documentation: ``2024-01-01 12:00:00 - worker.main - INFO - ...``."""

from __future__ import annotations

import logging
from typing import Any

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


#: Faust's producer logs these whenever more than 100 table changelog records wait to be sent, and
#: then makes the next incoming record wait until they are: under load the task-status tracker's
#: window (agents/status.py) does that about every second, so a healthy worker printed a WARNING
#: and an INFO line per second
PRODUCER_BUFFER_NOISE = ("producer buffer full size", "producer flush took")


#: a flush that took longer than this keeps Faust's own level: the broker is slow, not the tracker busy
SLOW_FLUSH_S = 1.0


class ProducerBufferNoise(logging.Filter):
    """Faust's producer-buffer flow-control lines become DEBUG (shown only when ``worker`` logs at DEBUG),
    except a flush slower than :data:`SLOW_FLUSH_S`, which stays as Faust logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if not message.startswith(PRODUCER_BUFFER_NOISE):
            return True
        if message.startswith("producer flush took"):
            try:
                if float(message.rsplit(" ", 1)[1]) > SLOW_FLUSH_S:
                    return True
            except ValueError:
                return True
        if not logging.getLogger("worker").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig merged into Faust's own (``merge``): our format, ``worker.*`` at ``level``,
    Faust's producer-buffer lines demoted to DEBUG (:class:`ProducerBufferNoise`)."""
    return {
        "version": 1,
        "merge": True,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": LOG_FORMAT, "datefmt": DATE_FORMAT},
            "colored": {"format": LOG_FORMAT, "datefmt": DATE_FORMAT},
        },
        "filters": {"producer_buffer_noise": {"()": ProducerBufferNoise}},
        "loggers": {
            "worker": {"level": level},
            "faust.transport.producer": {"filters": ["producer_buffer_noise"]},
        },
    }


def setup_plain_logging(level: str) -> None:
    """For scripts that run without a Faust worker."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT)
