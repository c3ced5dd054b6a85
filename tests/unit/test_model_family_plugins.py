"""Model families as plugins (models/registry.py): the built-in families and the example plugin's ``hashing``
family (examples/plugin, installed by `make venv`) are found by their entry points; a custom entry naming a
plugin family loads through the real settings, the real ModelManager (memory accounting, LRU, warm-up) and
embeds; an unknown family is named with the installed ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, ModelLoadError, ModelMemoryError
from core.model_settings import CustomModel, installed_families
from core.settings import load_settings
from models.base import ModelFamily
from models.families import ClipFamily, SentenceTransformersFamily, TransformersFamily, build_manager, make_loader
from models.registry import ENTRY_POINT_GROUP, available, get_family
from tests.unit.conftest import write_yaml

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "run `make venv` (it installs examples/plugin: pip install --no-deps --no-build-isolation -e examples/plugin)"


def _example_plugin() -> type[ModelFamily]:
    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert names.get("hashing") == "vw_example_plugin.families:HashingFamily", (
        f"the example plugin is not installed in this environment (entry points: {names}); {INSTALL}"
    )
    from vw_example_plugin.families import HashingFamily

    return HashingFamily


def test_the_registry_finds_the_builtin_families_and_the_example_plugin() -> None:
    hashing = _example_plugin()
    found = available()
    assert {"sentence-transformers", "transformers", "clip", "hashing"} <= set(found)
    assert isinstance(get_family("sentence-transformers", model="m"), SentenceTransformersFamily)
    assert isinstance(get_family("transformers", model="m"), TransformersFamily)
    assert isinstance(get_family("clip", model="m"), ClipFamily)
    family = get_family("hashing", model="m")
    assert isinstance(family, hashing) and get_family("hashing", model="other") is family  # made once
    assert {"clip", "hashing", "sentence-transformers", "transformers"} <= set(installed_families())
    # the project's own pyproject registers the built-ins under the same group, to the same classes
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split(f'[project.entry-points."{ENTRY_POINT_GROUP}"]', 1)[1].split("\n\n", 1)[0]
    for name, target in [
        ("sentence-transformers", "models.families:SentenceTransformersFamily"),
        ("transformers", "models.families:TransformersFamily"),
        ("clip", "models.families:ClipFamily"),
    ]:
        assert f'{name} = "{target}"' in section and found[name] == target


def _hashing_settings(clean_env: pytest.MonkeyPatch, tmp_path: Path, entries: str, **env: str):
    for key, value in env.items():
        clean_env.setenv(f"VECTORIZE_WORKER_{key}", value)
    return load_settings(write_yaml(tmp_path, f"models:\n  sentence_transformers:\n{entries}"))


def test_a_hashing_entry_loads_through_the_real_model_manager_and_embeds(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _example_plugin()
    settings = _hashing_settings(
        clean_env,
        tmp_path,
        "    - {name: hash-64, family: Hashing, dim: 64}\n"
        "    - {name: hash-128, family: hashing, options: {dim: 128}, max_length: 8, normalize: false}\n",
    )
    first, second = settings.custom_models
    assert (first.family, dict(first.options), second.options, second.max_length) == (
        "hashing",
        {"dim": 64},
        {"dim": 128},
        8,
    )
    manager = build_manager(settings, "cpu")
    texts = ["the cat sat on the mat", "The cat sat on the mat!", "stock markets fell sharply", "", "猫坐在垫子上"]
    try:
        vectors, info = manager.embed_texts_sync("hash-64", texts, batch_size=2, normalize=None)
        assert (info.family, info.dim, info.device, info.max_tokens) == ("hashing", 64, "cpu", 512)
        assert vectors.shape == (5, 64) and vectors.dtype == np.float32
        norms = np.linalg.norm(vectors, axis=1)
        assert np.allclose(norms[[0, 1, 2, 4]], 1.0, atol=1e-6) and norms[3] == 0.0  # nothing to hash: zero
        assert np.array_equal(vectors[0], vectors[1])  # case and punctuation are not tokens
        assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
        again, _ = manager.embed_texts_sync("hash-64", texts[:1], batch_size=1, normalize=True)
        assert np.array_equal(again[0], vectors[0])
        assert manager.token_lengths_sync("hash-64", ["one two three", "猫坐在"]) == [3, 3]
        tokenizer = manager.get_sync("hash-64").text_tokenizer()
        assert tokenizer.offsets("Hi, 猫!") == [(0, 2), (4, 5)] and tokenizer.count("a b c") == 3
        # the entry's own max_length and normalize
        raw, info = manager.embed_texts_sync("hash-128", ["a b c d e f g h i j k"], batch_size=1, normalize=None)
        assert info.dim == 128 and info.max_tokens == 8 and float(np.abs(raw).sum()) == 8.0  # 8 tokens, +-1 each
        # the embedding cache keys vectors by the model's identity: computed, and different per entry
        assert manager.identity("hash-64") and manager.identity("hash-64") != manager.identity("hash-128")
    finally:
        manager.close()
    # the same in another process (a salted hash() would differ there)
    code = (
        "from core.model_settings import CustomModel\nfrom models.families import make_loader\n"
        "entry = CustomModel(name='h', family='hashing', dim=64)\n"
        "model = make_loader(device='cpu', cache_dir=None, allow_download=False, custom_models=[entry])('h')\n"
        "print(model.embed_texts(['the cat sat on the mat'], batch_size=1, normalize=None)[0].tolist())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(np.array(json.loads(done.stdout), dtype=np.float32), vectors[0])


def test_a_plugin_family_gets_the_lru_and_the_warm_up(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _example_plugin()
    entries = "".join(f"    - {{name: h{i}, family: hashing, dim: {8 * (i + 1)}}}\n" for i in range(3))
    settings = _hashing_settings(clean_env, tmp_path, entries, MAX_LOADED_MODELS="2")
    manager = build_manager(settings, "cpu")
    calls: list[tuple[str, list[str]]] = []
    loader = manager._loader

    def counting(name: str):
        model = loader(name)
        embed = model.embed_texts
        model.embed_texts = lambda texts, **kw: (calls.append((name, list(texts))), embed(texts, **kw))[1]  # type: ignore[method-assign]
        return model

    manager._loader = counting  # type: ignore[assignment]
    try:
        manager.get_sync("h0")
        assert calls == [("h0", ["warm-up"])]  # warmed up once loaded
        manager.get_sync("h1")
        manager.get_sync("h0")  # h1 is now the least recently used
        manager.get_sync("h2")
        assert [m.name for m in manager.loaded()] == ["h0", "h2"]
        assert [m.dim for m in manager.loaded()] == [8, 24]
    finally:
        manager.close()


SIZED_FAMILY = """
import numpy as np
from models.base import Embedder, EmbedderInfo, ModelFamily

