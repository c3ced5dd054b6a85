"""Publish status, result and dead-letter records through a narrow ``send`` port."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tasks.records import (
    DeadLetterRecord,
    ErrorInfo,
    ResultRecord,
    SourceInfo,
    Status,
    StatusRecord,
    to_bytes,
)

#: send(topic, key, value) queues a record and returns an awaitable that
#: resolves when the broker has it (raises when delivery failed).
SendPort = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[Any]]]

#: track(task_id, status, timestamp, record) sees every status record as it is queued for Kafka, and must
#: not wait (ops/task_status.py queues it for Redis: what ``/tasks/{id}`` answers)
StatusHook = Callable[[str, str, float, bytes], None]


#: what any send port raises for a record that did not arrive; the Faust app adds Kafka's own (app/runtime.py)
SEND_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)


class RecordPublisher:
    """Queues records and hands back delivery futures.

    Each method returns once the record is queued; await the returned
    awaitable (or :meth:`delivered`) to know the broker has it. Acknowledge a
    task's offset only after its records are delivered.
    """

    #: dead letters carry at most this much of the original payload, so they fit
    #: a broker's default 1 MB message limit; the whole record stays at `source`
    DLQ_PAYLOAD_LIMIT = 512 * 1024

    def __init__(
        self,
        send: SendPort,
        *,
        worker_id: str,
        status_topic: str,
        results_topic: str,
        dlq_topic: str,
        errors: tuple[type[BaseException], ...] = SEND_ERRORS,
        on_status: StatusHook | None = None,
    ) -> None:
        self._send = send
        self._on_status = on_status
        #: what ``send`` and its delivery futures raise when a record does not arrive (retried, or refused for
        #: good when the error says it is not retriable); anything else is a bug and is not retried blindly
        self.errors = errors
        self.worker_id = worker_id
        self.status_topic = status_topic
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic

    async def status(
        self, task_id: str, status: Status, *, task_type: str | None = None, error: BaseException | None = None
    ) -> Awaitable[Any]:
        record = StatusRecord(
            task_id=task_id,
            status=status,
            worker_id=self.worker_id,
            task_type=task_type,
            error=ErrorInfo.of(error) if error is not None else None,
        )
        value = to_bytes(record)
        sent = await self._send(self.status_topic, task_id.encode(), value)
        if self._on_status is not None:
            self._on_status(task_id, status, record.timestamp, value)
        return sent

    async def result(self, record: ResultRecord) -> Awaitable[Any]:
        return await self._send(self.results_topic, record.task_id.encode(), to_bytes(record))

    async def dead_letter(
        self,
        raw: bytes | str | None,
        error: BaseException,
        *,
        task_id: str | None,
        source: tuple[str, int, int] | None = None,
        attempts: int = 1,
    ) -> Awaitable[Any]:
        payload, encoding, size, truncated = DeadLetterRecord.encode_payload(raw, self.DLQ_PAYLOAD_LIMIT)
        record = DeadLetterRecord(
            task_id=task_id,
            worker_id=self.worker_id,
            error=ErrorInfo.of(error),
            attempts=attempts,
            payload=payload,
            payload_encoding=encoding,
            payload_bytes=size,
            payload_truncated=truncated,
            source=SourceInfo(topic=source[0], partition=source[1], offset=source[2]) if source else None,
        )
        key = task_id.encode() if task_id else None
        return await self._send(self.dlq_topic, key, to_bytes(record))

    @staticmethod
    async def delivered(futures: list[Awaitable[Any]]) -> None:
        """Wait until every queued record is delivered; raises the first delivery error."""
        if futures:
            await asyncio.gather(*futures)
