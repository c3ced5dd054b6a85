"""Log format of the product documentation: ``2024-01-01 12:00:00 - worker.main - INFO - ...``."""

from __future__ import annotations

import logging
from typing import Any

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig merged into Faust's own (``merge``): our format, ``worker.*`` at ``level``."""
    return {
        "version": 1,
        "merge": True,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": LOG_FORMAT, "datefmt": DATE_FORMAT},
            "colored": {"format": LOG_FORMAT, "datefmt": DATE_FORMAT},
        },
        "loggers": {"worker": {"level": level}},
    }


def setup_plain_logging(level: str) -> None:
    """For scripts that run without a Faust worker."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT)
