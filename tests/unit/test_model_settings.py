"""Settings of the models section: custom entries, memory sizes, idle unload; and family choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.model_settings import CustomModel, parse_byte_size
from core.settings import load_settings
from models.families import family_of
from tests.unit.conftest import write_yaml

GiB = 1024**3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2GiB", 2 * GiB),
        ("2G", 2 * GiB),
        ("1.5 GiB", int(1.5 * GiB)),
        ("512MiB", 512 * 1024**2),
        ("500MB", 500 * 1000**2),
        ("1GB", 1000**3),
        ("4096", 4096),
        (1048576, 1048576),
        (0, None),
        ("", None),
        (None, None),
    ],
)
def test_byte_sizes(value: object, expected: int | None) -> None:
    assert parse_byte_size(value) == expected


def test_models_section_from_yaml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
models:
  memory_budget: 2GiB
  idle_unload_seconds: 600
  sentence_transformers:
    - sentence-transformers/all-mpnet-base-v2
    - name: my-bert
      family: hf
      path: /models/my-bert
      pooling: cls
      max_length: 128
      normalize: true
    - {name: my-clip, path: /models/clip, family: open_clip}
device:
  gpu_memory_limit: 8GiB
""",
    )
    s = load_settings(path)
    assert s.models_memory_budget == 2 * GiB and s.gpu_memory_limit == 8 * GiB
    assert s.models_idle_unload_seconds == 600
    plain, bert, clip = s.custom_models
    assert plain == CustomModel(name="sentence-transformers/all-mpnet-base-v2")
    assert (bert.family, bert.path, bert.pooling, bert.max_length, bert.normalize) == (
        "transformers",
        "/models/my-bert",
        "cls",
        128,
        True,
    )
    assert clip.family == "clip"


def test_models_section_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("VECTORIZE_WORKER_MODELS_MEMORY_BUDGET", "512MiB")
    clean_env.setenv("VECTORIZE_WORKER_MODELS_IDLE_UNLOAD_SECONDS", "30")
    clean_env.setenv("VECTORIZE_WORKER_CUSTOM_MODELS", '[{"name": "b", "pooling": "mean"}, "st-model"]')
    s = load_settings()
    assert s.models_memory_budget == 512 * 1024**2 and s.models_idle_unload_seconds == 30
    assert [(m.name, m.family) for m in s.custom_models] == [("b", "transformers"), ("st-model", None)]
    clean_env.setenv("VECTORIZE_WORKER_CUSTOM_MODELS", "one, two")
    assert [m.name for m in load_settings().custom_models] == ["one", "two"]


@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        ("models: {memory_budget: lots}\n", ["models_memory_budget", "models.memory_budget", "is not a size"]),
        ("device: {gpu_memory_limit: -1}\n", ["gpu_memory_limit", "device.gpu_memory_limit", "negative"]),
        ("models: {idle_unload_seconds: -5}\n", ["models_idle_unload_seconds", "greater than or equal to 0"]),
        (
            "models: {sentence_transformers: [{name: x, family: tensorflow}]}\n",
            ["custom_models", "models.sentence_transformers", "unknown family 'tensorflow'"],
        ),
        (
            "models: {sentence_transformers: [{name: x, family: clip, pooling: cls}]}\n",
            ["pooling applies to the transformers family"],
        ),
        ("models: {sentence_transformers: [{name: x, colour: red}]}\n", ["custom_models", "colour"]),
        ("models: {sentence_transformers: [a, {name: a}]}\n", ["listed twice: a"]),
        ("models: {sentence_transformers: [{family: hf}]}\n", ["custom_models", "name", "Field required"]),
    ],
)
def test_bad_models_settings_are_named(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, yaml_text: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_yaml(tmp_path, yaml_text))
    message = str(info.value)
    assert message.startswith("Invalid configuration (1 problem(s)); the worker will not start:")
    for word in words:
        assert word in message, message


def test_family_of_names_paths_and_entries(tmp_path: Path) -> None:
    assert family_of("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers"
    assert family_of("all-mpnet-base-v2") == "sentence-transformers"
    for name in ["ViT-B/32", "ViT-B/16", "ViT-L/14", "clip:ViT-B-32", "open_clip:RN50@openai"]:
        assert family_of(name) == "clip", name
    for name in ["bert-base-uncased", "distilbert-base-uncased", "roberta-base", "hf:org/x", "transformers:y"]:
        assert family_of(name) == "transformers", name
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert family_of(str(plain)) == "transformers"
    (plain / "modules.json").write_text("[]")
    assert family_of(str(plain)) == "sentence-transformers"
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text("{}")
    assert family_of(str(clip)) == "clip"
    assert family_of("anything", CustomModel(name="anything", path=str(clip))) == "clip"
    assert family_of("bert-base-uncased", CustomModel(name="bert-base-uncased", family="st")) == "sentence-transformers"
