"""Task types as plugins (tasks/types.py): the built-in types and the example plugin's ``qa_pair_vectorization``
(examples/plugin, installed by `make venv`) are found by their entry points, validate with their own models,
appear in the task schema, are routed to the lane they name and build their own payloads; an unknown or broken
type fails only its task, with a message that lists the installed types.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from pydantic import BaseModel

from core.errors import InvalidTaskError, PermanentError, UnsupportedTaskError
from core.ids import vector_id
from tasks import types
from tasks.builtin_types import BatchType, DeleteType, DocumentType, ImageType, TextType
from tasks.inputs import build_records
from tasks.schema import TASK_TYPES, DeleteTask, Task, TaskBase, json_schema, parse_task
from tests.fakes import FakeEmbedder
from tests.unit.test_pipeline import SETTINGS, Harness

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "run `make venv` (it installs examples/plugin: pip install --no-deps --no-build-isolation -e examples/plugin)"
QA = "qa_pair_vectorization"


def _example_plugin() -> type[types.TaskType]:
    found = {ep.name: ep.value for ep in entry_points(group=types.ENTRY_POINT_GROUP)}
    assert found.get(QA) == "vw_example_plugin.task_types:QaPairType", (
        f"the example plugin's task type is not installed in this environment (entry points: {found}); {INSTALL}"
    )
    from vw_example_plugin.task_types import QaPairType

    return QaPairType


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Extra entry points of the task-type group for one test (name -> target), read afresh, then forgotten."""
    extra: dict[str, str] = {}
    real = entry_points

    def fake(*, group: str) -> list[EntryPoint]:
        found = list(real(group=group))
        if group == types.ENTRY_POINT_GROUP:
            found += [EntryPoint(name=n, value=v, group=group) for n, v in extra.items()]
        return found

    monkeypatch.setattr(types, "entry_points", fake)
    types.forget()
    yield extra
    types.forget()


# -- test-local types, registered through the `plugins` fixture -------------------------------------------
class PhotoTask(TaskBase):
    task_type: Literal["photo_vectorization"]
    data: str


class PhotoType(types.TaskType):
    """An image-lane type of a plugin: its ``data`` is an image like image_vectorization's."""

    name = "photo_vectorization"
    model = PhotoTask
    lane = "image"

    def item_payload(self, task: Task, index: int) -> dict[str, Any]:
        return {"album": "holidays"}


class NotesTask(TaskBase):
    task_type: Literal["notes_vectorization"]
    data: list[str]


class NotesType(types.TaskType):
    name = "notes_vectorization"
    model = NotesTask

    def texts(self, task: Task) -> list[str]:
        assert isinstance(task, NotesTask)
        return list(task.data)

    def item_payload(self, task: Task, index: int) -> dict[str, Any]:
        return {"task_id": "forged"}  # the worker's own field: refused


class Misnamed(NotesType):
    name = "something_else"


class PlainModel(BaseModel):
    task_type: Literal["nobase_vectorization"]
    data: str


class NoBase(types.TaskType):
    name = "nobase_vectorization"
    model = PlainModel


class BadLane(NotesType):
    name = "notes_vectorization"
    lane = "audio"


class Loud(TextType):
    """A replacement of the built-in text type."""

    def texts(self, task: Task) -> list[str]:
        return [t.upper() for t in super().texts(task)]


# -- the registry -------------------------------------------------------------------------------------
def test_the_registry_finds_the_builtin_types_and_the_example_plugin() -> None:
    qa = _example_plugin()
    assert types.names()[: len(TASK_TYPES)] == TASK_TYPES  # the built-ins first, in the documented order
    assert QA in types.names()
    expected = {
        "text_vectorization": (TextType, "text"),
        "batch_vectorization": (BatchType, "text"),
        "image_vectorization": (ImageType, "image"),
        "document_vectorization": (DocumentType, "text"),
        "delete": (DeleteType, "delete"),
        QA: (qa, "text"),
    }
    for name, (kind, lane) in expected.items():
        found = types.get(name)
        assert isinstance(found, kind) and found.lane == lane and found.name == name
        assert types.get(name) is found  # made once
    assert types.get(QA).fitted_texts and not types.get("document_vectorization").fitted_texts
    # the project's own pyproject registers the built-ins under the same group, to the same objects
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split(f'[project.entry-points."{types.ENTRY_POINT_GROUP}"]', 1)[1].split("\n\n", 1)[0]
    for name, target in types.BUILTINS.items():
        assert f'{name} = "{target}"' in section
    plugin = (ROOT / "examples/plugin/pyproject.toml").read_text(encoding="utf-8")
    assert f'{QA} = "vw_example_plugin.task_types:QaPairType"' in plugin


