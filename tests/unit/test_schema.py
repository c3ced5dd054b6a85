from __future__ import annotations

import json

import pytest

from core.errors import InvalidTaskError
from tasks.schema import BatchTask, DocumentTask, ImageTask, Limits, TextTask, parse_task, task_texts

DOC_EXAMPLES = [
    (
        '{"task_type": "text_vectorization", "data": "这是需要向量化的文本", '
        '"model_name": "sentence-transformers/all-MiniLM-L6-v2"}',
        TextTask,
    ),
    ('{"task_type": "batch_vectorization", "data": ["文本1", "文本2", "文本3"], "batch_size": 32}', BatchTask),
    ('{"task_type": "image_vectorization", "data": "/path/to/image.jpg", "model_name": "ViT-B/32"}', ImageTask),
    ('{"task_type": "document_vectorization", "data": {"title": "文档标题", "content": "文档内容..."}}', DocumentTask),
]


@pytest.mark.parametrize(("payload", "kind"), DOC_EXAMPLES)
def test_documentation_examples_are_accepted(payload: str, kind: type) -> None:
    task = parse_task(payload.encode())
    assert isinstance(task, kind)
    assert task.task_id.startswith("task-")
    assert task.metadata == {}


def test_optional_fields_round_trip() -> None:
    task = parse_task(
        json.dumps(
            {
                "task_type": "batch_vectorization",
                "data": ["a", "b"],
                "task_id": "t-1",
                "metadata": {"lang": "zh", "nested": {"k": [1, 2]}},
                "collection": "Docs_2",
                "normalize": True,
            }
        )
    )
    assert (task.task_id, task.collection, task.normalize) == ("t-1", "Docs_2", True)
    assert task.metadata["nested"] == {"k": [1, 2]}


def test_generated_task_ids_are_unique() -> None:
    raw = DOC_EXAMPLES[0][0]
    assert parse_task(raw).task_id != parse_task(raw).task_id


def test_texts_per_task_type() -> None:
    assert task_texts(parse_task(DOC_EXAMPLES[1][0])) == ["文本1", "文本2", "文本3"]
    assert task_texts(parse_task(DOC_EXAMPLES[3][0])) == ["文档标题\n\n文档内容..."]
    untitled = parse_task('{"task_type": "document_vectorization", "data": {"content": "body"}}')
    assert task_texts(untitled) == ["body"]


def test_double_encoded_json_is_unwrapped() -> None:
    inner = DOC_EXAMPLES[0][0]
    assert isinstance(parse_task(json.dumps(inner)), TextTask)


MALFORMED = [
    (b"not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b'{"task_type": "text_vectorization", "data": "a\x00b"}', "NUL"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b'"just a string"', "must be a JSON object"),
    (b'{"data": "x"}', "'task_type' is missing"),
    (b'{"task_type": "audio_vectorization", "data": "x"}', "unknown task_type 'audio_vectorization'"),
    (b'{"task_type": "text_vectorization"}', "field 'data': Field required"),
    (b'{"task_type": "text_vectorization", "data": 5}', "field 'data': Input should be a valid string (got int 5)"),
    (b'{"task_type": "text_vectorization", "data": ""}', "field 'data': String should have at least 1 character"),
    (b'{"task_type": "batch_vectorization", "data": []}', "field 'data': List should have at least 1 item"),
    (b'{"task_type": "batch_vectorization", "data": ["ok", 3]}', "field 'data.1': Input should be a valid string"),
    (b'{"task_type": "batch_vectorization", "data": ["a"], "batch_size": 0}', "field 'batch_size'"),
    (b'{"task_type": "document_vectorization", "data": {"title": "t"}}', "field 'data.content': Field required"),
    (b'{"task_type": "document_vectorization", "data": "plain"}', "field 'data'"),
    (b'{"task_type": "text_vectorization", "data": "x", "modelname": "m"}', "field 'modelname': unknown field"),
    (b'{"task_type": "text_vectorization", "data": "x", "metadata": [1]}', "field 'metadata'"),
    (b'{"task_type": "text_vectorization", "data": "x", "collection": "../etc"}', "field 'collection'"),
    (b'{"task_type": "text_vectorization", "data": "x", "normalize": "maybe"}', "field 'normalize'"),
    (b'{"task_type": "text_vectorization", "data": "x", "task_id": ""}', "field 'task_id'"),
    (b'{"task_type": "text_vectorization", "data": "x", "metadata": {"a": "\\u0000"}}', "NUL"),
    (
        b'{"task_type": "text_vectorization", "data": "x", "metadata": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}",
        "nested deeper",
    ),
]


@pytest.mark.parametrize(("payload", "message"), MALFORMED)
def test_malformed_payloads_are_rejected_precisely(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidTaskError) as info:
        parse_task(payload)
    assert message in str(info.value)


def test_oversized_payload_is_rejected_before_parsing() -> None:
    payload = json.dumps({"task_type": "text_vectorization", "data": "x" * 5000}).encode()
    with pytest.raises(InvalidTaskError, match=r"over the limit of 4096 bytes \(VECTORIZE_WORKER_MAX_TASK_BYTES\)"):
        parse_task(payload, limits=Limits(max_task_bytes=4096))


def test_invalid_task_keeps_its_task_id() -> None:
    with pytest.raises(InvalidTaskError) as info:
        parse_task(b'{"task_type": "text_vectorization", "task_id": "abc", "data": 1}')
    assert info.value.task_id == "abc"


def test_published_json_schema_is_in_sync() -> None:
    from scripts.gen_schemas import ROOT, render

    for rel, text in render().items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, f"{rel} is stale: run `make schemas`"


def test_status_records_fold_into_a_task_status_entry_with_the_last_ten_statuses() -> None:
    from tasks.records import StatusRecord, fold_status, to_bytes

    entry = None
    for i, status in enumerate(["received", "processing", "completed"]):
        record = json.loads(to_bytes(StatusRecord(task_id="t", status=status, worker_id="w", timestamp=100.0 + i)))
        entry = fold_status(entry, record)
    assert entry["status"] == "completed" and entry["worker_id"] == "w" and entry["task_id"] == "t"
    assert entry["history"] == [
        {"status": "received", "timestamp": 100.0},
        {"status": "processing", "timestamp": 101.0},
        {"status": "completed", "timestamp": 102.0},
    ]
    for i in range(20):  # a task redelivered again and again keeps only its last ten
        entry = fold_status(entry, {"task_id": "t", "status": "received", "timestamp": 200.0 + i})
    assert len(entry["history"]) == 10 and entry["history"][-1]["timestamp"] == 219.0
