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

Twins (with the embedding cache on, engine/embedding_cache.py): a text
added with a cache key equal to one already waiting or in a model call is
not queued again; it follows that twin and gets its vector when the twin's
call completes (or fails with it). A corpus with repeated chunks sent at
once thus embeds each distinct chunk once, though none is in the cache yet.
If the twin's task leaves the queue first (drained, failed), its first
follower takes its place in the queue. Texts whose vectors came from the
cache are not queued at all (``known`` in :meth:`ModelQueue.add`).

The queue is plain data (no asyncio, no threads): :class:`engine.lane.TextLane`
takes calls, runs them on the device thread and reports back with
:meth:`ModelQueue.complete` or :meth:`ModelQueue.fail`, which return the
tasks (outcomes) whose every text is done.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
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
    remaining: int  # texts without a vector yet (queued or following a twin)
    waiting: set[int] = field(default_factory=set)  # sequence numbers still in the queue
    vectors: np.ndarray | None = None
    started: float | None = None  # when its first model call started (device thread clock)
    queued: int = 0  # texts it put in the queue (its others came from the cache or follow a twin)
    following: int = 0  # texts waiting for a twin's vector

    @property
    def failed(self) -> bool:
        return self.outcome.error is not None


@dataclass(eq=False)
class ModelCall:
    """One model call: ``texts`` of one :class:`CallKey`, longest first."""

    key: CallKey
    texts: list[str]
    parts: list[tuple[_Job, int]]  # (task, index of the text in the task) per text
    keys: list[str | None] = field(default_factory=list)  # the texts' cache keys (empty without a cache)
    identity: str | None = None  # the identity of the model that ran it (set on the device thread)


@dataclass(eq=False)
class _Twin:
    """A text with a cache key in the queue or in a call, and the texts of other tasks waiting for its vector."""

    seq: int | None  # in the queue; None once in a model call
    followers: list[tuple[_Job, int]] = field(default_factory=list)


class _Waiting:
    """The texts of one key: sorted by (tokens, arrival) and in arrival order."""

    def __init__(self) -> None:
        self.sorted: list[tuple[int, int]] = []  # (tokens, seq)
        self.arrival: deque[int] = deque()  # seqs, oldest first; removed ones are skipped lazily
        self.where: dict[int, tuple[_Job, int, int, str | None]] = {}  # seq -> (job, index, tokens, cache key)

    def oldest(self) -> int | None:
        while self.arrival and self.arrival[0] not in self.where:
            self.arrival.popleft()
        return self.arrival[0] if self.arrival else None

    def remove(self, seq: int) -> tuple[int, str | None]:
        """Take ``seq`` out; returns its (tokens, cache key)."""
        _, _, tokens, text_key = self.where.pop(seq)
        del self.sorted[bisect.bisect_left(self.sorted, (tokens, seq))]
        return tokens, text_key

    def put(self, job: _Job, index: int, tokens: int, text_key: str | None, seq: int) -> None:
        job.waiting.add(seq)
        self.where[seq] = (job, index, int(tokens), text_key)
        self.arrival.append(seq)
        bisect.insort(self.sorted, (int(tokens), seq))