def test_a_qa_pair_task_validates_with_the_plugins_model() -> None:
    qa = _example_plugin()
    task = parse_task(json.dumps({"task_type": QA, "task_id": "faq-1", "data": {"question": "Q?", "answer": "A."}}))
    assert type(task).__name__ == "QaPairTask" and isinstance(task, TaskBase) and types.of(task).__class__ is qa
    assert types.of(task).texts(task) == ["Q?", "A."]
    with pytest.raises(InvalidTaskError) as info:
        parse_task(json.dumps({"task_type": QA, "task_id": "faq-2", "data": {"question": "Q?"}}))
    assert "Invalid qa_pair_vectorization task: field 'data.answer': Field required" in str(info.value)
    assert info.value.task_id == "faq-2"
    with pytest.raises(InvalidTaskError, match="field 'data.answer': String should have at least 1 character"):
        parse_task(json.dumps({"task_type": QA, "data": {"question": "Q?", "answer": ""}}))
    with pytest.raises(InvalidTaskError, match="field 'data.hint': unknown field"):
        parse_task(json.dumps({"task_type": QA, "data": {"question": "Q", "answer": "A", "hint": "h"}}))
    with pytest.raises(InvalidTaskError, match=r"field 'metadata' is \d+ bytes of JSON, over the limit"):
        parse_task(
            json.dumps({"task_type": QA, "data": {"question": "Q", "answer": "A"}, "metadata": {"k": "v" * 20000}})
        )


def test_an_unknown_task_type_lists_the_installed_ones_with_the_plugin() -> None:
    _example_plugin()
    with pytest.raises(InvalidTaskError) as info:
        parse_task(b'{"task_type": "audio_vectorization", "task_id": "a1", "data": "x"}')
    message = str(info.value)
    assert "unknown task_type 'audio_vectorization'; expected one of text_vectorization, batch_vectorization" in message
    assert "delete" in message and QA in message and "docs/tasks.md" in message and info.value.task_id == "a1"
    with pytest.raises(InvalidTaskError, match=f"'task_type' is missing; expected one of .*{QA}"):
        parse_task(b'{"data": "x"}')


def test_the_schema_holds_the_plugin_type_when_installed_and_the_docs_the_builtins() -> None:
    _example_plugin()
    installed = json_schema(installed=True)
    mapping = installed["discriminator"]["mapping"]
    assert set(mapping) == {*TASK_TYPES, QA}
    qa = installed["$defs"]["QaPairTask"]
    assert qa["properties"]["task_type"]["const"] == QA and qa["additionalProperties"] is False
    assert set(installed["$defs"]["QaPair"]["required"]) == {"question", "answer"}
    published = json_schema()  # what `make schemas` writes to docs/task.schema.json
    assert set(published["discriminator"]["mapping"]) == set(TASK_TYPES)
    docs = json.loads((ROOT / "docs/task.schema.json").read_text(encoding="utf-8"))
    assert docs == published


# -- through the pipeline --------------------------------------------------------------------------------
async def test_a_qa_pair_task_stores_two_vectors_with_their_roles() -> None:
    _example_plugin()
    h = Harness()
    await h.send(
        {
            "task_type": QA,
            "task_id": "faq-7",
            "data": {"question": "How do I reset my password?", "answer": "Open Settings, then Security."},
            "metadata": {"lang": "en"},
        }
    )
    await h.send({"task_type": "text_vectorization", "task_id": "t1", "data": "hello"})
    await h.drain()
    assert h.acked == [0, 1]
    assert h.statuses("faq-7") == ["received", "processing", "completed"]
    # the text lane batched the plugin's two texts with the text task's: one model call (longest first)
    [call] = h.embedders["fake-model"].calls
    assert sorted(call) == sorted(["How do I reset my password?", "Open Settings, then Security.", "hello"])
    result = next(r for r in h.kafka.on("results") if r["task_id"] == "faq-7")
    assert result["task_type"] == QA and result["count"] == 2 and result["dimension"] == 8
    assert result["vector_ids"] == [vector_id("faq-7", 0), vector_id("faq-7", 1)]
    question, answer = h.store.retrieve("vectorize", result["vector_ids"])
    assert question.payload["role"] == "question" and question.payload["text"] == "How do I reset my password?"
    assert answer.payload["role"] == "answer" and answer.payload["text"] == "Open Settings, then Security."
    for point, index in ((question, 0), (answer, 1)):
        assert point.payload["task_type"] == QA and point.payload["item_index"] == index
        assert point.payload["metadata"] == {"lang": "en"} and point.payload["task_id"] == "faq-7"
    want = FakeEmbedder("fake-model").embed_texts(["Open Settings, then Security."], batch_size=1, normalize=None)
    assert np.allclose(answer.vector, want[0])
    assert h.store.count("vectorize") == 3 and h.kafka.on("dlq") == []


