"""The CLIP family (open_clip) with a tiny model in open_clip's layout (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidTaskError, ModelLoadError
from core.model_settings import CustomModel
from models.clip import ClipEmbedder, cached_weights, load_clip, parse_clip_name
from models.families import make_loader
from models.manager import ModelManager
from tests.models.conftest import cache_with, cos, images
from tests.tiny_models import hf_cache_entry

TEXTS = ["a photo of a cat", "a diagram of a vector database", "x"]


@pytest.fixture(scope="module")
def clip(tiny_clip: Path) -> ClipEmbedder:
    loaded = make_loader(device="cpu", cache_dir=None, allow_download=False)(str(tiny_clip))
    assert isinstance(loaded, ClipEmbedder)  # a folder with open_clip_config.json is the clip family
    return loaded


def test_names_map_to_open_clip_architectures() -> None:
    a, b = parse_clip_name("ViT-B/32"), parse_clip_name("clip:ViT-B-32")
    assert (a.arch, a.pretrained) == (b.arch, b.pretrained) == ("ViT-B-32", "openai")
    assert (parse_clip_name("ViT-L/14").arch, parse_clip_name("ViT-L/14").pretrained) == ("ViT-L-14", "openai")
    tagged = parse_clip_name("open_clip:ViT-B-32@laion2b_s34b_b79k")
    assert (tagged.arch, tagged.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")


def test_images_and_texts_share_one_dimension(clip: ClipEmbedder, tiny_clip: Path) -> None:
    info = clip.info
    assert (info.family, info.dim, info.modalities, info.source) == ("clip", 16, ("text", "image"), str(tiny_clip))
    assert info.max_tokens == 77 and clip.memory_bytes() > 100_000
    pictures = clip.embed_images(images(3), batch_size=2, normalize=None)
    texts = clip.embed_texts(TEXTS, batch_size=2, normalize=None)
    assert pictures.shape == (3, 16) and texts.shape == (3, 16)
    assert pictures.dtype == np.float32 and texts.dtype == np.float32


@pytest.mark.parametrize("kind", ["texts", "images"])
def test_batches_equal_one_by_one_and_repeat_exactly(clip: ClipEmbedder, kind: str) -> None:
    items = TEXTS if kind == "texts" else images(5)
    embed = clip.embed_texts if kind == "texts" else clip.embed_images
    batch = embed(items, batch_size=4, normalize=None)
    for i, item in enumerate(items):
        assert cos(batch[i], embed([item], batch_size=1, normalize=None)[0]) >= 0.9999
    assert np.allclose(batch, embed(items, batch_size=4, normalize=None), atol=1e-6)
    assert len({tuple(np.round(row, 5)) for row in batch}) == len(items)  # distinct inputs, distinct vectors


def test_normalisation_is_honoured(clip: ClipEmbedder) -> None:
    raw = clip.embed_images(images(2), batch_size=2, normalize=None)
    unit = clip.embed_images(images(2), batch_size=2, normalize=True)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(clip.embed_texts(TEXTS, batch_size=3, normalize=True), axis=1), 1.0, atol=1e-5)


def test_the_product_names_map_to_the_cache_dir(tiny_clip: Path, tmp_path: Path, clip: ClipEmbedder) -> None:
    cache = cache_with(tmp_path, "ViT-B-32", tiny_clip)
    load = make_loader(device="cpu", cache_dir=cache, allow_download=False)
    expected = clip.embed_texts(["same"], batch_size=1, normalize=None)[0]
    for name in ["ViT-B/32", "clip:ViT-B-32", "open_clip:ViT-B/32"]:
        loaded = load(name)
        assert (loaded.info.name, loaded.info.family, loaded.info.source) == (name, "clip", str(tmp_path / "ViT-B-32"))
        assert cos(loaded.embed_texts(["same"], batch_size=1, normalize=None)[0], expected) >= 0.9999


def test_custom_entry_with_a_path_and_normalize_default(tiny_clip: Path) -> None:
    entry = CustomModel(name="my-clip", path=str(tiny_clip), normalize=True)
    loaded = make_loader(device="cpu", cache_dir=None, allow_download=False, custom_models=[entry])("my-clip")
    vectors = loaded.embed_images(images(2), batch_size=2, normalize=None)
    assert loaded.info.family == "clip" and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_text_tokenizer_offsets_follow_open_clip(clip: ClipEmbedder) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    tok = clip.text_tokenizer()
    assert tok.max_tokens == 75  # 77 minus <start_of_text> and <end_of_text>
    text = "A Photo of TWO cats, naïve café-goers & 42 vectorisations!"
    spans = tok.offsets(text)
    assert tok.count(text) == len(spans) == len(SimpleTokenizer().encode(text))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert "".join(text[s:e] for s, e in spans) == text.replace(" ", "")
    assert tok.count("word " * 200) == 200 > tok.max_tokens
    # open_clip pads every text to 77 tokens: nothing to sort by, batching falls back to its estimate
    assert clip.token_lengths([text]) is None


async def test_manager_embeds_images_and_a_text_task_uses_the_text_tower(tiny_clip: Path, tmp_path: Path) -> None:
    cache = cache_with(tmp_path, "ViT-B-32", tiny_clip)
    manager = ModelManager(make_loader(device="cpu", cache_dir=cache, allow_download=False), max_loaded=1)
    pictures, info = await manager.embed_images("ViT-B/32", images(3), batch_size=2, normalize=True)
    texts, same = await manager.embed_texts("ViT-B/32", TEXTS, batch_size=2, normalize=True)
    assert pictures.shape == texts.shape == (3, 16) and info == same and info.family == "clip"
    manager.close()


def test_not_an_image_is_refused(clip: ClipEmbedder) -> None:
    with pytest.raises(InvalidTaskError, match="embeds PIL images, got bytes; decode the image first"):
        clip.embed_images([b"\x89PNG"], batch_size=1, normalize=None)


def test_missing_clip_model_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_clip("ViT-B/16", device="cpu", cache_dir=str(tmp_path), allow_download=False)
    message = str(info.value)
    assert message.startswith("Failed to load model ViT-B/16: not found in local path 'ViT-B/16'")
    assert "open_clip's cache for ViT-B-16@openai" in message and "downloads are off" in message
    assert f"Put the model's files in {tmp_path / 'ViT-B-16'} (open_clip_config.json" in message
    with pytest.raises(ModelLoadError, match="not an open_clip architecture"):
        load_clip("clip:NoSuchNet", device="cpu", cache_dir=str(tmp_path), allow_download=False)
    with pytest.raises(ModelLoadError, match="open_clip has no weights 'nope' for ViT-B-32"):
        load_clip("clip:ViT-B-32@nope", device="cpu", cache_dir=str(tmp_path), allow_download=False)


def test_openai_weights_are_found_in_the_hugging_face_cache_without_network(tmp_path: Path) -> None:
    fake = tmp_path / "weights"
    fake.mkdir()
    (fake / "open_clip_model.safetensors").write_bytes(b"not really weights")
    snapshot = hf_cache_entry(tmp_path / "hub", "timm/vit_base_patch32_clip_224.openai", fake)
    found = cached_weights("ViT-B-32", "openai", str(tmp_path / "hub"))
    assert found == str(snapshot / "open_clip_model.safetensors")
    assert cached_weights("ViT-B-16", "openai", str(tmp_path / "hub")) in (
        None,
        *[str(p) for p in Path.home().glob(".cache/clip/*")],
    )
