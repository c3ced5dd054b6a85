"""The model queue: texts of many tasks waiting for the model, handed out as model calls of similar length.

A worker fed one-text tasks, batches of 256 and chunked documents at once
wastes most of its model time on padding if it cuts model calls out of
whatever arrived together: a call costs about ``texts × longest text``. The
queue keeps every waiting text (up to ``processing.max_inflight_texts``)
sorted by its token count and cuts each model call from that sorted order,
so a call holds texts of nearly the same length however they arrived.

Fairness: each call contains the oldest waiting text of its model, plus the
run of sorted neighbours around it whose lengths are closest together, so a
text never waits behind more than the calls already queued ahead of it; of
several models (or normalize/batch-size settings) the one with the oldest
text goes first.

The queue is plain data (no asyncio, no threads): :class:`engine.lane.TextLane`
takes calls, runs them on the device thread and reports back with
:meth:`ModelQueue.complete` or :meth:`ModelQueue.fail`, which return the
tasks (outcomes) whose every text is done.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from models.base import EmbedderInfo


class CallKey(NamedTuple):
    """Texts share a model call only when they share all three."""

    model: str
    normalize: bool | None
    batch_size: int


@dataclass(eq=False)
class _Job:
    """One task's texts in the queue."""

    outcome: Any  # engine.pipeline.Outcome: texts, vectors, info, error, embed_ms
    key: CallKey
    remaining: int
    waiting: set[int] = field(default_factory=set)  # sequence numbers still in the queue
    vectors: np.ndarray | None = None
    started: float | None = None  # when its first model call started (device thread clock)

    @property
    def failed(self) -> bool:
        return self.outcome.error is not None


@dataclass(eq=False)
class ModelCall:
    """One model call: ``texts`` of one :class:`CallKey`, longest first."""

    key: CallKey
    texts: list[str]
    parts: list[tuple[_Job, int]]  # (task, index of the text in the task) per text


class _Waiting:
    """The texts of one key: sorted by (tokens, arrival) and in arrival order."""

    def __init__(self) -> None:
        self.sorted: list[tuple[int, int]] = []  # (tokens, seq)
        self.arrival: deque[int] = deque()  # seqs, oldest first; removed ones are skipped lazily
        self.where: dict[int, tuple[_Job, int, int]] = {}  # seq -> (job, index, tokens)

    def oldest(self) -> int | None:
        while self.arrival and self.arrival[0] not in self.where:
            self.arrival.popleft()
        return self.arrival[0] if self.arrival else None

    def remove(self, seq: int) -> None:
        _, _, tokens = self.where.pop(seq)
        del self.sorted[bisect.bisect_left(self.sorted, (tokens, seq))]


