"""Settings of the image, document and long-text inputs: defaults, YAML sections, environment, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import load_settings


def test_input_defaults_are_safe(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.images_allowed_roots == [] and s.images_allow_urls is False and s.images_allow_private_urls is False
    assert (s.images_max_bytes, s.images_max_pixels, s.images_url_timeout) == (20 * 1024 * 1024, 40_000_000, 10.0)
    assert (s.default_image_model, s.images_batch_size) == ("ViT-B/32", 16)
    assert (s.chunk_tokens, s.chunk_overlap_tokens, s.document_vector, s.long_text) == (None, 32, "mean", "reject")


def test_yaml_sections_and_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "images: {allowed_roots: [/srv/a, /srv/b], allow_urls: true, max_pixels: 1000, url_timeout: 3}\n"
        "documents: {chunk_tokens: 128, chunk_overlap_tokens: 16, document_vector: none}\n"
        "processing: {long_text: truncate}\nmodels: {default_image: ViT-L/14}\n",
        encoding="utf-8",
    )
    s = load_settings(path)
    assert s.images_allowed_roots == ["/srv/a", "/srv/b"] and s.images_allow_urls and s.images_max_pixels == 1000
    assert (s.chunk_tokens, s.chunk_overlap_tokens, s.document_vector) == (128, 16, "none")
    assert (s.long_text, s.default_image_model, s.images_url_timeout) == ("truncate", "ViT-L/14", 3.0)
    clean_env.setenv("VECTORIZE_WORKER_IMAGES_ALLOWED_ROOTS", "/data/img, /mnt/x")
    clean_env.setenv("VECTORIZE_WORKER_LONG_TEXT", "reject")
    s = load_settings(path)
    assert s.images_allowed_roots == ["/data/img", "/mnt/x"] and s.long_text == "reject"


def test_bad_input_settings_are_named(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("documents: {chunk_tokens: 64, chunk_overlap_tokens: 64}\n", encoding="utf-8")
    clean_env.setenv("VECTORIZE_WORKER_LONG_TEXT", "cut")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert (
        "chunk_overlap_tokens (env VECTORIZE_WORKER_CHUNK_OVERLAP_TOKENS, YAML documents.chunk_overlap_tokens): "
        "got 64; Value error, must be smaller than chunk_tokens (64)" in message
    )
    assert "long_text (env VECTORIZE_WORKER_LONG_TEXT, YAML processing.long_text): got 'cut'" in message
