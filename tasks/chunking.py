"""Token-aware text handling: chunk documents, and fit single texts to a model's limit.

Everything works on the model's own tokenizer, through the small
:class:`TextTokenizer` protocol (``count``, ``offsets``, ``max_tokens``), and
cuts only at token boundaries given by the tokenizer's character offsets, so a
chunk (or a truncated text) is always an exact substring of what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from core.errors import PermanentError


class TextTokenizer(Protocol):
    """What chunking needs from a model's tokenizer (content tokens only, no special tokens)."""

    max_tokens: int  # content tokens that fit the model

    def count(self, text: str) -> int: ...

    def offsets(self, text: str) -> list[tuple[int, int]]: ...


class TextTooLongError(PermanentError):
    """A single text is longer than its model accepts and ``long_text`` is ``reject``."""

    kind = "text_too_long"


@dataclass(frozen=True)
class Chunk:
    index: int
    char_start: int  # content[char_start:char_end] == text
    char_end: int
    text: str
    token_count: int  # content tokens of ``text`` as the model tokenizes it
    token_start: int  # the chunk covers tokens [token_start, token_end) of the whole content
    token_end: int


def chunk_text(content: str, tokenizer: TextTokenizer, *, size: int, overlap: int) -> list[Chunk]:
    """Split ``content`` into chunks of at most ``size`` tokens, consecutive chunks sharing ``overlap`` tokens.

    Every chunk also fits the model when tokenized on its own (at most
    ``tokenizer.max_tokens`` content tokens): a chunk whose text tokenizes
    longer than its span (a cut inside a word) is shortened until it fits.
    Raises :class:`PermanentError` when ``content`` has no tokens or
    ``overlap`` is not smaller than ``size``.
    """
    size = min(size, tokenizer.max_tokens)
    if not 0 <= overlap < size:
        raise PermanentError(
            f"chunk_overlap_tokens ({overlap}) must be smaller than the chunk size ({size} tokens: chunk_tokens "
            "capped at the model's limit); lower VECTORIZE_WORKER_CHUNK_OVERLAP_TOKENS."
        )
    spans = tokenizer.offsets(content)
    if not spans:
        raise PermanentError("the document content has no tokens (only whitespace?); send text to embed.")
    chunks: list[Chunk] = []
    start, total = 0, len(spans)
    while True:
        end = min(start + size, total)
        while True:
            text = content[spans[start][0] : spans[end - 1][1]]
            count = tokenizer.count(text)
            if count <= tokenizer.max_tokens or end - start <= overlap + 1:
                break
            end = max(start + overlap + 1, end - max(1, count - tokenizer.max_tokens))
        chunks.append(Chunk(len(chunks), spans[start][0], spans[end - 1][1], text, count, start, end))
        if end >= total:
            return chunks
        start = end - overlap


def fit_text(
    text: str, tokenizer: TextTokenizer, *, policy: Literal["reject", "truncate"], where: str
) -> tuple[str, bool]:
    """``(text, truncated)``: ``text`` unchanged when it fits the model, else cut or refused per ``policy``.

    ``where`` names the task and item in the refusal. A truncated text is the
    longest prefix ending at a token boundary that fits.
    """
    limit = tokenizer.max_tokens
    if surely_fits(text, limit):
        return text, False
    spans = tokenizer.offsets(text)
    if len(spans) <= limit:
        return text, False
    if policy == "reject":
        raise TextTooLongError(
            f"{where} is {len(spans)} tokens, over the model's limit of {limit} tokens; nothing was stored. "
            "Split the text, send it as a document_vectorization task (chunked), or set long_text=truncate "
            "(YAML processing.long_text, env VECTORIZE_WORKER_LONG_TEXT) to embed only its beginning."
        )
    end = limit
    while True:
        cut = text[: spans[end - 1][1]]
        count = tokenizer.count(cut)
        if count <= limit or end == 1:
            return cut, True
        end = max(1, end - max(1, count - limit))


def surely_fits(text: str, limit: int) -> bool:
    """True when ``text`` cannot be longer than ``limit`` tokens, without tokenizing it.

    A content token covers at least one byte of UTF-8 for WordPiece and
    byte-level BPE; half the limit leaves room for tokenizers that emit a
    separate marker token (SentencePiece's word-start piece).
    """
    return len(text.encode("utf-8")) <= limit // 2
