"""Retry transient failures with exponential backoff and full jitter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from core.errors import RetryableError

T = TypeVar("T")
log = logging.getLogger("worker.retry")


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Delay before retry ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


async def retry_forever(
    func: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    base: float = 0.5,
    cap: float = 30.0,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Await ``func()`` until it succeeds; retryable errors wait and try again.

    Never gives up: work that is not done is never acknowledged, so giving up
    would only turn into a redelivery later. Other exceptions propagate.
    Cancellation (worker shutdown) interrupts the wait.
    """
    attempt = 0
    while True:
        try:
            result = await func()
        except retry_on as exc:
            attempt += 1
            delay = backoff_delay(attempt, base=base, cap=cap)
            if attempt == 1 or attempt % 10 == 0:
                log.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, attempt, delay, exc)
            if on_retry is not None:
                on_retry(attempt, exc)
            await asyncio.sleep(delay)
            continue
        if attempt:
            log.info("%s succeeded after %d retries", what, attempt)
        return result
