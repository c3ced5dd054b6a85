"""Derived ONNX models (the int8 copies) are written under a name no other writer uses, then renamed whole,
from a private link of the export: workers sharing a models volume in containers all have the same small pid,
and two of them quantizing at once used to remove each other's half-written files, and each other's
`model-inferred.onnx` the quantizer writes beside its input, and remember a failure that was not one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from models.onnx_runtime import _derived_model, own_partial


def test_partial_names_differ_between_writers_of_one_process(tmp_path: Path) -> None:
    target = tmp_path / "key-int8"
    names = {own_partial(target) for _ in range(50)}
    assert len(names) == 50 and all(n.parent == tmp_path and n.name.endswith(".partial") for n in names)


def test_two_writers_at_once_both_get_the_model_and_no_failure_is_remembered(tmp_path: Path) -> None:
    export = tmp_path / "onnx" / "key" / "model.onnx"
    export.parent.mkdir(parents=True)
    export.write_bytes(b"fp32")
    started = threading.Barrier(2)

    def make(source: Path, target: Path) -> None:
        started.wait(timeout=10)  # both writers are inside make() at the same time
        # as ONNX Runtime's quantizer does: a shape-inferred copy beside its input, deleted after
        inferred = source.with_name("model-inferred.onnx")
        inferred.write_bytes(source.read_bytes())
        time.sleep(0.1)
        inferred.unlink()  # raises FileNotFoundError if the other writer already deleted it
        target.write_bytes(b"int8 of " + source.read_bytes())
        time.sleep(0.2)  # the other writer clears and renames meanwhile
        assert target.read_bytes() == b"int8 of fp32"  # nobody removed this writer's file

    results: list[Path | BaseException] = []

    def writer() -> None:
        try:
            results.append(_derived_model(export, "int8", "int8", make))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            results.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    made = tmp_path / "onnx" / "key-int8" / "model.onnx"
    assert results == [made, made], results
    assert made.read_bytes() == b"int8 of fp32"
    assert not list((tmp_path / "onnx").glob("*.failed")) and not list((tmp_path / "onnx").glob("*.partial"))
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["key", "key-int8"]
    assert [p.name for p in (tmp_path / "onnx" / "key").iterdir()] == ["model.onnx"]  # nothing left beside it
    assert [p.name for p in (tmp_path / "onnx" / "key-int8").iterdir()] == ["model.onnx"]
