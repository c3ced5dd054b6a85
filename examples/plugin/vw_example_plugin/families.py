"""The ``hashing`` model family: signed feature hashing of tokens, L2-normalised. No weights, no downloads.

Each token (a run of letters or digits, lower-cased; each CJK ideograph alone)
adds +1 or -1 to one of ``dim`` components, both chosen by a BLAKE2b hash of
the token, so the same text gives the same vector in every process and on
every machine. Texts sharing words get nearby vectors; nothing more is
learned. Useful for tests and as a template for a real family.

A custom model entry selects it (``dim`` is this family's own key)::

    models:
      sentence_transformers:
        - {name: hashing-256, family: hashing, dim: 256}
        - {name: hashing-64-short, family: hashing, dim: 64, max_length: 128, normalize: false}

``max_length`` is the tokens one input takes (512 by default; a longer text is
refused unless the task says ``long_text: truncate``, and documents are cut
into chunks of that many tokens); ``normalize`` is the default when a task
does not say (true here).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import ModelLoadError
from models.base import Embedder, EmbedderInfo, ModelFamily, ModelSpec, l2_normalize

FAMILY = "hashing"
DEFAULT_DIM = 256
MAX_DIM = 65_536
DEFAULT_MAX_TOKENS = 512
#: part of the vectors' identity (the embedding cache's key): change it when the hashing changes
ALGORITHM = "blake2b64-signed-v1"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class HashingTokenizer:
    """The family's tokenizer (the :class:`models.tokenizers.TextTokenizer` contract): no special tokens."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in TOKEN.finditer(text)]

    def count(self, text: str) -> int:
        return sum(1 for _ in TOKEN.finditer(text))

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (cut at ``max_tokens``), for batching by length."""
        return [min(self.count(text), self.max_tokens) for text in texts]

    def tokens(self, text: str) -> list[str]:
        """The first ``max_tokens`` tokens, lower-cased: what a vector is made of."""
        found = []
        for match in TOKEN.finditer(text):
            if len(found) == self.max_tokens:
                break
            found.append(match.group(0).lower())
        return found


class HashingEmbedder(Embedder):
    """Signed feature hashing behind the worker's :class:`~models.base.Embedder` port."""

    def __init__(self, name: str, *, dim: int, max_tokens: int, normalize_default: bool | None) -> None:
        self._tokenizer = HashingTokenizer(max_tokens)
        self._normalize_default = True if normalize_default is None else normalize_default
        self._info = EmbedderInfo(
            name=name,
            family=FAMILY,
            dim=dim,
            device="cpu",  # numpy: whatever device the worker uses
            modalities=("text",),
            max_batch=1024,
            max_tokens=max_tokens,
            source=f"vw_example_plugin ({ALGORITHM}, no weights)",
            backend="numpy",
        )

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        dim = self._info.dim
        vectors = np.zeros((len(texts), dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in self._tokenizer.tokens(text):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % dim
                vectors[row, index] += 1.0 if digest[4] & 1 else -1.0
        if normalize is None:
            normalize = self._normalize_default
        return l2_normalize(vectors) if normalize else vectors

    def text_tokenizer(self) -> HashingTokenizer:
        return self._tokenizer

    def vector_settings(self) -> dict[str, Any]:
        return {**super().vector_settings(), "algorithm": ALGORITHM, "normalize_default": self._normalize_default}


class HashingFamily(ModelFamily):
    """Registered as ``hashing`` (entry-point group ``vectorize_worker.model_families``)."""

    def check(self, spec: ModelSpec) -> None:
        unknown = sorted(set(spec.options) - {"dim"})
        if unknown:
            raise ValueError(
                f"the {FAMILY} family has no option {', '.join(map(repr, unknown))}; it takes dim "
                f"(1 to {MAX_DIM}, default {DEFAULT_DIM}) besides name, max_length and normalize"
            )
        dim = spec.options.get("dim", DEFAULT_DIM)
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise ValueError(f"dim must be a whole number from 1 to {MAX_DIM}, not {dim!r}")
        if spec.path is not None:
            raise ValueError(f"the {FAMILY} family reads no files; remove path")

    def load(self, spec: ModelSpec) -> HashingEmbedder:
        try:
            self.check(spec)
        except ValueError as exc:
            raise ModelLoadError(
                f"Failed to load model {spec.name}: {exc}; fix its entry under models.sentence_transformers "
                "(VECTORIZE_WORKER_CUSTOM_MODELS)."
            ) from None
        return HashingEmbedder(
            spec.name,
            dim=int(spec.options.get("dim", DEFAULT_DIM)),
            max_tokens=spec.max_length or DEFAULT_MAX_TOKENS,
            normalize_default=spec.normalize,
        )

    def size_hint(self, spec: ModelSpec) -> int | None:
        return 0  # holds no weights
