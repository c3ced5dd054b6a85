"""Token counting for the document chunker: :class:`TextTokenizer` and its implementations.

A chunker needs three things from a model's tokenizer: how many tokens a text
takes, where each token sits in the text (character spans, so chunks can be
cut at token boundaries and keep their offsets), and how many content tokens
fit into one model call. Special tokens ([CLS], [SEP], <s>, CLIP's start and
end markers) are never counted: ``max_tokens`` already leaves room for them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from core.errors import UnsupportedTaskError


@runtime_checkable
class TextTokenizer(Protocol):
    """The contract of :meth:`models.base.Embedder.text_tokenizer`.

    * ``max_tokens`` — content tokens that fit into one model input (the
      model's maximum sequence length minus its special tokens).
    * ``count(text)`` — content tokens of ``text`` (no special tokens, no
      truncation), so ``count(text) <= max_tokens`` means the model sees all of it.
    * ``offsets(text)`` — one ``(start, end)`` character span per content
      token, in order; ``len(offsets(text)) == count(text)``. Spans never
      overlap and ``text[start:end]`` is the token's text (for sub-word
      tokens a part of a word; whitespace between tokens is in no span).

    Both methods are pure CPU work, thread-safe for reading, and raise nothing
    for any ``str`` input (an empty text has 0 tokens).
    """

    max_tokens: int

    def count(self, text: str) -> int: ...

    def offsets(self, text: str) -> list[tuple[int, int]]: ...


class HFTextTokenizer:
    """A Hugging Face *fast* tokenizer (sentence-transformers and transformers families)."""

    def __init__(self, tokenizer: Any, max_length: int, *, model: str) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UnsupportedTaskError(
                f"Model {model} has a slow (Python) tokenizer that cannot report token offsets; "
                "token-aware chunking needs a fast tokenizer (tokenizer.json). Save the model with a fast tokenizer "
                "or use another model for documents."
            )
        self._tok = tokenizer
        special = int(tokenizer.num_special_tokens_to_add(pair=False))
        self.max_tokens = max(1, int(max_length) - special)
        self._max_length = self.max_tokens + special
        # A private copy for lengths(), count() and offsets(): a Rust tokenizer call sets its truncation and
        # padding state, so two threads must never share one ("Already borrowed"). The model keeps its own for its
        # calls; this copy serves the tokenizer thread (lengths) and the device threads (chunking) in turns.
        self._counter = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees it: special tokens included, truncated at the model's limit.

        One batched call into the Rust tokenizer (about 10 µs per short text),
        on a copy of the tokenizer (under a lock, shared with :meth:`offsets`):
        safe on other threads while the model works.
        """
        if not texts:
            return []
        with self._lock:
            encoded = self._counter(list(texts), truncation=True, max_length=self._max_length, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _encode(self, text: str) -> Any:
        # verbose=False: a long document is expected here, not a mistake worth a warning
        with self._lock:
            return self._counter(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._encode(text)["input_ids"])

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [(int(s), int(e)) for s, e in self._encode(text)["offset_mapping"]]


class ClipTextTokenizer:
    """open_clip's :class:`SimpleTokenizer` (byte-level BPE, lower-cased, 77 tokens with 2 special).

    ``offsets`` replays the tokenizer's own word pattern and BPE on the original
    text, so the spans point into the text as sent (the tokenizer itself
    lower-cases and cleans a copy and keeps no offsets).
    """

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self._tok = tokenizer
        self.max_tokens = max(1, int(context_length) - 2)

    def count(self, text: str) -> int:
        return len(self.offsets(text))

    def offsets(self, text: str) -> list[tuple[int, int]]:
        tok = self._tok
        spans: list[tuple[int, int]] = []
        for match in tok.pat.finditer(text):
            word = match.group(0)
            encoded = word.lower().encode("utf-8")
            if len(encoded) != len(word.encode("utf-8")):
                encoded = word.encode("utf-8")  # lower() changed the length: keep byte positions true
            byte_to_char = _byte_to_char(word)
            unicode_word = "".join(tok.byte_encoder[b] for b in encoded)
            position = 0
            for piece in tok.bpe(unicode_word).split(" "):
                size = len(piece.removesuffix("</w>"))
                if size == 0:
                    continue
                first = byte_to_char[min(position, len(byte_to_char) - 1)]
                last = byte_to_char[min(position + size - 1, len(byte_to_char) - 1)]
                start = match.start() + first
                end = match.start() + last + 1
                if spans and start < spans[-1][1]:  # a character split across two tokens
                    start = spans[-1][1]
                spans.append((start, max(start, end)))
                position += size
        return spans


def _byte_to_char(word: str) -> list[int]:
    """Index of the character each UTF-8 byte of ``word`` belongs to."""
    out: list[int] = []
    for index, char in enumerate(word):
        out.extend([index] * len(char.encode("utf-8")))
    return out


def open_clip_text_tokenizer(tokenizer: Any, context_length: int, *, model: str) -> TextTokenizer:
    """The right :class:`TextTokenizer` for an open_clip tokenizer object."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip.HFTokenizer wraps a transformers tokenizer
    if inner is not None and getattr(inner, "is_fast", False):
        hf = HFTextTokenizer(inner, context_length, model=model)
        return hf
    if hasattr(tokenizer, "bpe") and hasattr(tokenizer, "pat"):
        return ClipTextTokenizer(tokenizer, context_length)
    raise UnsupportedTaskError(
        f"Model {model}: its open_clip tokenizer ({type(tokenizer).__name__}) cannot report token offsets, "
        "so documents cannot be chunked with it; use a CLIP model with the default or a Hugging Face fast tokenizer."
    )
