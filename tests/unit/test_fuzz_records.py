"""Property-based fuzzing of the record path (hypothesis): whatever the bytes of a record, it ends as a
valid task or as that task's own error, never as another exception.

Examples are derandomized (the same cases on every run, so CI never flakes on a new seed) and counted:
``FUZZ_EXAMPLES`` scales them (the figures in docs/testing.md are at the default).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.errors import MAX_ERROR_CHARS, InvalidTaskError
from tasks.schema import TASK_TYPES, ImageTask, parse_task, task_texts
from tests.unit.test_pipeline import Harness

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
FAST = settings(
    max_examples=int(5000 * SCALE),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SLOW = settings(FAST, max_examples=int(1000 * SCALE))

# every code point, lone surrogates included (hypothesis leaves category Cs out by default)
ANY_CHAR = st.characters(codec=None, exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=40)
# an integer of 4,290-6,000 digits (Python reads at most 4,300): a marker that encode() writes as digits
HUGE_INT = st.integers(min_value=4290, max_value=6000).map(lambda n: f"__huge_{n}__")
_HUGE = re.compile(rb'"__huge_(\d+)__"')
NUMBER = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), HUGE_INT, st.integers(-(2**80), 2**80)
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(TEXT, inner, max_size=6)),
    max_leaves=40,
)
DEEP = st.integers(1, 200).map(lambda n: "[" * n + "1" + "]" * n)

VALID = [
    {"task_type": "text_vectorization", "data": "hello", "task_id": "t", "metadata": {"k": "v"}},
    {"task_type": "batch_vectorization", "data": ["a", "b"], "batch_size": 2},
    {"task_type": "image_vectorization", "data": "/nonexistent/x.png"},
    {"task_type": "document_vectorization", "data": {"title": "T", "content": "body"}, "collection": "c1"},
]
FIELDS = ["task_type", "data", "task_id", "model_name", "metadata", "collection", "normalize", "batch_size", "x"]


@st.composite
def mutated_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """A documented example with fields replaced, removed or added, values from anywhere."""
    task = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["set", "drop", "type"]))
        if action == "drop":
            task.pop(field, None)
        elif action == "type":
            task[field] = draw(st.sampled_from(TASK_TYPES))
        else:
            task[field] = draw(JSON)
    return task


def encode(value: Any) -> bytes:
    # ensure_ascii writes lone surrogates as \\udXXX escapes: what a producer in another language sends
    raw = json.dumps(value, ensure_ascii=True, allow_nan=True).encode("ascii")
    return _HUGE.sub(lambda m: b"7" * int(m.group(1)), raw)


RECORDS = st.one_of(
    st.binary(max_size=300),
    JSON.map(encode),
    mutated_tasks().map(encode),
    DEEP.map(lambda s: s.encode()),
    st.builds(
        lambda task, cut: encode(task)[:cut],  # a record cut short
        mutated_tasks(),
        st.integers(0, 200),
    ),
    st.builds(lambda t, n: encode({**t, "data": n}), st.just(VALID[0]), HUGE_INT),
)


def check_outcome(raw: bytes) -> None:
    try:
        task = parse_task(raw)
    except InvalidTaskError as exc:
        message = str(exc)
        assert message and len(message) <= MAX_ERROR_CHARS
        message.encode("utf-8")  # it travels in records
        return
    json.dumps(task.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")  # storable as it is
    if not isinstance(task, ImageTask):
        assert all(task_texts(task))


def declares_reembed(raw: bytes) -> bool:
    """Whether the record is a JSON object saying it is a migration's ``reembed`` (tasks/reembed.py)."""
    try:
        value = json.loads(raw)
    except Exception:  # noqa: BLE001 - not JSON, too deep: not one
        return False
    return isinstance(value, dict) and value.get("task_type") == "reembed"


@FAST
@given(RECORDS)
def test_parse_ends_in_a_task_or_the_tasks_own_error(raw: bytes) -> None:
    check_outcome(raw)


@SLOW
@given(RECORDS)
@example(raw=b'{"task_type":"reembed","":"","":"","":{"":""}}')  # found by hypothesis in CI
def test_the_pipeline_finishes_every_record_and_keeps_going(raw: bytes) -> None:
    async def scenario() -> None:
        h = Harness()
        await h.send(raw)
        # a collection of its own: the fuzzed record may have bound the default collection to another model
        after = {"task_type": "text_vectorization", "data": "after", "task_id": "after", "collection": "after-fuzz-0"}
        await h.send(encode(after))
        await h.drain()
        assert h.acked == [0, 1]
        finals = [r for r in h.kafka.on("status") if r["status"] in ("completed", "failed")]
        # a record of a migration (task_type reembed) carries a user's task id: it publishes no status of its own
        assert len(finals) == (1 if declares_reembed(raw) else 2), finals
        assert h.statuses("after") == ["received", "processing", "completed"]
        for result in h.kafka.on("results"):
            if result["status"] == "failed":
                assert len(result["error"]["message"]) <= MAX_ERROR_CHARS

    asyncio.run(scenario())
