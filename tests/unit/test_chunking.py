"""Token-aware chunking and long-text policy with the real all-MiniLM-L6-v2 tokenizer (packaged, offline)."""

from __future__ import annotations

import random

import pytest

from core.errors import PermanentError
from models.sentence_transformers import SentenceTransformerEmbedder, TextTokenizer, load_sentence_transformer
from tasks.chunking import Chunk, TextTooLongError, chunk_text, fit_text, surely_fits

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WORDS = (
    "the a of river mountain quickly unbelievable tokenization café naïve coöperate well-known "
    "state-of-the-art 2026 3.14159 internationalisation electroencephalography telescope galaxy "
    "worker vector embedding Kafka partition offset replica throughput latency 東京 數據 данные "
    "photosynthesis antidisestablishmentarianism don't O'Neill e-mail U.S.A. #hashtag @mention"
).split()


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return load_sentence_transformer(MODEL, device="cpu", cache_dir=None, allow_download=False)


@pytest.fixture(scope="module")
def tokenizer(embedder: SentenceTransformerEmbedder) -> TextTokenizer:
    return embedder.text_tokenizer()


def document(words: int, seed: int = 5) -> str:
    """Sentences and paragraphs of varied words, punctuation and scripts, exactly ``words`` words long."""
    rng = random.Random(seed)
    out: list[str] = []
    sentence: list[str] = []
    for i in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(6, 18) or i == words - 1:
            out.append(" ".join(sentence).capitalize() + rng.choice([".", "!", "?", ";", "..."]))
            out.append("\n\n" if rng.random() < 0.15 else " ")
            sentence = []
    return "".join(out)


def check_chunks(content: str, chunks: list[Chunk], tokenizer: TextTokenizer, embedder: object, overlap: int) -> None:
    hf = embedder._model.tokenizer  # type: ignore[attr-defined]
    model_limit = embedder._model.max_seq_length  # type: ignore[attr-defined]
    spans = tokenizer.offsets(content)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert content[chunk.char_start : chunk.char_end] == chunk.text  # an exact substring
        assert chunk.token_count == tokenizer.count(chunk.text) <= tokenizer.max_tokens
        assert len(hf(chunk.text)["input_ids"]) <= model_limit  # fits the model, [CLS] and [SEP] included
        assert (chunk.char_start, chunk.char_end) == (spans[chunk.token_start][0], spans[chunk.token_end - 1][1])
    # in order, overlapping by exactly `overlap` tokens, covering every token of the content
    assert chunks[0].token_start == 0 and chunks[-1].token_end == len(spans)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.token_start == prev.token_end - overlap
        assert prev.char_start < nxt.char_start < prev.char_end or overlap == 0
    covered = sorted({i for c in chunks for i in range(c.token_start, c.token_end)})
    assert covered == list(range(len(spans)))
    stitched = chunks[0].text + "".join(
        content[prev.char_end : nxt.char_end] for prev, nxt in zip(chunks, chunks[1:], strict=False)
    )
    assert stitched == content[spans[0][0] : spans[-1][1]]


def test_tokenizer_adapter_counts_content_tokens(tokenizer: TextTokenizer) -> None:
    assert tokenizer.max_tokens == 254  # max_seq_length 256 minus [CLS] and [SEP]
    text = "Tokenization of naïve text"
    spans = tokenizer.offsets(text)
    assert len(spans) == tokenizer.count(text) > 4  # sub-word pieces
    assert [text[a:b] for a, b in spans][:2] == ["Token", "ization"]


def test_token_lengths_are_what_the_model_sees(embedder: SentenceTransformerEmbedder) -> None:
    hf = embedder._model.tokenizer
    texts = ["Tokenization of naïve text", "", "word " * 1000, "東京 數據"]
    lengths = embedder.token_lengths(texts)
    assert lengths is not None
    assert lengths[0] == len(hf(texts[0])["input_ids"]) == embedder.text_tokenizer().count(texts[0]) + 2
    assert lengths[1] == 2  # [CLS] [SEP]
    assert lengths[2] == 256  # cut at max_seq_length, as the model cuts it
    assert lengths[3] == len(hf(texts[3])["input_ids"])
    assert embedder.token_lengths([]) == []


def test_twenty_thousand_word_document_chunks_fit_overlap_and_cover(
    tokenizer: TextTokenizer, embedder: SentenceTransformerEmbedder
) -> None:
    content = document(20_000)
    assert len(content.split()) == 20_000
    chunks = chunk_text(content, tokenizer, size=tokenizer.max_tokens, overlap=32)
    assert len(chunks) > 100
    check_chunks(content, chunks, tokenizer, embedder, overlap=32)
    assert max(c.token_end - c.token_start for c in chunks) == tokenizer.max_tokens


@pytest.mark.parametrize(("size", "overlap"), [(100, 10), (64, 0), (300, 63)])
def test_configured_size_and_overlap(
    tokenizer: TextTokenizer, embedder: SentenceTransformerEmbedder, size: int, overlap: int
) -> None:
    content = document(2_000, seed=size)
    chunks = chunk_text(content, tokenizer, size=size, overlap=overlap)
    check_chunks(content, chunks, tokenizer, embedder, overlap=overlap)
    # a size over the model's limit is capped at it
    assert all(c.token_end - c.token_start <= min(size, tokenizer.max_tokens) for c in chunks)


def test_short_document_is_one_chunk_and_cjk_offsets_are_exact(tokenizer: TextTokenizer) -> None:
    content = "  文档内容：东京的数据中心。 Données naïves.  "
    [chunk] = chunk_text(content, tokenizer, size=254, overlap=32)
    assert chunk.text == content.strip() and content[chunk.char_start : chunk.char_end] == chunk.text


def test_bad_overlap_and_empty_content(tokenizer: TextTokenizer) -> None:
    with pytest.raises(PermanentError, match=r"chunk_overlap_tokens \(64\) must be smaller than the chunk size \(64"):
        chunk_text("some words here", tokenizer, size=64, overlap=64)
    with pytest.raises(PermanentError, match="has no tokens"):
        chunk_text(" \n\t ", tokenizer, size=64, overlap=8)


def test_long_text_reject_names_the_item_tokens_and_limit(tokenizer: TextTokenizer) -> None:
    text = document(400, seed=9)
    tokens = tokenizer.count(text)
    assert tokens > 254
    with pytest.raises(TextTooLongError) as info:
        fit_text(text, tokenizer, policy="reject", where="Task t7: text item 3 (model m)")
    message = str(info.value)
    assert message.startswith(f"Task t7: text item 3 (model m) is {tokens} tokens, over the model's limit of 254")
    assert "long_text=truncate" in message and "VECTORIZE_WORKER_LONG_TEXT" in message


def test_long_text_truncate_keeps_the_longest_fitting_prefix(
    tokenizer: TextTokenizer, embedder: SentenceTransformerEmbedder
) -> None:
    text = document(400, seed=11)
    cut, truncated = fit_text(text, tokenizer, policy="truncate", where="t")
    assert truncated and text.startswith(cut) and len(cut) < len(text)
    assert tokenizer.count(cut) == 254
    assert len(embedder._model.tokenizer(cut)["input_ids"]) == 256
    short = "A short sentence fits."
    assert surely_fits(short, 254) and fit_text(short, tokenizer, policy="reject", where="t") == (short, False)
    exactly = document(70, seed=3)  # over the quick byte check, under the limit
    assert not surely_fits(exactly, 254) and tokenizer.count(exactly) <= 254
    assert fit_text(exactly, tokenizer, policy="reject", where="t") == (exactly, False)
