"""The Hugging Face transformers family with tiny BERT, DistilBERT and RoBERTa models (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelLoadError
from core.model_settings import CustomModel
from models.families import make_loader
from models.hf_transformers import HFTransformerEmbedder, load_hf_transformer
from tests.models.conftest import cache_with, cos
from tests.tiny_models import TINY_MAX_LENGTH, hf_cache_entry

TEXTS = ["Hello world, the cat sits.", "a dog", "The quick brown fox jumps over the lazy dog " * 3, "x"]


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta"])
def tiny(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="module")
def model(tiny: Path) -> HFTransformerEmbedder:
    loaded = make_loader(device="cpu", cache_dir=None, allow_download=False)(str(tiny))
    assert isinstance(loaded, HFTransformerEmbedder)  # a bare config.json folder is the transformers family
    return loaded


def reference(path: Path, texts: list[str], pooling: str) -> np.ndarray:
    """The pooling done independently with transformers itself, one text at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, net = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            states = net(**tok([text], truncation=True, return_tensors="pt")).last_hidden_state[0]
            rows.append((states[0] if pooling == "cls" else states.mean(dim=0)).numpy())
    return np.stack(rows)


def test_loads_by_path_with_the_right_dimension_and_length(model: HFTransformerEmbedder, tiny: Path) -> None:
    info = model.info
    assert (info.family, info.dim, info.max_tokens, info.source) == ("transformers", 32, TINY_MAX_LENGTH, str(tiny))
    assert info.modalities == ("text",) and model.memory_bytes() > 10_000


def test_mean_pooling_is_right_in_batches_and_deterministic(model: HFTransformerEmbedder, tiny: Path) -> None:
    batch = model.embed_texts(TEXTS, batch_size=2, normalize=None)
    assert batch.shape == (len(TEXTS), 32) and batch.dtype == np.float32
    expected = reference(tiny, TEXTS, "mean")
    for i, text in enumerate(TEXTS):
        assert cos(batch[i], expected[i]) >= 0.9999  # padding in a batch never counts
        assert cos(batch[i], model.embed_texts([text], batch_size=1, normalize=None)[0]) >= 0.9999
    assert np.allclose(batch, model.embed_texts(TEXTS, batch_size=2, normalize=None), atol=1e-6)
    assert model.embed_texts([], batch_size=4, normalize=None).shape == (0, 32)


def test_normalisation_is_honoured(model: HFTransformerEmbedder) -> None:
    raw = model.embed_texts(TEXTS, batch_size=4, normalize=None)
    unit = model.embed_texts(TEXTS, batch_size=4, normalize=True)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_cls_pooling_and_defaults_from_a_custom_entry(tiny: Path) -> None:
    entry = CustomModel(name="my-model", path=str(tiny), pooling="cls", normalize=True, max_length=16)
    loaded = make_loader(device="cpu", cache_dir=None, allow_download=False, custom_models=[entry])("my-model")
    assert loaded.info.name == "my-model" and loaded.info.max_tokens == 16
    vectors = loaded.embed_texts(TEXTS[:2], batch_size=2, normalize=None)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the entry's normalize default
    expected = reference(tiny, TEXTS[:2], "cls")
    assert all(cos(vectors[i], expected[i]) >= 0.9999 for i in range(2))
    raw = loaded.embed_texts(TEXTS[:1], batch_size=1, normalize=False)[0]  # the task's choice wins
    # the model's own vector, not a unit one. The loader runs `models.backend: auto`, which may pick a bfloat16
    # engine on a CPU with AMX or AVX-512 BF16 (faithful by cosine, not to float32's last digits): compared by
    # direction and length, not element by element
    assert cos(raw, expected[0]) >= 0.9999
    assert np.isclose(np.linalg.norm(raw), np.linalg.norm(expected[0]), rtol=1e-3)
    assert not np.isclose(np.linalg.norm(expected[0]), 1.0, atol=0.05)


def test_text_tokenizer_counts_and_offsets(model: HFTransformerEmbedder) -> None:
    tok = model.text_tokenizer()
    assert tok.max_tokens == TINY_MAX_LENGTH - 2  # [CLS] … [SEP] or <s> … </s>
    text = "Hello world, the cat sits."
    spans = tok.offsets(text)
    assert len(spans) == tok.count(text) > 3
    assert all(0 <= s < e <= len(text) for s, e in spans) and spans == sorted(spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert "".join(text[s:e] for s, e in spans).lower().replace(" ", "") == text.lower().replace(" ", "")
    long_text = "the cat sits " * 100
    assert tok.count(long_text) > tok.max_tokens  # what a chunker needs to see
    assert model.embed_texts([long_text], batch_size=1, normalize=None).shape == (1, 32)  # truncated, not an error
    # what batching sorts by: the tokens each text takes in the model, special tokens in, cut at the limit
    assert model.token_lengths([text, long_text, ""]) == [tok.count(text) + 2, TINY_MAX_LENGTH, 2]


def test_product_names_map_to_the_cache_dir(tiny_bert: Path, tiny_distilbert: Path, tmp_path: Path) -> None:
    cache_with(tmp_path, "bert-base-uncased", tiny_bert)
    cache = cache_with(tmp_path, "distilbert__distilbert-base-uncased", tiny_distilbert)
    load = make_loader(device="cpu", cache_dir=cache, allow_download=False)
    for name, folder in [
        ("bert-base-uncased", "bert-base-uncased"),
        ("hf:bert-base-uncased", "bert-base-uncased"),
        ("distilbert-base-uncased", "distilbert__distilbert-base-uncased"),  # found under its hub id
    ]:
        loaded = load(name)
        assert (loaded.info.name, loaded.info.family, loaded.info.source) == (
            name,
            "transformers",
            str(tmp_path / folder),
        )
        assert loaded.embed_texts(["hello"], batch_size=1, normalize=True).shape == (1, 32)


def test_roberta_base_maps_to_the_hugging_face_cache(tiny_roberta: Path, tmp_path: Path) -> None:
    snapshot = hf_cache_entry(tmp_path, "FacebookAI/roberta-base", tiny_roberta)
    loaded = load_hf_transformer("roberta-base", device="cpu", cache_dir=str(tmp_path), allow_download=False)
    assert loaded.info.source == str(snapshot) and loaded.info.max_tokens == TINY_MAX_LENGTH
    direct = load_hf_transformer(str(tiny_roberta), device="cpu", cache_dir=None, allow_download=False)
    a, b = (m.embed_texts(["same text"], batch_size=1, normalize=None)[0] for m in (loaded, direct))
    assert cos(a, b) >= 0.9999


def test_missing_model_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_hf_transformer("bert-base-uncased", device="cpu", cache_dir=str(tmp_path), allow_download=False)
    message = str(info.value)
    assert message.startswith("Failed to load model bert-base-uncased: not found in local path 'bert-base-uncased'")
    assert str(tmp_path / "google-bert__bert-base-uncased") in message and "Hugging Face cache" in message
    assert "downloads are off" in message and f"Put the model's files in {tmp_path / 'bert-base-uncased'}" in message


def test_bad_custom_entries_fail_clearly(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"its configured path .*nowhere holds no config.json"):
        load_hf_transformer("m", device="cpu", cache_dir=None, allow_download=False, path=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="max_length 1000 is more than the model's limit of 64 tokens"):
        load_hf_transformer(
            "m", device="cpu", cache_dir=None, allow_download=False, path=str(tiny_bert), max_length=1000
        )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match=f"Failed to load model m from {broken}: .*save_pretrained"):
        load_hf_transformer("m", device="cpu", cache_dir=None, allow_download=False, path=str(broken))
