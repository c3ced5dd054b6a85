"""The Hugging Face transformers family: AutoTokenizer + AutoModel with mean or CLS pooling."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import ModelLoadError
from models.base import EmbedderInfo, TorchEmbedder, as_tensor, l2_normalize
from models.resolve import (
    downloads_allowed,
    first_line,
    hf_cached_snapshot,
    local_model_dir,
    missing_model_error,
)
from models.tokenizers import HFTextTokenizer, TextTokenizer

log = logging.getLogger("worker.model_manager")
FAMILY = "transformers"
Pooling = Literal["mean", "cls"]

#: the product documentation's names and the hub ids they moved to (both are looked up)
HF_ALIASES: dict[str, str] = {
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
}
#: position embeddings that start after the padding index (max_position_embeddings - pad_token_id - 1 usable)
_PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod")


class HFTransformerEmbedder(TorchEmbedder):
    """An ``AutoModel`` whose token states are pooled into one vector per text.

    ``pooling="mean"`` averages the token states weighted by the attention
    mask (padding never counts); ``"cls"`` takes the first token's state.
    Texts longer than ``max_length`` tokens are truncated by the tokenizer; use
    :meth:`text_tokenizer` to find them first.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        source: str,
        pooling: Pooling = "mean",
        max_length: int,
        normalize_default: bool | None = None,
    ) -> None:
        self._model = model
        self._tok = tokenizer
        # calls on several threads share the tokenizer, whose Rust side refuses two calls at once ("Already
        # borrowed"): tokenizing takes turns, the model runs concurrently
        self._tokenize_lock = threading.Lock()
        self.pooling = pooling
        self.max_length = max_length
        self._normalize_default = normalize_default
        self._text_tokenizer: TextTokenizer | None = None
        self._info = EmbedderInfo(
            name=name,
            family=FAMILY,
            dim=int(model.config.hidden_size),
            device=device,
            modalities=("text",),
            max_tokens=max_length,
            source=source,
        )

    concurrent_calls = True  # tokenizing takes turns under a lock; torch and ONNX Runtime run calls concurrently

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        out = self._embed_with(texts, batch_size, self._runner())
        if normalize is None:
            normalize = self._normalize_default
        return l2_normalize(out) if normalize else out

    def _embed_with(self, texts: Sequence[str], batch_size: int, encoder: Any) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self._info.dim), dtype=np.float32)
        # longest first: batches of similar length waste less padding (rows go back to input order)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        step = max(1, int(batch_size))
        with torch.inference_mode():
            for start in range(0, len(order), step):
                index = order[start : start + step]
                out[index] = self._embed_batch([texts[i] for i in index], encoder)
        return out

    def _embed_batch(self, texts: list[str], encoder: Any) -> np.ndarray:

        with self._tokenize_lock:
            batch = self._tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self._info.device) for k, v in batch.items()}
        if encoder is None:
            states = self._model(**batch).last_hidden_state
        else:  # another engine (models/engines.py): ONNX Runtime returns arrays (CPU only), torch ones tensors
            states = as_tensor(encoder(batch))
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return pooled.float().cpu().numpy()

    def _onnx_parts(self) -> tuple[Any, Any]:
        return self._model, self._tok

    def text_tokenizer(self) -> TextTokenizer:
        if self._text_tokenizer is None:
            self._text_tokenizer = HFTextTokenizer(self._tok, self.max_length, model=self._info.name)
        return self._text_tokenizer


def model_max_length(tokenizer: Any, config: Any) -> int:
    """Tokens one input may hold: the tokenizer's limit and the position embeddings', whichever is lower."""
    limits: list[int] = []
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 1_000_000:
        limits.append(declared)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        pad = getattr(config, "pad_token_id", None)
        offset = pad + 1 if getattr(config, "model_type", "") in _PADDING_OFFSET_TYPES and pad is not None else 0
        limits.append(positions - offset)
    return min(limits) if limits else 512


def repo_id(name: str) -> str:
    """``hf:bert-base-uncased`` / ``transformers:org/model`` -> the bare Hugging Face id."""
    for prefix in ("hf:", "transformers:"):
        if name.lower().startswith(prefix):
            return name[len(prefix) :]
    return name


def load_hf_transformer(
    name: str,
    *,
    device: str,
    cache_dir: str | None,
    allow_download: bool,
    path: str | None = None,
    pooling: Pooling = "mean",
    max_length: int | None = None,
    normalize: bool | None = None,
    backend: str = "auto",
) -> HFTransformerEmbedder:
    """Load a transformers model offline first; raise :class:`ModelLoadError` naming where we looked.

    Looks in: ``path`` (a custom entry's) or the name as a path;
    ``models.cache_dir/<name>`` (``/`` may be ``__``); the Hugging Face cache;
    then downloads into ``cache_dir`` when allowed. Blocks while reading the
    weights (and choosing its engine, see ``backend`` and models/engines.py).
    """
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ModelLoadError(
            f"Failed to load model {name}: transformers is not installed ({exc}); pip install transformers"
        ) from None
    repo = repo_id(path or name)
    alias = HF_ALIASES.get(repo)
    extra = [alias] if alias else []
    local = local_model_dir(repo, cache_dir, marker="config.json", extra=extra)
    if local is None and path is None:
        local = next((p for p in (hf_cached_snapshot(r, cache_dir) for r in [repo, *extra]) if p), None)
    if local is None and (path is not None or not downloads_allowed(allow_download)):
        if path is not None:
            raise ModelLoadError(
                f"Failed to load model {name}: its configured path {path} holds no config.json; fix the path of "
                "this entry under models.sentence_transformers, or save the model there with save_pretrained()."
            )
        raise missing_model_error(repo, cache_dir, allow_download=allow_download, extra=extra)
    source = str(local) if local is not None else f"huggingface:{repo}"
    kwargs: dict[str, Any] = (
        {"local_files_only": True} if local is not None else {"cache_dir": cache_dir, "local_files_only": False}
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local or repo), **kwargs)
        model = AutoModel.from_pretrained(str(local or repo), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if local is None:
            raise missing_model_error(repo, cache_dir, allow_download=allow_download, exc=exc, extra=extra) from None
        raise ModelLoadError(
            f"Failed to load model {name} from {local}: {type(exc).__name__}: {first_line(exc)}. The folder must "
            "hold a transformers model and its tokenizer (config.json, weights, tokenizer files), as written by "
            "save_pretrained()."
        ) from None
    if tokenizer.pad_token is None:  # GPT-style tokenizers: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    limit = model_max_length(tokenizer, model.config)
    if max_length is not None and max_length > limit:
        raise ModelLoadError(
            f"Failed to load model {name}: max_length {max_length} is more than the model's limit of {limit} "
            "tokens; lower max_length in its models.sentence_transformers entry."
        )
    model.to(device).eval()
    embedder = HFTransformerEmbedder(
        name,
        model,
        tokenizer,
        device=device,
        source=str(Path(source)) if local is not None else source,
        pooling=pooling,
        max_length=max_length or limit,
        normalize_default=normalize,
    )
    embedder.select_engine(backend, cache_dir)
    log.info(
        "Model %s loaded successfully from %s on %s (%s pooling, engine %s)",
        name,
        source,
        device,
        pooling,
        embedder.info.engine,
    )
    return embedder
