"""One error hierarchy for the whole worker.

* :class:`PermanentError` — the task itself is bad (malformed payload, unknown
  model, undecodable input). The task gets a ``failed`` status and a
  dead-letter record; its offset moves on. Never retried.
* :class:`RetryableError` — something outside the task is unavailable (vector
  store, Kafka, Redis, a timeout). Retried with backoff; the offset is not
  acknowledged until the work is done.
* :class:`ConfigError` — the worker's configuration is wrong; start-up stops
  with one message naming every bad field.

Every message says what failed, where, and what to do.
"""

from __future__ import annotations

#: error messages that travel in status, result and dead-letter records are cut to this many characters
MAX_ERROR_CHARS = 4096


def cap_message(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    cut = f" … [{len(text) - limit + 40} more characters cut]"
    return text[: max(0, limit - len(cut))] + cut


class VectorizeError(Exception):
    """Base class of every error raised on purpose by vectorize-worker."""

    #: short machine-readable kind, used in metrics, status and DLQ records
    kind: str = "error"

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id

    def __str__(self) -> str:
        return self.message


class PermanentError(VectorizeError):
    """The task cannot succeed as sent: fail it, dead-letter it, move on."""

    kind = "permanent"


class InvalidTaskError(PermanentError):
    """The payload is not a valid task (not JSON, wrong fields, too large)."""

    kind = "invalid_task"


class UnsupportedTaskError(PermanentError):
    """The task is valid but this worker cannot process its kind (yet)."""

    kind = "unsupported_task"


class ModelLoadError(PermanentError):
    """A model could not be found or loaded."""

    kind = "model_load"


class ModelMemoryError(PermanentError):
    """A model, or one input of it, does not fit the memory it is allowed (budget or device)."""

    kind = "model_memory"


class StoreRejectedError(PermanentError):
    """The vector store refused the data itself (e.g. a dimension mismatch)."""

    kind = "store_rejected"


class RetryableError(VectorizeError):
    """A dependency is unavailable; retry later without acknowledging."""

    kind = "retryable"


class StoreUnavailableError(RetryableError):
    """The vector store cannot be reached or timed out."""

    kind = "store_unavailable"


class ConfigError(VectorizeError):
    """The configuration is invalid; the worker must not start."""

    kind = "config"
