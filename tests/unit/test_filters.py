"""The filter language: parsing against the declared fields, and its translation for each store.

Each store runs the same cases for real in the contract suite (tests/contract.py); these pin the translations
themselves, and the adapters' side of the metadata contract that needs no server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from qdrant_client import models

from core.metadata_contract import MetadataContract
from sinks.base import PAYLOAD_KEY, WORKER_FIELDS, worker_value, worker_values
from sinks.chroma import chroma_where
from sinks.filters import Condition, InvalidFilterError, parse_filter
from sinks.milvus import _worker_value, milvus_expr
from sinks.qdrant import QdrantStore, qdrant_filter
from sinks.weaviate_fields import weaviate_filter
from tests.contract import DECLARED

FIELDS: dict[str, Any] = dict(DECLARED)  # the contract suite's declared fields
WHEN = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def _parse(filter: Any) -> list[Condition]:
    return parse_filter(filter, FIELDS, collection="docs")


def test_parse_gives_one_checked_condition_per_operator() -> None:
    conditions = _parse(
        {"lang": "en", "year": {"gte": 2020, "lt": 2024}, "score": {"in": [1, 2.5]}, "when": "2024-05-01T12:00+02:00"}
    )
    assert [(c.field, c.op, c.value) for c in conditions] == [
        ("meta_lang", "eq", "en"),
        ("meta_year", "gte", 2020),
        ("meta_year", "lt", 2024),
        ("meta_score", "in", (1.0, 2.5)),
        ("meta_when", "eq", WHEN),
    ]
    assert _parse(None) == [] and _parse({}) == []


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ("lang=en", "must be a JSON object"),
        ({"metadata.lang": "en"}, r"only declared metadata fields are filterable \(declared: lang \(string\), ok"),
        ({"lang": {}}, "is an empty object"),
        ({"lang": {"ne": "en"}}, "unknown operator 'ne'; use one of eq, gt, gte, lt, lte, in"),
        ({"tags": {"gte": "a"}}, "gte needs an int, float or datetime field"),
        ({"ok": {"lt": True}}, "lt needs an int, float or datetime field"),
        ({"tags": ["a"]}, r"must be string but is a list of 1 items"),
        ({"lang": {"in": "en"}}, "'in' takes a list of 1 to 1024 values"),
        ({"lang": {"in": ["x"] * 1025}}, "'in' takes a list"),
        ({"year": {"in": [1, "2"]}}, r"must be int but is a string \('2'\)"),
        ({"when": {"gt": 5}}, r"must be datetime \(an ISO 8601 string"),
    ],
)
def test_parse_refuses_with_the_reason(filter: Any, message: str) -> None:
    with pytest.raises(InvalidFilterError, match=message) as info:
        _parse(filter)
    assert "'docs'" in str(info.value)
    assert info.value.kind == "invalid_filter"


def test_nothing_is_filterable_without_a_declaration() -> None:
    with pytest.raises(InvalidFilterError, match=r"\(declared: none\)"):
        parse_filter({"lang": "en"}, MetadataContract().fields("docs"), collection="docs")


CASES = {"lang": "en", "tags": {"in": ["a", "b"]}, "year": {"gte": 2020}, "when": {"lt": "2024-05-01T10:00:00Z"}}


def test_chroma_where() -> None:
    assert chroma_where(_parse({"lang": "en"})) == {"meta_lang": {"$eq": "en"}}
    assert chroma_where(_parse(CASES)) == {
        "$and": [
            {"meta_lang": {"$eq": "en"}},
            {"$or": [{"meta_tags": {"$contains": "a"}}, {"meta_tags": {"$contains": "b"}}]},
            {"meta_year": {"$gte": 2020}},
            {"meta_when": {"$lt": 1714557600000000}},  # microseconds since 1970
        ]
    }
    assert chroma_where(_parse({"tags": "a", "score": {"in": [1]}})) == {
        "$and": [{"meta_tags": {"$contains": "a"}}, {"meta_score": {"$in": [1.0]}}]
    }
    assert chroma_where([]) is None


def test_milvus_expr() -> None:
    assert milvus_expr(_parse(CASES)) == (
        'meta_lang == "en" and json_contains_any(meta_tags, ["a", "b"]) and meta_year >= 2020 '
        "and meta_when < 1714557600000000"
    )
    assert milvus_expr(_parse({"tags": "a", "ok": True, "score": {"in": [1, 2.5]}})) == (
        'json_contains(meta_tags, "a") and meta_ok == true and meta_score in [1.0, 2.5]'
    )
    assert milvus_expr(_parse({"lang": 'say "hi" \\ ü'})) == 'meta_lang == "say \\"hi\\" \\\\ ü"'
    assert milvus_expr([]) == ""


def test_qdrant_filter() -> None:
    f = qdrant_filter(_parse(CASES))
    assert f == models.Filter(
        must=[
            models.FieldCondition(key="meta_lang", match=models.MatchValue(value="en")),
            models.FieldCondition(key="meta_tags", match=models.MatchAny(any=["a", "b"])),
            models.FieldCondition(key="meta_year", range=models.Range(gte=2020)),
            models.FieldCondition(key="meta_when", range=models.DatetimeRange(lt=WHEN)),
        ]
    )
    # floats and datetimes have no match condition: equality is a closed range; `in` on them, a should
    f = qdrant_filter(_parse({"score": {"in": [1.5]}, "ok": {"in": [True]}}))
    assert f == models.Filter(
        must=[
            models.Filter(should=[models.FieldCondition(key="meta_score", range=models.Range(gte=1.5, lte=1.5))]),
            models.Filter(should=[models.FieldCondition(key="meta_ok", match=models.MatchValue(value=True))]),
        ]
    )
    assert qdrant_filter([]) is None


def _shape(f: Any) -> Any:
    if hasattr(f, "filters"):
        return (f.operator.name, [_shape(x) for x in f.filters])
    return (f.operator.name, f.target, f.value)


def test_weaviate_filter() -> None:
    assert _shape(weaviate_filter(_parse({"lang": "en"}))) == ("EQUAL", "meta_lang", "en")
    assert _shape(weaviate_filter(_parse({**CASES, "score": {"in": [1, 2]}, "tags": "a"}))) == (
        "AND",
        [
            ("EQUAL", "meta_lang", "en"),
            ("CONTAINS_ANY", "meta_tags", ["a"]),
            ("GREATER_THAN_EQUAL", "meta_year", 2020),
            ("LESS_THAN", "meta_when", WHEN),
            ("OR", [("EQUAL", "meta_score", 1.0), ("EQUAL", "meta_score", 2.0)]),
        ],
    )
    assert weaviate_filter([]) is None


def test_worker_fields_keep_their_types_or_stay_in_the_payload_only() -> None:
    payload = {"task_id": "t", "item_index": 2, "created_at": 5, "text": "x", "truncated": True, "width": "wide"}
    payload |= {"metadata": {"task_id": "nested, not a worker field"}, "height": True, "title": None}
    assert worker_values(payload) == {
        "task_id": "t",
        "item_index": 2,
        "created_at": 5.0,
        "text": "x",
        "truncated": True,
    }
    assert worker_value("float", float("nan")) is None and worker_value("int", 2**70) is None
    assert PAYLOAD_KEY not in WORKER_FIELDS and not any(name.startswith("meta_") for name in WORKER_FIELDS)
    # Milvus Lite has no empty fields: a missing or mistyped worker field holds its type's empty value
    assert [_worker_value(n, payload) for n in ("task_id", "width", "source", "chunk_index", "truncated")] == [
        "t",
        -1,
        "",
        -1,
        True,
    ]


def test_qdrant_indexes_each_declared_field_on_a_server() -> None:
    """On a Qdrant server each declared field gets a payload index of its type (local mode has none to make)."""
    calls: dict[str, Any] = {}

    class FakeQdrant:  # the client, at the adapter's port
        def collection_exists(self, name: str) -> bool:
            return False

        def create_collection(self, **kwargs: Any) -> None:
            pass

        def create_payload_index(self, *, field_name: str, field_schema: Any, **kwargs: Any) -> None:
            calls[field_name] = field_schema

    store = QdrantStore(url="http://127.0.0.1:9", contract=MetadataContract({"*": FIELDS}))
    store._client = FakeQdrant()  # type: ignore[assignment]
    store.ensure_collection("c", 4)
    assert calls == {
        "meta_lang": models.PayloadSchemaType.KEYWORD,
        "meta_year": models.PayloadSchemaType.INTEGER,
        "meta_score": models.PayloadSchemaType.FLOAT,
        "meta_ok": models.PayloadSchemaType.BOOL,
        "meta_when": models.PayloadSchemaType.DATETIME,
        "meta_tags": models.PayloadSchemaType.KEYWORD,
    }
