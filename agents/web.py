"""Web views on Faust's port (6066): nearest-neighbour search over the worker's store.

``GET /search/?q=TEXT&k=5[&collection=NAME][&model=NAME]`` embeds ``q`` with
the worker's model and returns the nearest stored records, nearest first.
It lets you query a store that only the worker can open (Qdrant local mode).
"""

from __future__ import annotations

from typing import Any

from agents.intake import runtime
from app.errors import VectorizeError
from app.faust_app import app, settings


@app.page("/search/")
async def search(web: Any, request: Any) -> Any:
    rt = runtime()
    if rt.pipeline is None or rt.manager is None or not rt.stores:
        return web.json({"error": "worker is starting; try again in a few seconds"}, status=503)
    query = request.query.get("q", "").strip()
    if not query:
        return web.json({"error": "missing query parameter q, e.g. /search/?q=hello&k=5"}, status=400)
    try:
        k = max(1, min(100, int(request.query.get("k", "5"))))
    except ValueError:
        return web.json({"error": "k must be a whole number between 1 and 100"}, status=400)
    model = request.query.get("model") or settings.default_model
    collection = request.query.get("collection") or settings.default_collection
    store = rt.stores[0]
    try:
        vectors, info = await rt.manager.embed_texts(model, [query], batch_size=1, normalize=None)
        hits = await rt.pipeline.in_store_thread(lambda: store.search(collection, vectors[0].tolist(), k=k))
    except VectorizeError as exc:
        return web.json({"error": str(exc), "kind": exc.kind}, status=422)
    return web.json(
        {
            "query": query,
            "model": info.name,
            "collection": collection,
            "store": store.describe(),
            "hits": [
                {
                    "id": h.id,
                    "score": h.score,
                    "text": h.payload.get("text"),
                    "task_id": h.payload.get("task_id"),
                    "metadata": h.payload.get("metadata"),
                }
                for h in hits
            ],
        }
    )
