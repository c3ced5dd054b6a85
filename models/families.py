"""Pick the model family for a name and build the manager's loader."""

from __future__ import annotations

from collections.abc import Callable

from app.errors import UnsupportedTaskError
from models.base import Embedder

#: OpenAI CLIP names of the product documentation (served by open_clip later)
CLIP_NAMES = ("ViT-B/32", "ViT-B/16", "ViT-L/14")


def family_of(name: str) -> str:
    if name in CLIP_NAMES or name.lower().startswith(("clip:", "open_clip:")):
        return "clip"
    return "sentence-transformers"


def make_loader(*, device: str, cache_dir: str | None, allow_download: bool) -> Callable[[str], Embedder]:
    """A loader for :class:`~models.manager.ModelManager` that dispatches on the family."""

    def load(name: str) -> Embedder:
        family = family_of(name)
        if family == "clip":
            raise UnsupportedTaskError(
                f"Model {name} is a CLIP image model: image models not available yet in this worker version; "
                "send text tasks, or upgrade when CLIP support lands."
            )
        from models.sentence_transformers import load_sentence_transformer

        return load_sentence_transformer(name, device=device, cache_dir=cache_dir, allow_download=allow_download)

    return load
