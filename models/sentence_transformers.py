"""The sentence-transformers model family."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import ModelLoadError
from models.base import EmbedderInfo, TorchEmbedder, as_tensor, l2_normalize
from models.onnx_runtime import OnnxUnavailable
from models.resolve import downloads_allowed, local_model_dir, missing_model_error
from models.tokenizers import HFTextTokenizer, TextTokenizer

log = logging.getLogger("worker.model_manager")
FAMILY = "sentence-transformers"


class SentenceTransformerEmbedder(TorchEmbedder):
    """A :class:`sentence_transformers.SentenceTransformer` behind the Embedder port.

    ``normalize_default`` applies when a task does not say (``normalize`` None);
    a custom model entry may set it.
    """

    def __init__(
        self, name: str, model: Any, device: str, source: str, *, normalize_default: bool | None = None
    ) -> None:
        self._model = model
        self._normalize_default = normalize_default
        self._tokenizer: TextTokenizer | None = None
        # calls on several threads share the tokenizer, whose Rust side refuses two calls at once ("Already
        # borrowed"): tokenizing takes turns, the transformer runs concurrently
        self._tokenize_lock = threading.Lock()
        self._info = EmbedderInfo(
            name=name,
            family=FAMILY,
            dim=_dimension(model),
            device=device,
            modalities=("text",),
            max_tokens=int(getattr(model, "max_seq_length", 512) or 512),
            source=source,
        )

    @property
    def concurrent_calls(self) -> bool:  # type: ignore[override]
        """When an engine's encoder runs the transformer (this class tokenizes, under its lock); ``encode`` (a
        model loaded without an engine choice) tokenizes inside sentence-transformers, where no lock reaches."""
        return self._runner() is not None

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        vectors = self._embed_with(texts, batch_size, self._runner())
        if normalize is None:
            normalize = self._normalize_default
        return l2_normalize(vectors) if normalize else vectors

    def _embed_with(self, texts: Sequence[str], batch_size: int, encoder: Any) -> np.ndarray:
        if encoder is not None:
            return self._embed_encoder(encoder, texts, batch_size)
        vectors = self._model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def _embed_encoder(self, encoder: Any, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """The model's own preprocessing, its transformer in another engine (models/engines.py: ONNX Runtime,
        a bfloat16/float16 copy), its other modules (pooling, dense, normalize) in torch float32 on the token
        states."""
        import torch

        out = np.empty((len(texts), self._info.dim), dtype=np.float32)
        # longest first, as encode() does: batches of similar length pad less (rows go back to input order)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        step = max(1, int(batch_size))
        tail = list(self._model)[1:]
        device = self._info.device
        # sentence-transformers >= 5 names it preprocess (tokenize is its deprecated alias)
        preprocess = getattr(self._model, "preprocess", None) or self._model.tokenize
        with torch.inference_mode():
            for start in range(0, len(order), step):
                index = order[start : start + step]
                with self._tokenize_lock:
                    features = dict(preprocess([texts[i] for i in index]))
                if device != "cpu":  # a torch engine on a GPU; ONNX Runtime runs on the CPU only
                    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
                features["token_embeddings"] = as_tensor(encoder(features))
                for module in tail:
                    features = module(features)
                out[index] = features["sentence_embedding"].float().cpu().numpy()
        return out

    def _onnx_parts(self) -> tuple[Any, Any]:
        first = self._model[0]
        transformer = getattr(first, "auto_model", None)
        if transformer is None or len(self._model) < 2:
            raise OnnxUnavailable(f"its first module is {type(first).__name__}, not a transformers model")
        return transformer, self._model.tokenizer

    def text_tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = HFTextTokenizer(self._model.tokenizer, self._info.max_tokens, model=self._info.name)
        return self._tokenizer


def _length_limit(model: Any) -> int | None:
    """The most tokens the underlying transformer takes (None when it cannot be told)."""
    from models.hf_transformers import model_max_length

    first = model[0] if len(model) else None
    config = getattr(getattr(first, "auto_model", None), "config", None)
    # the position embeddings, not the tokenizer's model_max_length: sentence-transformers sets that to max_seq_length
    return model_max_length(None, config) if config is not None else None


def _dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def load_sentence_transformer(
    name: str,
    *,
    device: str,
    cache_dir: str | None,
    allow_download: bool,
    path: str | None = None,
    max_length: int | None = None,
    normalize: bool | None = None,
    backend: str = "auto",
) -> SentenceTransformerEmbedder:
    """Load ``name`` (or the directory ``path``) offline when possible; raise :class:`ModelLoadError` with what to do.

    Blocks while reading the weights (seconds) and, the first time on a CPU
    with ``backend`` auto/onnx, while exporting the transformer to ONNX (about
    a second for all-MiniLM-L6-v2) and, under ``auto``, while measuring the
    engines the first time on this machine (models/engines.py); downloads only when ``allow_download``
    and ``HF_HUB_OFFLINE`` is not set.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ModelLoadError(
            f"Failed to load model {name}: sentence-transformers is not installed ({exc}); "
            "pip install sentence-transformers"
        ) from None
    local = local_model_dir(path or name, cache_dir)
    if path is not None and local is None:
        raise ModelLoadError(
            f"Failed to load model {name}: its configured path {path} does not exist or is empty; "
            "fix the path of this entry under models.sentence_transformers (VECTORIZE_WORKER_CUSTOM_MODELS)."
        )
    offline = not downloads_allowed(allow_download)
    try:
        if local is not None:
            model = SentenceTransformer(str(local), device=device)
            source = str(local)
        else:
            model = SentenceTransformer(
                name, device=device, cache_folder=str(cache_dir) if cache_dir else None, local_files_only=offline
            )
            source = f"huggingface:{name}"
    except (OSError, ValueError) as exc:
        raise missing_model_error(path or name, cache_dir, allow_download=allow_download, exc=exc) from None
    if max_length is not None:
        limit = _length_limit(model)
        if limit is not None and max_length > limit:
            raise ModelLoadError(
                f"Failed to load model {name}: max_length {max_length} is more than the model's limit of {limit} "
                "tokens; lower max_length in its models.sentence_transformers entry."
            )
        model.max_seq_length = int(max_length)
    embedder = SentenceTransformerEmbedder(name, model, device, source, normalize_default=normalize)
    embedder.select_engine(backend, cache_dir)
    log.info("Model %s loaded successfully from %s on %s (engine %s)", name, source, device, embedder.info.engine)
    return embedder