MiB = 2**20


class Sized(Embedder):
    def __init__(self, name, mib):
        self._info = EmbedderInfo(name=name, family="sized", dim=4, device="cpu")
        self.mib = mib

    @property
    def info(self):
        return self._info

    def embed_texts(self, texts, *, batch_size, normalize):
        return np.ones((len(texts), 4), dtype=np.float32)

    def memory_bytes(self):
        return self.mib * MiB


class SizedFamily(ModelFamily):
    def load(self, spec):
        return Sized(spec.name, spec.options["mib"])

    def size_hint(self, spec):
        return spec.options["mib"] * MiB
"""


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Installs a package as pip would leave it: its module and a dist-info with entry_points.txt on sys.path."""
    monkeypatch.setattr("models.registry._families", {})  # families made from it are forgotten afterwards

    def install(entry_points_txt: str) -> None:
        site = tmp_path / "site"
        dist = site / "vw_test_sized-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vw-test-sized\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(entry_points_txt)
        (site / "vw_test_sized.py").write_text(SIZED_FAMILY)
        monkeypatch.syspath_prepend(str(site))

    yield install
    sys.modules.pop("vw_test_sized", None)


def test_a_third_party_family_gets_the_memory_accounting(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, fake_site: Callable[[str], None]
) -> None:
    fake_site(f"[{ENTRY_POINT_GROUP}]\nsized = vw_test_sized:SizedFamily\n")
    assert available()["sized"] == "vw_test_sized:SizedFamily"
    entries = "".join(
        f"    - {{name: {name}, family: sized, mib: {mib}}}\n"
        for name, mib in [("a", 2), ("b", 2), ("c", 2), ("huge", 9)]
    )
    settings = _hashing_settings(clean_env, tmp_path, entries, MODELS_MEMORY_BUDGET="5MiB")
    manager = build_manager(settings, "cpu")
    try:
        manager.get_sync("a")
        manager.get_sync("b")
        assert manager.memory_used() == 4 * 2**20
        manager.get_sync("a")  # b is now the least recently used
        manager.get_sync("c")  # 6 MiB would not fit 5: b goes (before c loads: its size hint said 2 MiB)
        assert [m.name for m in manager.loaded()] == ["a", "c"] and manager.memory_used() == 4 * 2**20
        with pytest.raises(
            ModelMemoryError, match=r"Failed to load model huge: it needs 9\.0 MiB .* budget is 5\.0 MiB"
        ):
            manager.get_sync("huge")
        assert [m.name for m in manager.loaded()] == ["a", "c"]  # a model larger than the budget unloads nothing
    finally:
        manager.close()