async def test_a_plugin_text_type_is_fitted_like_a_batch() -> None:
    _example_plugin()

    class Short(Harness):
        def _load(self, name: str) -> FakeEmbedder:
            return self.embedders.setdefault(name, FakeEmbedder(name, max_tokens=4))

    long_answer = "one two three four five six"
    refused = Short()
    await refused.send({"task_type": QA, "task_id": "q1", "data": {"question": "why", "answer": long_answer}})
    await refused.drain()
    [dead] = refused.kafka.on("dlq")
    assert dead["task_id"] == "q1" and dead["error"]["kind"] == "text_too_long"
    assert "Task q1: text item 1 (model fake-model)" in dead["error"]["message"]
    cut = Short(long_text="truncate")
    await cut.send({"task_type": QA, "task_id": "q2", "data": {"question": "why", "answer": long_answer}})
    await cut.drain()
    result = next(r for r in cut.kafka.on("results") if r["task_id"] == "q2")
    assert result["status"] == "completed" and result["truncated_items"] == [1]
    [answer] = cut.store.retrieve("vectorize", [vector_id("q2", 1)])
    assert answer.payload == answer.payload | {"text": "one two three four", "truncated": True, "role": "answer"}


async def test_a_plugin_type_runs_in_the_lane_it_names(plugins: dict[str, str]) -> None:
    plugins["photo_vectorization"] = f"{__name__}:PhotoType"
    h = Harness()
    photo = parse_task(b'{"task_type": "photo_vectorization", "data": "x"}')
    text = parse_task(b'{"task_type": "text_vectorization", "data": "x"}')
    assert h.pipeline.lane_for(photo) is h.pipeline.images and h.pipeline.lane_for(text) is h.pipeline.text
    # the image lane's records: the image's fields plus the type's own
    vectors = np.ones((1, 4), np.float32)
    [record] = build_records(photo, None, vectors, model="m", worker_id="w")
    assert record.payload["album"] == "holidays" and record.payload["item_index"] == 0
    assert record.id == vector_id(photo.task_id, 0)


async def test_a_payload_field_of_the_worker_is_refused_and_fails_only_that_task(plugins: dict[str, str]) -> None:
    plugins["notes_vectorization"] = f"{__name__}:NotesType"
    task = parse_task(b'{"task_type": "notes_vectorization", "task_id": "n1", "data": ["a", "b"]}')
    with pytest.raises(PermanentError, match=r"Task n1: task type 'notes_vectorization' .* sets the worker's own"):
        build_records(task, None, np.ones((2, 4), np.float32), model="m", worker_id="w")
    h = Harness()
    await h.send({"task_type": "notes_vectorization", "task_id": "n1", "data": ["a", "b"]})
    await h.send({"task_type": "text_vectorization", "task_id": "t1", "data": "fine"})
    await h.drain()
    assert h.acked == [0, 1] and h.statuses("n1")[-1] == "failed" and h.statuses("t1")[-1] == "completed"
    [dead] = h.kafka.on("dlq")
    assert dead["task_id"] == "n1" and "payload field(s) task_id" in dead["error"]["message"]
    assert h.store.retrieve("vectorize", [vector_id("n1", 0)]) == []


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("no_such_module.types:Thing", "importing the task type 'broken' (no_such_module.types:Thing"),
        (f"{__name__}:Misnamed", "is named 'something_else', not 'broken'"),
        (f"{__name__}:INSTALL", "is a str, not a tasks.types.TaskType subclass or instance"),
    ],
)
async def test_a_broken_plugin_type_fails_its_tasks_with_what_to_fix(
    plugins: dict[str, str], target: str, problem: str
) -> None:
    plugins["broken"] = target
    assert "broken" in types.names()
    with pytest.raises(UnsupportedTaskError) as info:
        parse_task(b'{"task_type": "broken", "task_id": "b1", "data": "x"}')
    assert problem in str(info.value) and "Task type 'broken' is installed but cannot be used" in str(info.value)
    assert info.value.task_id == "b1"
    h = Harness()  # the worker goes on: the task fails alone, dead-lettered
    await h.send({"task_type": "broken", "task_id": "b1", "data": "x"})
    await h.send({"task_type": "text_vectorization", "task_id": "t1", "data": "fine"})
    await h.drain()
    assert h.acked == [0, 1] and h.statuses("b1") == ["failed"] and h.statuses("t1")[-1] == "completed"
    [dead] = h.kafka.on("dlq")
    assert dead["error"]["kind"] == "unsupported_task" and problem in dead["error"]["message"]