class ModelQueue:
    """Waiting texts by :class:`CallKey`; see the module doc.

    ``max_tokens`` bounds a call's padded size (texts × longest); a single
    text longer than it still gets a call of its own.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._keys: dict[CallKey, _Waiting] = {}
        self._seq = itertools.count()

    @property
    def texts(self) -> int:
        """Texts waiting (not yet in a model call)."""
        return sum(len(waiting.where) for waiting in self._keys.values())

    def add(self, outcome: Any, key: CallKey, lengths: Sequence[int]) -> None:
        """Queue ``outcome.texts`` (``lengths``: their token counts) for ``key``'s model."""
        if len(lengths) != len(outcome.texts) or not lengths:
            raise ValueError(f"{len(lengths)} token counts for {len(outcome.texts)} texts")
        job = _Job(outcome=outcome, key=key, remaining=len(lengths))
        waiting = self._keys.setdefault(key, _Waiting())
        for index, tokens in enumerate(lengths):
            seq = next(self._seq)
            job.waiting.add(seq)
            waiting.where[seq] = (job, index, int(tokens))
            waiting.arrival.append(seq)
            bisect.insort(waiting.sorted, (int(tokens), seq))

    def take(self, *, full_only: bool = False) -> ModelCall | None:
        """The next model call (None when nothing, or with ``full_only`` no whole call, waits)."""
        best: tuple[int, CallKey] | None = None
        for key, waiting in self._keys.items():
            oldest = waiting.oldest()
            if oldest is None or (full_only and len(waiting.sorted) < key.batch_size):
                continue
            if best is None or oldest < best[0]:
                best = (oldest, key)
        if best is None:
            return None
        oldest, key = best
        waiting = self._keys[key]
        start, count = self._window(waiting, oldest, key.batch_size)
        picked = waiting.sorted[start : start + count]
        parts: list[tuple[_Job, int]] = []
        for _, seq in sorted(picked, key=lambda entry: (-entry[0], entry[1])):  # longest first, then arrival
            job, index, _ = waiting.where.pop(seq)
            job.waiting.discard(seq)
            parts.append((job, index))
        del waiting.sorted[start : start + count]
        if not waiting.where:
            del self._keys[key]
        return ModelCall(key=key, texts=[job.outcome.texts[i] for job, i in parts], parts=parts)

    def _window(self, waiting: _Waiting, oldest: int, batch_size: int) -> tuple[int, int]:
        """(start, count) in ``waiting.sorted``: the run around ``oldest`` with the closest lengths.

        As many texts as fit ``batch_size`` and ``max_tokens``; of the runs of
        that size that contain the oldest text, the one whose shortest and
        longest texts differ least.
        """
        lengths = waiting.sorted
        _, _, tokens = waiting.where[oldest]
        position = bisect.bisect_left(lengths, (tokens, oldest))
        size = len(lengths)
        # The most texts that fit: a run of `count` around the oldest is cheapest at its leftmost start,
        # and that cost only grows with `count`, so the first count that fits there is the largest.
        count = min(batch_size, size)
        while count > 1 and count * lengths[max(0, position - count + 1) + count - 1][0] > self.max_tokens:
            count -= 1
        best_start, best_spread = position, None
        for start in range(max(0, position - count + 1), min(position, size - count) + 1):
            longest = lengths[start + count - 1][0]
            if count > 1 and count * longest > self.max_tokens:
                break  # later starts are longer still
            spread = longest - lengths[start][0]
            if best_spread is None or spread < best_spread:
                best_start, best_spread = start, spread
        return best_start, count

    def drop_unstarted(self, keep_texts: int = 0) -> list[Any]:
        """Take out the tasks none of whose texts has gone to the model yet; returns their outcomes.

        The oldest of them stay while their texts add up to at most ``keep_texts``.
        """
        unstarted: dict[int, _Job] = {}
        for waiting in self._keys.values():
            for job, _, _ in waiting.where.values():
                if not job.failed and len(job.waiting) == len(job.outcome.texts):
                    unstarted.setdefault(id(job), job)  # else some of its texts are in a model call: it finishes
        dropped = []
        kept = 0
        for job in sorted(unstarted.values(), key=lambda j: min(j.waiting)):  # oldest first
            if kept + len(job.waiting) <= keep_texts:
                kept += len(job.waiting)
                continue
            self._discard(job)
            dropped.append(job.outcome)
        return dropped

    def complete(
        self, call: ModelCall, vectors: np.ndarray, info: EmbedderInfo, started: float, ended: float
    ) -> list[Any]:
        """Put a call's vectors in place; returns the outcomes that now have all their vectors."""
        if len(vectors) != len(call.parts):
            raise ValueError(f"Model {call.key.model} returned {len(vectors)} vectors for {len(call.parts)} texts")
        done = []
        for row, (job, index) in enumerate(call.parts):
            if job.failed:  # another of its calls failed: the task is already reported
                continue
            if job.vectors is None:
                job.vectors = np.empty((len(job.outcome.texts), vectors.shape[1]), dtype=np.float32)
            job.vectors[index] = vectors[row]
            job.started = started if job.started is None else min(job.started, started)
            job.remaining -= 1
            if job.remaining == 0:
                out = job.outcome
                out.vectors, out.info = job.vectors, info
                out.embed_ms = (ended - job.started) * 1000
                done.append(out)
        return done

    def fail(self, call: ModelCall, error: BaseException, *, whole_key: bool = False) -> list[Any]:
        """Fail the tasks of ``call`` (with ``whole_key`` every task waiting for its key too).

        Their other texts leave the queue. Returns the newly failed outcomes.
        """
        jobs = {id(job): job for job, _ in call.parts if not job.failed}
        if whole_key and call.key in self._keys:
            for job, _, _ in self._keys[call.key].where.values():
                jobs.setdefault(id(job), job)
        failed = []
        for job in jobs.values():
            self._discard(job)
            job.outcome.error = error
            failed.append(job.outcome)
        return failed

    def _discard(self, job: _Job) -> None:
        """Take ``job``'s texts that still wait out of the queue."""
        waiting = self._keys.get(job.key)
        if waiting is not None:
            for seq in job.waiting:
                waiting.remove(seq)
            if not waiting.where:
                del self._keys[job.key]
        job.waiting.clear()