def test_an_unknown_family_names_the_installed_ones(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _example_plugin()
    with pytest.raises(ConfigError) as info:
        _hashing_settings(clean_env, tmp_path, "    - {name: w2v, family: word2vec, dim: 300}\n")
    message = str(info.value)
    assert "custom_models" in message and "models.sentence_transformers" in message
    assert "unknown family 'word2vec'; installed families: clip (or open_clip, open-clip), hashing, " in message
    assert "sentence-transformers (or sentence_transformers, st), transformers (or hf, huggingface)" in message
    assert "entry-point group vectorize_worker.model_families" in message
    # at load time too (an entry made without validation, or a package uninstalled since)
    gone = CustomModel.model_construct(name="w2v", family="word2vec", options={})
    loader = make_loader(device="cpu", cache_dir=None, allow_download=False, custom_models=[gone])
    with pytest.raises(ModelLoadError) as load_info:
        loader("w2v")
    text = str(load_info.value)
    assert text.startswith("Failed to load model w2v: its family 'word2vec' is not installed; installed families: clip")
    assert "hashing" in text and "entry-point group vectorize_worker.model_families" in text
    assert "VECTORIZE_WORKER_CUSTOM_MODELS" in text


def test_bad_plugin_entries_stop_start_up(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _example_plugin()
    settings = _hashing_settings(
        clean_env,
        tmp_path,
        "    - {name: h1, family: hashing, colour: red}\n    - {name: h2, family: hashing, dim: 0}\n",
    )
    with pytest.raises(ConfigError) as info:
        build_manager(settings, "cpu")
    message = str(info.value)
    assert "models.sentence_transformers (VECTORIZE_WORKER_CUSTOM_MODELS); the worker will not start" in message
    assert "model h1 (family hashing): the hashing family has no option 'colour'; it takes dim" in message
    assert "model h2 (family hashing): dim must be a whole number from 1 to 65536, not 0" in message
    # the built-in families take only their own keys, as before; options are for plugin families
    for entry, words in [
        ("{name: x, dim: 3}", ["custom_models.0.dim", "unknown setting"]),
        ("{name: x, family: clip, options: {dim: 3}}", ["options apply to plugin families, not to clip"]),
    ]:
        with pytest.raises(ConfigError) as bad:
            _hashing_settings(clean_env, tmp_path, f"    - {entry}\n")
        assert all(word in str(bad.value) for word in words), str(bad.value)


def test_a_plugin_that_cannot_be_imported_stops_start_up(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, fake_site: Callable[[str], None]
) -> None:
    fake_site(f"[{ENTRY_POINT_GROUP}]\nbroken = vw_test_missing_module:Family\nnotafamily = vw_test_sized:MiB\n")
    settings = _hashing_settings(
        clean_env, tmp_path, "    - {name: b, family: broken}\n    - {name: n, family: notafamily}\n"
    )
    with pytest.raises(ConfigError) as info:
        build_manager(settings, "cpu")
    message = str(info.value)
    assert (
        "Failed to load model b: the model family 'broken' (vw_test_missing_module:Family, entry-point group "
        "vectorize_worker.model_families) cannot be imported (ModuleNotFoundError" in message
    )
    assert "the model family 'notafamily' (vw_test_sized:MiB, entry-point group" in message
    assert "is a int, not a models.base.ModelFamily subclass or instance" in message
