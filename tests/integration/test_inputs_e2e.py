"""Documents and image inputs on a real worker and a real broker: chunks stored, unsafe images refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.harness import Topics, WorkerProcess, collect, committed_vs_end, produce, run
from tests.unit.test_chunking import document
from tests.unit.test_images import photo, png_bytes, png_header_only

pytestmark = pytest.mark.integration


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def image_files(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The allowed root and, per task id, (image data, words the failure message must hold)."""
    root = tmp_path / "images"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    photo().save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "big.png").write_bytes(os.urandom(300_000))
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (root / "notes.png").write_text("these are notes, not pixels\n")
    whole = png_bytes(photo(300, 200))
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    return root, {
        "img-traversal": (f"{root}/../outside/secret.png", "outside the allowed roots"),
        "img-symlink": (str(root / "link.png"), f"resolves to '{outside / 'secret.png'}', outside the allowed roots"),
        "img-passwd": ("/etc/passwd", "resolves to '/etc/passwd', outside the allowed roots"),
        "img-loopback-url": ("http://127.0.0.1:9/x.png", "resolves to 127.0.0.1, a loopback address"),
        "img-metadata-url": ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        "img-localhost-url": ("http://localhost:8080/cat.png", "the host 'localhost' resolves to"),
        "img-oversized": (str(root / "big.png"), "300000 bytes, over images_max_bytes (200000 bytes"),
        "img-bomb": (str(root / "bomb.png"), "decompression bomb"),
        "img-not-image": (str(root / "notes.png"), "is not an image in an accepted format (28 bytes"),
        "img-truncated": (str(root / "cut.png"), "is a PNG of 300x200 that cannot be decoded (truncated"),
    }


def test_documents_and_refused_images_end_to_end(topics: Topics, tmp_path: Path) -> None:
    root, bad_images = image_files(tmp_path)
    content = document(3_000, seed=42)
    tasks: list[dict[str, Any]] = [
        {"task_type": "text_vectorization", "data": "before the document", "task_id": "t-0"},
        {
            "task_type": "document_vectorization",
            "data": {"title": "A long report", "content": content},
            "task_id": "doc-1",
            "metadata": {"source": "e2e"},
        },
    ]
    for task_id, (data, _) in bad_images.items():
        tasks.append({"task_type": "image_vectorization", "data": data, "task_id": task_id})
        tasks.append(
            {"task_type": "text_vectorization", "data": f"valid text after {task_id}", "task_id": f"ok-{task_id}"}
        )
    tasks.append({"task_type": "text_vectorization", "data": document(400, seed=1), "task_id": "too-long"})
    tasks.append({"task_type": "text_vectorization", "data": "the last one", "task_id": "t-last"})
    run(produce(topics.tasks, [json.dumps(t).encode() for t in tasks]))

    worker = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_IMAGES_ALLOWED_ROOTS=str(root),
        VECTORIZE_WORKER_IMAGES_ALLOW_URLS="true",
        VECTORIZE_WORKER_IMAGES_MAX_BYTES="200000",
        VECTORIZE_WORKER_IMAGES_MAX_PIXELS="1000000",
    ).start()
    try:
        records = run(
            collect(
                [topics.status, topics.results, topics.dlq],
                lambda r: len(r[topics.results]) >= len(tasks),
                timeout=300,
            )
        )
        assert worker.stop() == 0
    finally:
        worker.kill()

    results = {r["task_id"]: r for r in records[topics.results]}
    statuses: dict[str, list[str]] = {}
    for s in records[topics.status]:
        statuses.setdefault(s["task_id"], []).append(s["status"])
    dead = {d["task_id"]: d for d in records[topics.dlq]}

    # every refused image: failed with its precise message and a dead letter; the worker went on
    for task_id, (data, words) in bad_images.items():
        result = results[task_id]
        assert result["status"] == "failed" and statuses[task_id] == ["received", "processing", "failed"]
        assert result["error"]["kind"] == "invalid_image", result["error"]
        assert result["error"]["message"].startswith(f"Task {task_id}: image input "), result["error"]
        assert words in result["error"]["message"], result["error"]["message"]
        assert json.loads(dead[task_id]["payload"])["data"] == data
        assert results[f"ok-{task_id}"]["status"] == "completed"
    log = worker.log()
    assert "ViT-B/32" not in log  # refused before any image model was asked for

    # a single text over the limit: refused by default, with the numbers
    too_long = results["too-long"]["error"]
    assert too_long["kind"] == "text_too_long" and "over the model's limit of 254 tokens" in too_long["message"]
    assert set(dead) == {*bad_images, "too-long"}
    assert results["t-0"]["status"] == results["t-last"]["status"] == "completed"

    # the document: chunks with offsets, then the document vector
    doc = results["doc-1"]
    assert doc["status"] == "completed" and statuses["doc-1"] == ["received", "processing", "completed"]
    chunks = doc["chunks"]
    assert chunks > 20 and doc["count"] == chunks + 1 == len(doc["vector_ids"])
    committed, ends = run(committed_vs_end(topics.tasks, topics.group))
    assert committed == {p: end for p, end in ends.items() if end} and sum(ends.values()) == len(tasks)

    from qdrant_client import QdrantClient
    from sentence_transformers import SentenceTransformer

    from models.resolve import packaged_model_dir

    reference = SentenceTransformer(str(packaged_model_dir("sentence-transformers/all-MiniLM-L6-v2")), device="cpu")
    client = QdrantClient(path=str(tmp_path / "w" / "qdrant"))
    try:
        points = client.retrieve("vectorize", ids=doc["vector_ids"], with_vectors=True, with_payload=True)
        by_id = {str(p.id): p for p in points}
        ordered = [by_id[i] for i in doc["vector_ids"]]
    finally:
        client.close()
    chunk_points, doc_point = ordered[:-1], ordered[-1]
    previous_end = 0
    for index, point in enumerate(chunk_points):
        p = point.payload
        assert (p["chunk_index"], p["vector_kind"], p["chunk_count"]) == (index, "chunk", chunks)
        assert content[p["char_start"] : p["char_end"]] == p["text"] and p["token_count"] <= 254
        assert p["title"] == "A long report" and p["metadata"] == {"source": "e2e"}
        assert p["char_start"] < previous_end or index == 0  # consecutive chunks overlap
        previous_end = p["char_end"]
    assert previous_end == len(content.rstrip())  # the last chunk reaches the end of the content
    for point in chunk_points[:3] + chunk_points[-2:]:
        assert cosine(point.vector, reference.encode(point.payload["text"])) >= 0.999
    assert doc_point.payload["vector_kind"] == "document" and doc_point.payload["chunk_count"] == chunks
    mean = np.mean([p.vector for p in chunk_points], axis=0)
    assert cosine(doc_point.vector, mean) >= 0.9999