class PrefixingType(types.TaskType):
    """Adds a prefix in prepare() but leaves fitted_texts on: refused (prepare would not always run)."""

    name = "prefixed_vectorization"
    model = NotesTask

    def texts(self, task: Any) -> list[str]:
        return [task.data]

    def prepare(self, task: Any, tokenizer: Any, *, model: str, settings: Any) -> types.Prepared:
        return types.Prepared(texts=["query: " + t for t in self.texts(task)])


@pytest.mark.parametrize(
    ("name", "target", "problem"),
    [
        ("nobase_vectorization", f"{__name__}:NoBase", "that is not a tasks.schema.TaskBase subclass"),
        ("notes_vectorization", f"{__name__}:BadLane", "runs in lane 'audio'"),
        ("text_vectorization", f"{__name__}:NotesType", "is named 'notes_vectorization', not 'text_vectorization'"),
        ("prefixed_vectorization", f"{__name__}:PrefixingType", r"overrides prepare\(\) but keeps fitted_texts = True"),
    ],
)
def test_the_registry_checks_a_types_model_and_lane(
    plugins: dict[str, str], name: str, target: str, problem: str
) -> None:
    plugins[name] = target
    with pytest.raises(UnsupportedTaskError, match=problem):
        types.get(name)


def test_an_entry_point_of_a_builtin_name_replaces_it(plugins: dict[str, str]) -> None:
    plugins["text_vectorization"] = f"{__name__}:Loud"
    task = parse_task(b'{"task_type": "text_vectorization", "data": "hi"}')
    assert types.of(task).texts(task) == ["HI"] and types.names()[0] == "text_vectorization"
    assert isinstance(types.builtin("text_vectorization"), TextType)  # the published schema keeps the built-in
    assert not isinstance(types.builtin("text_vectorization"), Loud)


def test_a_delete_is_routed_by_its_type() -> None:
    task = parse_task(b'{"task_type": "delete", "task_id": "d1"}')
    assert isinstance(task, DeleteTask) and types.of(task).lane == "delete"
    with pytest.raises(TypeError, match="delete tasks carry no texts"):
        types.of(task).texts(task)


def test_the_doctor_names_every_installed_type_and_a_broken_plugin(plugins: dict[str, str]) -> None:
    from app.doctor import check_task_types

    listed = check_task_types(SETTINGS)  # type: ignore[arg-type]
    assert "text_vectorization (text lane)" in listed and "image_vectorization (image lane)" in listed
    assert f"{QA} (text lane, plugin vw_example_plugin.task_types)" in listed
    plugins["broken"] = "no_such_plugin_module:Type"
    types.forget()  # a new package installed: the worker would see it at its next start
    with pytest.raises(RuntimeError) as info:
        check_task_types(SETTINGS)  # type: ignore[arg-type]
    message = str(info.value)
    assert (
        message.startswith("1 installed task type(s) cannot be used")
        and "broken (no_such_plugin_module:Type)" in message
    )
    assert "Fix or uninstall the plugin package named." in message


def test_a_broken_plugin_is_imported_once_not_once_per_task(
    plugins: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    imported: list[str] = []
    from core import plugins as plugin_loading

    real = plugin_loading.importlib.import_module

    def counting(name: str) -> Any:
        imported.append(name)
        return real(name)

    monkeypatch.setattr(plugin_loading.importlib, "import_module", counting)
    plugins["broken"] = "no_such_module.types:Thing"
    for task_id in ("b1", "b2", "b3"):
        with pytest.raises(UnsupportedTaskError) as info:
            parse_task(json.dumps({"task_type": "broken", "task_id": task_id, "data": "x"}).encode())
        assert info.value.task_id == task_id and "no_such_module.types:Thing" in str(info.value)
    assert imported.count("no_such_module.types") == 1


class CheckBreaks(NotesType):
    name = "checked_vectorization"

    class Model(TaskBase):
        task_type: Literal["checked_vectorization"]
        data: list[str]

    model = Model

    def check(self, task: Any, limits: Any) -> None:
        raise KeyError("limits.notes")  # a bug in the plugin


def test_a_plugin_check_that_breaks_fails_its_task_under_the_tasks_own_id(plugins: dict[str, str]) -> None:
    plugins["checked_vectorization"] = f"{__name__}:CheckBreaks"
    with pytest.raises(UnsupportedTaskError) as info:
        parse_task(b'{"task_type": "checked_vectorization", "task_id": "c7", "data": ["x"]}')
    assert info.value.task_id == "c7"
    assert "the check of task type 'checked_vectorization'" in str(info.value) and "KeyError" in str(info.value)
