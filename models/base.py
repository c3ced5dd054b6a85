"""The :class:`Embedder` port every model family implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbedderInfo:
    name: str  # the name tasks use (e.g. sentence-transformers/all-MiniLM-L6-v2)
    family: str  # sentence-transformers, transformers, clip, ...
    dim: int  # vector dimension
    device: str  # cpu, cuda, cuda:1, mps
    modalities: tuple[str, ...] = ("text",)
    max_batch: int = 256
    max_tokens: int = 512  # the model's maximum sequence length in tokens
    source: str = ""  # where it was loaded from (path or package)


class Embedder(ABC):
    """A loaded model that turns inputs into vectors.

    Every ``embed_*`` method blocks (it runs the model) and must be called from
    a worker thread, never from the event loop. Implementations are not
    required to be thread-safe: the manager runs one model call at a time per
    device. They raise :class:`~app.errors.PermanentError` for inputs they
    cannot handle.
    """

    @property
    @abstractmethod
    def info(self) -> EmbedderInfo: ...

    @abstractmethod
    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim), rows in input order."""

    def embed_images(self, images: Sequence[object], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        from app.errors import UnsupportedTaskError

        raise UnsupportedTaskError(
            f"Model {self.info.name} cannot embed images; use an image model such as a CLIP model."
        )

    def memory_bytes(self) -> int:
        """Approximate memory held by the model's weights."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model's memory; the embedder is unusable afterwards."""


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)
