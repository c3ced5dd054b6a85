"""A real worker on real Kafka runs every task type with every family (tiny models found by their product names)."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.families import make_loader
from tests.integration.harness import Topics, WorkerProcess, collect, produce, run
from tests.models.conftest import cache_with, cos
from tests.tiny_models import build_bert, build_clip, build_roberta

pytestmark = pytest.mark.integration


def photo(path: Path) -> Path:
    """A small synthetic photo: gradients and a disc, so every form of it decodes to the same pixels."""
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, ((x - 64) ** 2 + (y - 48) ** 2 < 900) * 200], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def image_server(tmp_path: Path) -> Any:
    """A test-local HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_worker_runs_every_task_type_with_each_family(topics: Topics, tmp_path: Path, image_server: Any) -> None:
    www, base_url = image_server
    images = tmp_path / "images"
    images.mkdir()
    picture = photo(images / "photo.png")
    (www / "photo.png").write_bytes(picture.read_bytes())
    b64 = base64.b64encode(picture.read_bytes()).decode()
    tiny = tmp_path / "tiny"
    cache = tmp_path / "models-cache"
    cache_with(cache, "bert-base-uncased", build_bert(tiny / "bert"))
    cache_with(cache, "ViT-B-32", build_clip(tiny / "clip"))
    roberta = build_roberta(tiny / "roberta")
    custom = [{"name": "my-roberta", "path": str(roberta), "pooling": "cls", "normalize": True}]
    tasks: list[dict[str, Any]] = [
        {
            "task_id": "hf",
            "task_type": "text_vectorization",
            "data": "a cat on a mat",
            "model_name": "bert-base-uncased",
        },
        {
            "task_id": "clip",
            "task_type": "batch_vectorization",
            "data": ["a photo of a dog", "a diagram"],
            "model_name": "ViT-B/32",
        },
        {"task_id": "custom", "task_type": "text_vectorization", "data": "hello world", "model_name": "my-roberta"},
        {
            "task_id": "batch-rob",
            "task_type": "batch_vectorization",
            "data": ["one", "two"],
            "model_name": "my-roberta",
        },
        {
            "task_id": "doc-bert",
            "task_type": "document_vectorization",
            "data": {"title": "Cats", "content": " ".join(["the cat sat on the mat and looked at the dog"] * 40)},
            "model_name": "bert-base-uncased",
        },
        {"task_id": "img-path", "task_type": "image_vectorization", "data": str(picture), "model_name": "ViT-B/32"},
        {"task_id": "img-b64", "task_type": "image_vectorization", "data": b64, "model_name": "ViT-B/32"},
        {
            "task_id": "img-uri",
            "task_type": "image_vectorization",
            "data": f"data:image/png;base64,{b64}",
            "model_name": "ViT-B/32",
        },
        {
            "task_id": "img-url",
            "task_type": "image_vectorization",
            "data": f"{base_url}/photo.png",
            "model_name": "ViT-B/32",
        },
        {"task_id": "st", "task_type": "text_vectorization", "data": "the default model"},
        {"task_id": "missing", "task_type": "text_vectorization", "data": "x", "model_name": "roberta-base"},
    ]
    for task in tasks:
        task["collection"] = f"fam_{task['task_id']}"  # one collection per dimension
    worker = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_MODELS_CACHE_DIR=str(cache),
        VECTORIZE_WORKER_CUSTOM_MODELS=json.dumps(custom),
        # models.allowed defaults to the configured models: these two are named by tasks only
        VECTORIZE_WORKER_MODELS_ALLOWED="bert-base-uncased,roberta-base",
        VECTORIZE_WORKER_MAX_LOADED_MODELS="2",
        VECTORIZE_WORKER_MODELS_MEMORY_BUDGET="1GiB",
        VECTORIZE_WORKER_INCLUDE_VECTORS="true",
        VECTORIZE_WORKER_IMAGES_ALLOWED_ROOTS=str(images),
        VECTORIZE_WORKER_IMAGES_ALLOW_URLS="true",
        VECTORIZE_WORKER_IMAGES_ALLOW_PRIVATE_URLS="true",
    ).start()
    try:
        worker.wait_for_log(r"Model sentence-transformers/all-MiniLM-L6-v2 loaded successfully", timeout=180)
        worker.wait_ready()
        run(produce(topics.tasks, [json.dumps(t).encode() for t in tasks]))
        records = run(
            collect([topics.results, topics.dlq], lambda r: len(r[topics.results]) >= len(tasks), timeout=240)
        )
        status, loaded = worker.get("/models")
        assert worker.stop() == 0
    finally:
        worker.kill()
    from models.device import call_plan

    # models.parallel_calls auto, as this machine resolves it (two one-thread calls on two cores)
    assert (loaded["parallel_calls"], loaded["threads_per_call"]) == call_plan("cpu", 0)
    results = {r["task_id"]: r for r in records[topics.results]}
    expected = {"hf": ("transformers", 32), "clip": ("clip", 16), "custom": ("transformers", 32), "st": (None, 384)}
    expected |= {"batch-rob": ("transformers", 32), "doc-bert": ("transformers", 32)}
    expected |= {f"img-{form}": ("clip", 16) for form in ("path", "b64", "uri", "url")}
    for task_id, (_, dim) in expected.items():
        assert results[task_id]["status"] == "completed", results[task_id]
        assert results[task_id]["dimension"] == dim
    missing = results["missing"]
    assert missing["status"] == "failed"
    assert "Failed to load model roberta-base: not found in" in missing["error"]["message"]
    assert [d["task_id"] for d in records[topics.dlq]] == ["missing"]
    names = [m["name"] for m in loaded["loaded"]]
    assert status == 200 and 1 <= len(names) <= 2  # max_loaded_models=2 across four models
    assert set(names) <= {"bert-base-uncased", "ViT-B/32", "my-roberta", "sentence-transformers/all-MiniLM-L6-v2"}

    # the worker's vectors equal the same models loaded here
    load = make_loader(device="cpu", cache_dir=str(cache), allow_download=False)
    for task in tasks[:2]:
        texts = task["data"] if isinstance(task["data"], list) else [task["data"]]
        mine = load(task["model_name"]).embed_texts(texts, batch_size=8, normalize=None)
        for got, want in zip(results[task["task_id"]]["vectors"], mine, strict=True):
            assert cos(np.asarray(got), want) >= 0.999
    assert abs(float(np.linalg.norm(results["custom"]["vectors"][0])) - 1.0) < 1e-4  # the entry's normalize

    # a document longer than the tiny BERT's 64 positions is chunked, plus its document vector
    doc = results["doc-bert"]
    assert doc["chunks"] >= 2 and doc["count"] == doc["chunks"] + 1
    # the same photo by path, base64, data URI and URL: one vector, equal to CLIP's own embedding of it
    clip = load("ViT-B/32")
    with Image.open(picture) as im:
        want = clip.embed_images([im.convert("RGB")], batch_size=1, normalize=None)[0]
    for form in ("path", "b64", "uri", "url"):
        got = np.asarray(results[f"img-{form}"]["vectors"][0])
        assert cos(got, want) >= 0.9999, form
