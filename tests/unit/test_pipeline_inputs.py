"""Image, document and long-text tasks through the pipeline, with fakes at the ports."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.ids import DOCUMENT_VECTOR, vector_id
from models.base import l2_normalize
from tests.fakes import FakeEmbedder
from tests.unit.test_images import photo, png_bytes
from tests.unit.test_lane import until
from tests.unit.test_pipeline import Harness


class InputsHarness(Harness):
    """The pipeline harness with a small token limit (12 words) and an image lane drain."""

    def _load(self, name: str) -> FakeEmbedder:
        if name == "missing-model":
            return super()._load(name)
        return self.embedders.setdefault(name, FakeEmbedder(name, max_tokens=12))

    def result(self, task_id: str) -> dict[str, Any]:
        return next(r for r in self.kafka.on("results") if r["task_id"] == task_id)

    def dead(self, task_id: str) -> dict[str, Any]:
        return next(d for d in self.kafka.on("dlq") if d["task_id"] == task_id)


def b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


# -- images ------------------------------------------------------------------------------
async def test_image_tasks_are_batched_across_tasks_and_stored() -> None:
    h = InputsHarness()
    images = [photo(seed=i) for i in range(3)]
    for i, image in enumerate(images):
        await h.send({"task_type": "image_vectorization", "data": b64(image), "task_id": f"i{i}", "metadata": {"n": i}})
    await h.send(
        {"task_type": "image_vectorization", "data": "data:image/png;base64," + b64(images[0]), "task_id": "u"}
    )
    assert h.acked == []
    await h.drain()
    assert h.acked == [0, 1, 2, 3]
    embedder = h.embedders["fake-image-model"]  # default_image_model
    assert embedder.image_calls == [4] and embedder.calls == []  # one model call for four tasks, no texts
    for i in range(3):
        assert h.statuses(f"i{i}") == ["received", "processing", "completed"]
        result = h.result(f"i{i}")
        assert result["vector_ids"] == [vector_id(f"i{i}", 0)] and result["count"] == 1 and result["dimension"] == 8
        [point] = h.store.retrieve("vectorize", [vector_id(f"i{i}", 0)])
        assert point.payload["task_type"] == "image_vectorization" and point.payload["source"] == "data"
        assert point.payload["metadata"] == {"n": i} and (point.payload["width"], point.payload["height"]) == (96, 64)
        assert "image_ref" not in point.payload  # inline data is not copied into the store
        expected = embedder.embed_images([images[i]], batch_size=1, normalize=None)[0]
        assert np.allclose(point.vector, expected)
    # the same pixels sent as a data URI give the same vector
    [same] = h.store.retrieve("vectorize", [vector_id("u", 0)])
    assert np.allclose(same.vector, h.store.retrieve("vectorize", [vector_id("i0", 0)])[0].vector)


async def test_a_bad_image_fails_only_its_own_task(tmp_path: Path) -> None:
    h = InputsHarness(images_allowed_roots=[str(tmp_path / "ok")])
    (tmp_path / "ok").mkdir()
    photo().save(tmp_path / "ok" / "cat.png")
    photo().save(tmp_path / "secret.png")
    truncated = png_bytes(photo(200, 100))[:900]
    tasks = [
        ("good-path", str(tmp_path / "ok" / "cat.png")),
        ("escape", f"{tmp_path}/ok/../secret.png"),
        ("not-image", base64.b64encode(b"plain text, not an image " * 4).decode()),
        ("truncated", base64.b64encode(truncated).decode()),
        ("url-off", "https://example.com/cat.png"),
        ("good-data", b64(photo(seed=7))),
    ]
    for task_id, data in tasks:
        await h.send({"task_type": "image_vectorization", "data": data, "task_id": task_id, "normalize": True})
    await h.drain()
    assert h.acked == list(range(len(tasks)))
    assert h.embedders["fake-image-model"].image_calls == [2]
    for task_id in ("good-path", "good-data"):
        assert h.statuses(task_id)[-1] == "completed"
        vector = np.array(h.store.retrieve("vectorize", [vector_id(task_id, 0)])[0].vector)
        assert abs(np.linalg.norm(vector) - 1) < 1e-5  # normalize honoured
    assert h.store.retrieve("vectorize", [vector_id("good-path", 0)])[0].payload["image_ref"] == str(
        tmp_path / "ok" / "cat.png"
    )
    expected = {
        "escape": "outside the allowed roots",
        "not-image": "is not an image",
        "truncated": "that cannot be decoded (truncated or corrupt",
        "url-off": "image URLs are off",
    }
    for task_id, words_ in expected.items():
        assert h.statuses(task_id) == ["received", "processing", "failed"]
        error = h.dead(task_id)["error"]
        assert error["kind"] == "invalid_image" and error["error_class"] == "ImageInputError"
        assert error["message"].startswith(f"Task {task_id}: image input ") and words_ in error["message"]
        assert h.result(task_id)["status"] == "failed"


async def test_image_input_errors_come_before_the_model() -> None:
    h = InputsHarness()
    await h.send(
        {"task_type": "image_vectorization", "data": "/etc/passwd", "task_id": "p", "model_name": "missing-model"}
    )
    await h.send(
        {"task_type": "image_vectorization", "data": b64(photo()), "task_id": "m", "model_name": "missing-model"}
    )
    await h.drain()
    assert "local image paths are off" in h.dead("p")["error"]["message"]
    assert h.dead("m")["error"]["kind"] == "model_load"
    assert h.acked == [0, 1]


# -- documents ---------------------------------------------------------------------------
async def test_document_chunks_and_document_vector() -> None:
    h = InputsHarness()  # 12 tokens a chunk (the fake model's limit), 4 overlapping
    content = words(30)
    await h.send({"task_type": "text_vectorization", "data": "alone", "task_id": "t", "normalize": True})
    await h.send(
        {
            "task_type": "document_vectorization",
            "data": {"title": "Title", "content": content},
            "task_id": "d",
            "metadata": {"src": "x"},
            "normalize": True,
        }
    )
    await h.drain()
    embedder = h.embedders["fake-model"]
    spans = [(0, 12), (8, 20), (16, 28), (24, 30)]
    chunk_texts = [words(b - a, a) for a, b in spans]
    # chunks share one model call with other texts (in length order: the lane sorts to cut padding)
    assert len(embedder.calls) == 1 and sorted(embedder.calls[0]) == sorted(["alone", *chunk_texts])
    result = h.result("d")
    ids = [vector_id("d", i) for i in range(4)]
    assert result["vector_ids"] == [*ids, vector_id("d", DOCUMENT_VECTOR)]
    assert result["chunks"] == 4 and result["count"] == 5 and result["truncated_items"] == []
    points = h.store.retrieve("vectorize", ids)
    for index, (point, text) in enumerate(zip(points, chunk_texts, strict=True)):
        p = point.payload
        assert p["text"] == text == content[p["char_start"] : p["char_end"]]
        assert (p["chunk_index"], p["item_index"], p["chunk_count"], p["vector_kind"]) == (index, index, 4, "chunk")
        assert p["token_count"] == len(text.split()) and p["title"] == "Title" and p["metadata"] == {"src": "x"}
    [doc] = h.store.retrieve("vectorize", [vector_id("d", DOCUMENT_VECTOR)])
    assert doc.payload["vector_kind"] == "document" and doc.payload["chunk_count"] == 4
    assert doc.payload["title"] == "Title" and doc.payload["metadata"] == {"src": "x"}
    chunk_vectors = embedder.embed_texts(chunk_texts, batch_size=8, normalize=True)
    assert np.allclose(doc.vector, l2_normalize(chunk_vectors.mean(axis=0, keepdims=True))[0], atol=1e-6)
    assert len(set(result["vector_ids"])) == 5 and h.statuses("d")[-1] == "completed"


async def test_document_vector_none_and_chunk_settings() -> None:
    h = InputsHarness(document_vector="none", chunk_tokens=5, chunk_overlap_tokens=0)
    await h.send({"task_type": "document_vectorization", "data": {"content": words(12)}, "task_id": "d"})
    await h.drain()
    result = h.result("d")
    assert result["chunks"] == 3 and result["vector_ids"] == [vector_id("d", i) for i in range(3)]
    assert h.embedders["fake-model"].calls == [[words(5), words(5, 5), words(2, 10)]]


async def test_whitespace_document_fails_with_a_clear_message() -> None:
    h = InputsHarness()
    await h.send({"task_type": "document_vectorization", "data": {"content": "   "}, "task_id": "empty"})
    await h.send({"task_type": "text_vectorization", "data": "fine", "task_id": "ok"})
    await h.drain()
    assert (
        "Task empty (document, model fake-model): the document content has no tokens"
        in (h.dead("empty")["error"]["message"])
    )
    assert h.statuses("ok")[-1] == "completed" and h.acked == [0, 1]


# -- long texts --------------------------------------------------------------------------
async def test_long_text_is_rejected_by_default_without_harming_batch_mates() -> None:
    h = InputsHarness()
    await h.send({"task_type": "batch_vectorization", "data": ["short", words(20)], "task_id": "long"})
    await h.send({"task_type": "text_vectorization", "data": words(12), "task_id": "fits"})  # exactly the limit
    await h.drain()
    message = h.dead("long")["error"]["message"]
    assert message.startswith("Task long: text item 1 (model fake-model) is 20 tokens, over the model's limit of 12")
    assert h.dead("long")["error"]["kind"] == "text_too_long"
    assert h.statuses("fits")[-1] == "completed" and h.embedders["fake-model"].calls == [[words(12)]]
    assert h.store.retrieve("vectorize", [vector_id("long", 0)]) == []  # nothing of the refused task stored


async def test_long_text_truncate_is_reported() -> None:
    h = InputsHarness(long_text="truncate")
    await h.send({"task_type": "batch_vectorization", "data": ["short", words(20), "tiny"], "task_id": "cut"})
    await h.drain()
    result = h.result("cut")
    assert result["status"] == "completed" and result["truncated_items"] == [1] and result["count"] == 3
    [point] = h.store.retrieve("vectorize", [vector_id("cut", 1)])
    assert point.payload["text"] == words(12) and point.payload["truncated"] is True
    assert "truncated" not in h.store.retrieve("vectorize", [vector_id("cut", 0)])[0].payload


async def test_drain_waits_for_the_image_lane() -> None:
    h = InputsHarness()
    await h.send({"task_type": "image_vectorization", "data": b64(photo()), "task_id": "x"})
    gate = asyncio.Event()
    load = h.pipeline.images.process

    async def gated(batch: Any) -> None:
        await gate.wait()
        await load(batch)

    h.pipeline.images.process = gated  # type: ignore[method-assign]
    h.pipeline.start()
    await until(lambda: h.pipeline.images.active == 1, "the image batch to start")
    assert await h.pipeline.drain(0.01) is False  # an image batch is in flight
    gate.set()
    assert await h.pipeline.drain(1) is True
    assert h.statuses("x")[-1] == "completed"
    await h.pipeline.stop()


def test_image_helper_photo_is_rgb() -> None:
    image = Image.open(io.BytesIO(png_bytes(photo())))
    assert image.mode == "RGB" and image.size == (96, 64)


def test_document_vector_follows_the_model_default_normalisation() -> None:
    from types import SimpleNamespace

    from tasks.inputs import Prepared, add_document_vectors

    unit = l2_normalize(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    raw = np.array([[2.0, 0.0], [0.0, 4.0]], dtype=np.float32)

    def doc(vectors: np.ndarray, normalize: bool | None) -> SimpleNamespace:
        task = SimpleNamespace(normalize=normalize)
        prepared = Prepared(texts=["a", "b"], document_vector=True)
        return SimpleNamespace(error=None, vectors=vectors, prepared=prepared, item=SimpleNamespace(task=task))

    by_default, plain, asked_off = doc(unit, None), doc(raw, None), doc(unit, False)
    add_document_vectors([by_default, plain, asked_off])  # type: ignore[list-item]
    assert abs(np.linalg.norm(by_default.vectors[-1]) - 1.0) < 1e-6  # the model normalised its chunks
    assert np.allclose(plain.vectors[-1], [1.0, 2.0])  # unnormalised chunks: the plain mean
    assert np.allclose(asked_off.vectors[-1], [0.5, 0.5])  # normalize: false is honoured