class ModelQueue:
    """Waiting texts by :class:`CallKey`; see the module doc.

    ``max_tokens`` bounds a call's padded size (texts × longest); a single
    text longer than it still gets a call of its own.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._keys: dict[CallKey, _Waiting] = {}
        self._seq = itertools.count()
        self._twins: dict[str, _Twin] = {}  # cache key -> the text queued or in a call for it

    @property
    def texts(self) -> int:
        """Texts waiting (not yet in a model call)."""
        return sum(len(waiting.where) for waiting in self._keys.values())

    def add(
        self,
        outcome: Any,
        key: CallKey,
        lengths: Sequence[int],
        *,
        text_keys: Sequence[str | None] | None = None,
        known: Mapping[int, np.ndarray] | None = None,
    ) -> int:
        """Queue ``outcome.texts`` for ``key``'s model, but those in ``known`` (index -> vector from the cache).

        ``lengths``: the token counts of the texts not known, in order.
        ``text_keys``: a cache key per text (None: no twin for it); a text whose
        key is already queued or in a call follows that twin instead of being
        queued. Returns how many texts follow a twin.
        """
        known = known or {}
        todo = [index for index in range(len(outcome.texts)) if index not in known]
        if len(lengths) != len(todo) or not todo:
            raise ValueError(f"{len(lengths)} token counts for {len(todo)} texts to embed")
        job = _Job(outcome=outcome, key=key, remaining=len(todo))
        if known:
            first = next(iter(known.values()))
            job.vectors = np.empty((len(outcome.texts), len(first)), dtype=np.float32)
            for index, vector in known.items():
                job.vectors[index] = vector
        waiting = self._keys.setdefault(key, _Waiting())
        followed = 0
        for index, tokens in zip(todo, lengths, strict=True):
            text_key = text_keys[index] if text_keys is not None else None
            twin = self._twins.get(text_key) if text_key is not None else None
            if twin is not None:
                twin.followers.append((job, index))
                job.following += 1
                followed += 1
                continue
            seq = next(self._seq)
            waiting.put(job, index, tokens, text_key, seq)
            job.queued += 1
            if text_key is not None:
                self._twins[text_key] = _Twin(seq=seq)
        if not waiting.where:  # every text follows a twin
            del self._keys[key]
        return followed

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
        keys: list[str | None] = []
        for _, seq in sorted(picked, key=lambda entry: (-entry[0], entry[1])):  # longest first, then arrival
            job, index, _, text_key = waiting.where.pop(seq)
            job.waiting.discard(seq)
            parts.append((job, index))
            keys.append(text_key)
            if text_key is not None and text_key in self._twins:
                self._twins[text_key].seq = None  # in a call now
        del waiting.sorted[start : start + count]
        if not waiting.where:
            del self._keys[key]
        texts = [job.outcome.texts[i] for job, i in parts]
        return ModelCall(key=key, texts=texts, parts=parts, keys=keys if any(keys) else [])

    def _window(self, waiting: _Waiting, oldest: int, batch_size: int) -> tuple[int, int]:
        """(start, count) in ``waiting.sorted``: the run around ``oldest`` with the closest lengths.

        As many texts as fit ``batch_size`` and ``max_tokens``; of the runs of
        that size that contain the oldest text, the one whose shortest and
        longest texts differ least.
        """
        lengths = waiting.sorted
        tokens = waiting.where[oldest][2]
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
            for job, *_ in waiting.where.values():
                # else some of its texts are in a model call, or wait for a twin's: it finishes
                if not job.failed and len(job.waiting) == job.queued and not job.following:
                    unstarted.setdefault(id(job), job)
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
        for row, part in enumerate(call.parts):
            targets = [part]
            twin = self._twins.pop(call.keys[row], None) if call.keys and call.keys[row] is not None else None
            if twin is not None:
                targets.extend(twin.followers)
            for job, index in targets:
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
        for text_key in call.keys:  # the texts waiting for these texts' vectors fail with them
            twin = self._twins.pop(text_key, None) if text_key is not None else None
            for job, _ in twin.followers if twin is not None else ():
                if not job.failed:
                    jobs.setdefault(id(job), job)
        if whole_key and call.key in self._keys:
            for job, *_ in self._keys[call.key].where.values():
                jobs.setdefault(id(job), job)
        failed = []
        for job in jobs.values():
            self._discard(job)
            job.outcome.error = error
            failed.append(job.outcome)
        return failed

    def _discard(self, job: _Job) -> None:
        """Take ``job``'s texts that still wait out of the queue (a twin's first follower takes its place)."""
        waiting = self._keys.get(job.key)
        if waiting is not None:
            for seq in sorted(job.waiting):
                tokens, text_key = waiting.remove(seq)
                if text_key is not None:
                    self._promote(text_key, tokens, leaving=job)
            if not waiting.where and self._keys.get(job.key) is waiting:
                del self._keys[job.key]
        job.waiting.clear()

    def _promote(self, text_key: str, tokens: int, *, leaving: _Job) -> None:
        """The queued text of ``text_key`` leaves with its task: queue its first follower of another live task."""
        twin = self._twins.pop(text_key, None)
        if twin is None:
            return
        followers = [(job, index) for job, index in twin.followers if job is not leaving and not job.failed]
        if not followers:
            return
        (job, index), rest = followers[0], followers[1:]
        seq = next(self._seq)
        self._keys.setdefault(job.key, _Waiting()).put(job, index, tokens, text_key, seq)
        job.following -= 1
        job.queued += 1
        self._twins[text_key] = _Twin(seq=seq, followers=rest)
