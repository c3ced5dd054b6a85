"""Physical collection names (core.versioning.physical_name) and FakeStore's aliases, pointers and scans.

The real stores' behaviour is the contract suite's (tests/contract.py, run by
tests/integration/test_*_store.py); FakeStore has to match it for the engine's
unit tests.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from core.errors import StoreRejectedError
from core.versioning import ModelIdentity, model_slug, physical_name
from sinks.base import VectorRecord
from tests.fakes import FakeStore

REV = "3f2a9c1d0e11" + "0" * 52
MINILM = ModelIdentity("sentence-transformers/all-MiniLM-L6-v2", REV, 384, normalize=True, pooling="mean")

# each store's rule for a collection name, as the adapters map it (docs/stores.md, "Aliases and pointers")
WEAVIATE_CLASS = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
MILVUS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
CHROMA = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


def _valid_everywhere(name: str) -> bool:
    weaviate = name.replace("-", "_")
    weaviate = weaviate[:1].upper() + weaviate[1:]
    return bool(
        WEAVIATE_CLASS.match(weaviate)
        and MILVUS.match(name.replace("-", "_"))
        and CHROMA.match(name)
        and ".." not in name
        and "/" not in name  # Qdrant: a URL path segment
    )


def test_the_documented_example() -> None:
    assert physical_name("docs", MINILM) == "docs__all_minilm_l6_v2_3f2a9c1d"


@pytest.mark.parametrize(
    ("model", "slug"),
    [
        ("BAAI/bge-small-en-v1.5", "bge_small_en_v1_5"),
        ("ViT-B/32", "32"),
        ("hashing-256", "hashing_256"),
        ("/models/My Model (fine-tuned)/", "my_model_fine_tuned"),
        ("C:\\models\\E5--Large", "e5_large"),
        ("über/日本語", "model"),
        ("x" * 30 + "-" + "y" * 30, "x" * 30 + "_" + "y" * 9),
        ("a" * 39 + "-b", "a" * 39),  # cut at 40, no trailing "_"
    ],
)
def test_model_slugs(model: str, slug: str) -> None:
    assert model_slug(model) == slug
    assert physical_name("docs", replace(MINILM, name=model)) == f"docs__{slug}_3f2a9c1d"


@pytest.mark.parametrize("alias", ["d", "docs", "My-Docs_2", "A" + "b-" * 31, "x__y"])
@pytest.mark.parametrize("model", ["sentence-transformers/all-MiniLM-L6-v2", "日本", "a" * 300, "-/-"])
def test_every_physical_name_is_valid_in_every_store(alias: str, model: str) -> None:
    name = physical_name(alias, replace(MINILM, name=model))
    assert _valid_everywhere(name), name
    assert len(name) <= 114 and name.startswith(f"{alias}__")


def test_models_of_other_revisions_get_other_names() -> None:
    other = replace(MINILM, revision="9e01" + REV[4:])
    assert physical_name("docs", other) != physical_name("docs", MINILM)
    assert physical_name("docs", replace(MINILM, revision=REV.upper())) == physical_name("docs", MINILM)


@pytest.mark.parametrize("alias", ["", "1docs", "do cs", "docs.v2", "a" * 64, "ü"])
def test_an_alias_that_is_no_collection_name_is_refused(alias: str) -> None:
    with pytest.raises(ValueError, match="cannot name a physical collection") as info:
        physical_name(alias, MINILM)
    assert repr(alias) in str(info.value) and "starts with a letter" in str(info.value)


@pytest.mark.parametrize(
    "identity",
    [
        replace(MINILM, revision=""),
        replace(MINILM, revision="3f2a9c"),
        replace(MINILM, revision="not-hex-at-all"),
        ModelIdentity.from_record({"model": "m", "model_revision": REV[:16]}, 384),  # read from a stored record
    ],
)
def test_an_identity_without_a_full_revision_is_refused(identity: ModelIdentity | None) -> None:
    assert identity is not None
    with pytest.raises(ValueError, match="is not a hex digest") as info:
        physical_name("docs", identity)
    assert identity.name in str(info.value) and "identity_record" in str(info.value)


# -- FakeStore ------------------------------------------------------------------------------------------
def _filled(store: FakeStore, name: str, dim: int, n: int) -> list[str]:
    store.ensure_collection(name, dim)
    ids = [f"{name}-{i:03d}" for i in range(n)]
    store.upsert(name, [VectorRecord(i, [0.1] * dim, {"task_id": i}) for i in ids])
    return ids


@pytest.mark.parametrize("kind", ["pointer", "native"])
def test_fake_store_points_switches_unpoints_and_drops(kind: str) -> None:
    store = FakeStore(alias_kind=kind)  # type: ignore[arg-type]
    a_ids = _filled(store, "docs__a_11111111", 4, 3)
    _filled(store, "docs__b_22222222", 8, 2)
    assert store.resolve("docs") is None
    with pytest.raises(StoreRejectedError, match="does not exist"):
        store.point("docs", "docs__c_33333333")
    store.point("docs", "docs__a_11111111", identity=MINILM)
    assert store.resolve("docs") == "docs__a_11111111" and store.pointed["docs"] == MINILM
    with pytest.raises(StoreRejectedError, match="cannot be dropped"):
        store.drop("docs__a_11111111")
    store.point("docs", "docs__b_22222222")
    assert store.resolve("docs") == "docs__b_22222222"
    if kind == "native":  # every operation through the alias reads its target
        assert store.count("docs") == 2
        store.ensure_collection("docs", 8)
        with pytest.raises(StoreRejectedError, match="cannot take the name of a collection"):
            store.point("docs__a_11111111", "docs__b_22222222")
    else:  # only resolve reads a pointer; a pointer may have a collection's name
        assert store.count("docs") == 0
        store.point("docs__a_11111111", "docs__a_11111111")
        store.unpoint("docs__a_11111111")
    store.drop("docs__a_11111111")
    assert store.count("docs__a_11111111") == 0 and store.scan("docs__a_11111111") == ([], None)
    store.drop("docs__a_11111111")  # gone already: fine
    store.ensure_collection("docs__a_11111111", 16)  # nothing of it is remembered
    store.unpoint("docs")
    store.unpoint("docs")
    assert store.resolve("docs") is None and a_ids


def test_fake_store_scans_in_id_order_and_resumes() -> None:
    store = FakeStore()
    ids = _filled(store, "c", 4, 12)
    page, cursor = store.scan("c", limit=5)
    assert [p.id for p in page] == ids[:5] and cursor == ids[4] and all(p.vector is None for p in page)
    rest, cursor = store.scan("c", cursor, limit=5)
    last, end = store.scan_ids("c", cursor, limit=5)
    assert [p.id for p in rest] == ids[5:10] and last == ids[10:] and end is None
    assert store.scan("c", limit=12) == (store.scan("c", limit=100)[0], ids[-1])
