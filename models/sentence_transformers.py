"""The sentence-transformers model family."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelLoadError
from models.base import Embedder, EmbedderInfo, l2_normalize
from models.resolve import local_model_dir, places_searched

log = logging.getLogger("worker.model_manager")
FAMILY = "sentence-transformers"


class SentenceTransformerEmbedder(Embedder):
    """A :class:`sentence_transformers.SentenceTransformer` behind the Embedder port."""

    def __init__(self, name: str, model: Any, device: str, source: str) -> None:
        self._model = model
        dim = _dimension(model)
        self._info = EmbedderInfo(
            name=name,
            family=FAMILY,
            dim=dim,
            device=device,
            modalities=("text",),
            max_tokens=int(getattr(model, "max_seq_length", 512) or 512),
            source=source,
        )

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        vectors = self._model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        vectors = np.asarray(vectors, dtype=np.float32)
        return l2_normalize(vectors) if normalize else vectors

    def text_tokenizer(self) -> TextTokenizer:
        """Token counts and character offsets as this model's tokenizer sees them (for chunking)."""
        return TextTokenizer(self._model.tokenizer, self._info.max_tokens)

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self._model.parameters())

    def close(self) -> None:
        self._model = None


class TextTokenizer:
    """A Hugging Face tokenizer seen as content tokens: ``count``, ``offsets`` and ``max_tokens``.

    ``max_tokens`` is how many content tokens fit the model: its maximum
    sequence length minus the special tokens (``[CLS]``/``[SEP]``) it adds.
    Both methods block (tokenisation) and should run on the model's thread.
    """

    def __init__(self, tokenizer: Any, max_seq_length: int) -> None:
        self._tokenizer = tokenizer
        self.max_tokens = max(1, int(max_seq_length) - int(tokenizer.num_special_tokens_to_add(pair=False)))

    def count(self, text: str) -> int:
        return len(self._encode(text, offsets=False)["input_ids"])

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span ``(start, end)`` of each content token, in order."""
        return [(int(a), int(b)) for a, b in self._encode(text, offsets=True)["offset_mapping"]]

    def _encode(self, text: str, *, offsets: bool) -> Any:
        # verbose=False: no "sequence longer than the maximum" warning, counting long texts is the point
        return self._tokenizer(
            text, add_special_tokens=False, truncation=False, return_offsets_mapping=offsets, verbose=False
        )


def _dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def load_sentence_transformer(
    name: str, *, device: str, cache_dir: str | None, allow_download: bool
) -> SentenceTransformerEmbedder:
    """Load ``name`` offline when possible; raise :class:`ModelLoadError` with what to do."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ModelLoadError(
            f"Failed to load model {name}: sentence-transformers is not installed ({exc}); "
            "pip install sentence-transformers"
        ) from None
    local = local_model_dir(name, cache_dir)
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        if local is not None:
            model = SentenceTransformer(str(local), device=device)
            source = str(local)
        else:
            model = SentenceTransformer(
                name, device=device, cache_folder=_cache_folder(cache_dir), local_files_only=offline
            )
            source = f"huggingface:{name}"
    except (OSError, ValueError) as exc:
        hint = (
            "downloads are off (VECTORIZE_WORKER_MODELS_ALLOW_DOWNLOAD=false or HF_HUB_OFFLINE=1)"
            if offline
            else "the download from the Hugging Face hub failed (check the network and the model name)"
        )
        raise ModelLoadError(
            f"Failed to load model {name}: not found in {places_searched(name, cache_dir)}, and {hint}. "
            f"Put the model's files in {Path(cache_dir or './.state/models') / name} or send a local path as model_name. "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    log.info("Model %s loaded successfully from %s on %s", name, source, device)
    return SentenceTransformerEmbedder(name, model, device, source)


def _cache_folder(cache_dir: str | None) -> str | None:
    return str(Path(cache_dir).expanduser()) if cache_dir else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
