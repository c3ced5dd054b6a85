"""The metadata contract: declared filterable fields (settings), their checks, and the records that carry them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ConfigError, InvalidTaskError
from core.metadata_contract import (
    MAX_LIST_ITEMS,
    MAX_STRING_BYTES,
    MetadataContract,
    epoch_micros,
    parse_filterable,
)
from core.settings import load_settings
from tasks.inputs import Prepared, build_records
from tasks.schema import TASK_ADAPTER

DECLARED = {"*": {"lang": "string"}, "docs": {"year": "int", "tags": "string_list", "lang": "bool"}}


def test_parse_accepts_every_type_and_the_wildcard() -> None:
    raw = {"*": {"a": "string", "b": "int", "c": "float", "d": "bool", "e": "datetime", "f": "string_list"}}
    assert parse_filterable(raw) == raw
    assert parse_filterable(None) == {}
    assert parse_filterable({"docs-2": {"_x" + "y" * 62: "int"}}) == {"docs-2": {"_x" + "y" * 62: "int"}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["lang"], "must map collection names"),
        ({"*": {"9lang": "string"}}, r"field '9lang' of '\*': names must match"),
        ({"*": {"a.b": "string"}}, "field 'a.b'"),
        ({"*": {"": "string"}}, "field ''"),
        ({"*": {"x" * 65: "string"}}, "names must match"),
        ({"*": {"lang": "str"}}, "type 'str' is not one of string, int, float, bool, datetime, string_list"),
        ({"bad name": {"a": "int"}}, "collection 'bad name' is not"),
        ({"docs": ["a"]}, "collection 'docs' must map field names to types"),
        ({"*": {f"f{n}": "int" for n in range(65)}}, "declares 65 fields, over the limit of 64"),
    ],
)
def test_parse_names_each_bad_entry(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_filterable(raw)


def test_a_collection_overrides_the_wildcard_field_by_field() -> None:
    contract = MetadataContract(DECLARED)
    assert contract.fields("docs") == {"lang": "bool", "year": "int", "tags": "string_list"}
    assert contract.fields("other") == {"lang": "string"}
    assert not MetadataContract() and contract


def test_a_models_collection_behind_an_alias_has_the_declared_fields_of_its_alias() -> None:
    contract = MetadataContract(DECLARED)
    docs = contract.fields("docs")
    assert contract.fields("docs__all_minilm_l6_v2_3f2a9c1d") == docs  # core.versioning.physical_name
    assert contract.fields("Docs__all_minilm_l6_v2_3f2a9c1d") == docs  # Weaviate's class name of it
    assert contract.fields("docs__not_a_physical_name") == {"lang": "string"}  # the wildcard only


def test_extract_checks_and_normalises() -> None:
    contract = MetadataContract(
        {"*": {"s": "string", "i": "int", "f": "float", "b": "bool", "d": "datetime", "l": "string_list"}}
    )
    metadata = {"s": "x", "i": 3, "f": 2, "b": False, "d": "2024-05-01T12:00:00+02:00", "l": ["a"], "other": {1: 2}}
    assert contract.extract(metadata, collection="c", task_id="t") == {
        "s": "x",
        "i": 3,
        "f": 2.0,
        "b": False,
        "d": datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        "l": ["a"],
    }
    assert isinstance(contract.extract({"f": 2}, collection="c", task_id="t")["f"], float)
    # absent, null and empty lists carry nothing (they match no filter)
    assert contract.extract({"s": None, "l": []}, collection="c", task_id="t") == {}
    # a date-time without a zone is UTC; a date alone is its midnight
    assert contract.extract({"d": "2024-05-01"}, collection="c", task_id="t")["d"] == datetime(2024, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "value", "given"),
    [
        ("int", "2020", r"a string \('2020'\)"),
        ("int", True, r"a bool \(true\)"),
        ("int", 1.5, r"a float \(1.5\)"),
        ("int", 2**63, "an int outside the 64-bit range"),
        ("float", "1.5", "a string"),
        ("float", float("nan"), "a number that is not finite"),
        ("float", 10**400, "a number that is not finite"),
        ("bool", 1, r"an int \(1\)"),
        ("string", 5, r"an int \(5\)"),
        ("string", {"a": 1}, "an object of 1 keys"),
        ("string", "é" * MAX_STRING_BYTES, f"a string of {2 * MAX_STRING_BYTES} bytes"),
        ("datetime", 1714567890, "an int"),
        ("datetime", "May 1st", "the string 'May 1st' that is not an ISO 8601 date-time"),
        ("string_list", "a", "a string"),
        ("string_list", ["a", 1], r"a list with an item that is an int \(1\)"),
        ("string_list", ["a"] * (MAX_LIST_ITEMS + 1), f"a list of {MAX_LIST_ITEMS + 1} items"),
    ],
)
def test_a_wrong_type_names_field_collection_expected_and_given(kind: str, value: Any, given: str) -> None:
    contract = MetadataContract({"docs": {"field": kind}})
    with pytest.raises(InvalidTaskError, match=given) as info:
        contract.extract({"field": value}, collection="docs", task_id="task-9")
    message = str(info.value)
    assert message.startswith(f"Task task-9: metadata field 'field' must be {kind}")
    assert "collection 'docs'" in message and "stores.filterable" in message
    assert info.value.task_id == "task-9"


def test_epoch_micros_is_exact_and_ordered() -> None:
    assert epoch_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_micros(datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == 1735689599999999
    assert epoch_micros(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)) == -1_000_000


def _task(task: dict[str, Any]) -> Any:
    return TASK_ADAPTER.validate_python({"task_id": "t1", **task})


def test_build_records_carries_the_declared_fields_on_every_record() -> None:
    contract = MetadataContract(DECLARED)
    metadata = {"year": 2021, "tags": ["a"], "lang": True, "free.form key": {"$x": 1}}
    task = _task({"task_type": "batch_vectorization", "data": ["a", "b"], "metadata": metadata})
    records = build_records(
        task, None, np.zeros((2, 4), np.float32), model="m", worker_id="w", contract=contract, collection="docs"
    )
    assert [r.filterable for r in records] == [{"lang": True, "year": 2021, "tags": ["a"]}] * 2
    assert all(r.payload["metadata"] == metadata for r in records)  # kept whole
    # no contract (or a collection without declared fields): nothing beside the payload
    assert build_records(task, None, np.zeros((2, 4), np.float32), model="m", worker_id="w")[0].filterable == {}


def test_build_records_for_documents_carries_them_on_chunks_and_document_vector() -> None:
    from tasks.chunking import Chunk

    task = _task(
        {"task_type": "document_vectorization", "data": {"title": "T", "content": "x y"}, "metadata": {"lang": "en"}}
    )
    chunks = [Chunk(index=0, text="x", char_start=0, char_end=1, token_count=1, token_start=0, token_end=1)]
    prepared = Prepared(texts=["x"], chunks=chunks, document_vector=True)
    records = build_records(
        task,
        prepared,
        np.zeros((2, 4), np.float32),
        model="m",
        worker_id="w",
        contract=MetadataContract(DECLARED),
        collection="other",
    )
    assert [r.filterable for r in records] == [{"lang": "en"}, {"lang": "en"}]


def test_build_records_fails_the_task_on_a_wrong_type() -> None:
    task = _task({"task_type": "text_vectorization", "data": "a", "metadata": {"year": "2021"}})
    with pytest.raises(InvalidTaskError, match=r"Task t1: metadata field 'year' must be int in collection 'docs'"):
        build_records(
            task,
            None,
            np.zeros((1, 4), np.float32),
            model="m",
            worker_id="w",
            contract=MetadataContract(DECLARED),
            collection="docs",
        )


def test_settings_read_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "w.yml"
    config.write_text('stores:\n  filterable:\n    "*": {lang: string}\n    docs: {year: int}\n', encoding="utf-8")
    assert load_settings(config).filterable == {"*": {"lang": "string"}, "docs": {"year": "int"}}
    monkeypatch.setenv("VECTORIZE_WORKER_FILTERABLE", '{"docs": {"tags": "string_list"}}')
    # the environment's entries are merged into the file's (pydantic-settings merges mappings across sources)
    merged = {"*": {"lang": "string"}, "docs": {"year": "int", "tags": "string_list"}}
    assert load_settings(config).filterable == merged
    monkeypatch.setenv("VECTORIZE_WORKER_FILTERABLE", '{"docs": {"a.b": "int", "x": "text"}}')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert "env VECTORIZE_WORKER_FILTERABLE, YAML stores.filterable" in message
    assert "field 'a.b' of 'docs'" in message and "type 'text' is not one of" in message
