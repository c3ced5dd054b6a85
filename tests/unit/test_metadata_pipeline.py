"""A declared metadata field of the wrong type fails its task alone, through the pipeline (fakes at the ports)."""

from __future__ import annotations

from core.ids import vector_id
from tests.unit.test_pipeline import Harness


async def test_a_wrong_declared_type_fails_only_its_task() -> None:
    h = Harness(filterable={"*": {"year": "int"}, "docs": {"tags": "string_list"}})
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "ok", "metadata": {"year": 2020}})
    await h.send({"task_type": "text_vectorization", "data": "b", "task_id": "bad", "metadata": {"year": "2020"}})
    bad_list = {"tags": ["a", 3]}
    await h.send(
        {"task_type": "text_vectorization", "data": "c", "task_id": "bad2", "collection": "docs", "metadata": bad_list}
    )
    await h.drain()
    assert h.acked == [0, 1, 2]
    assert h.statuses("ok")[-1] == "completed" and h.statuses("bad")[-1] == "failed"
    assert h.statuses("bad2")[-1] == "failed"
    [dead, dead2] = h.kafka.on("dlq")
    message = dead["error"]["message"]
    assert dead["error"]["kind"] == "invalid_task"
    assert "metadata field 'year' must be int in collection 'vectorize'" in message and "a string ('2020')" in message
    assert "metadata field 'tags' must be string_list" in dead2["error"]["message"]
    assert h.store.retrieve("vectorize", [vector_id("ok", 0)]) and not h.store.retrieve(
        "vectorize", [vector_id("bad", 0)]
    )
