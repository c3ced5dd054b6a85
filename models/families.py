"""Pick the model family for a name (or a custom entry) and build the manager's loader.

Rules, first match wins:

1. a custom entry (``models.sentence_transformers``) with ``family`` set;
2. CLIP names: ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ``clip:<arch>``, ``open_clip:<arch>``;
3. ``hf:<id>`` / ``transformers:<id>``, or a known transformers name
   (``bert-base-uncased``, ``distilbert-base-uncased``, ``roberta-base`` and their hub ids);
4. a local directory decides by its files: ``open_clip_config.json`` → clip,
   ``modules.json`` → sentence-transformers, a bare ``config.json`` → transformers;
5. anything else is a sentence-transformers model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from core.errors import ModelLoadError
from models.base import Embedder
from models.clip import CLIP_NAMES, is_clip_name, local_clip_dir
from models.clip import PREFIXES as CLIP_PREFIXES
from models.hf_transformers import HF_ALIASES, repo_id
from models.resolve import hf_cached_snapshot, local_model_dir, weights_bytes

if TYPE_CHECKING:
    from core.model_settings import CustomModel
    from core.settings import Settings
    from models.manager import ModelManager

__all__ = ["CLIP_NAMES", "build_manager", "family_of", "make_loader", "make_size_hint"]
TRANSFORMERS_NAMES = frozenset([*HF_ALIASES, *HF_ALIASES.values()])
#: name prefixes that pick a family (matched in any case, as :func:`family_of` and the loaders do)
HF_PREFIXES = ("hf:", "transformers:")
FAMILY_PREFIXES = (*HF_PREFIXES, *CLIP_PREFIXES)


def family_of(name: str, custom: CustomModel | None = None) -> str:
    """The family that loads ``name``: ``sentence-transformers``, ``transformers`` or ``clip``."""
    if custom is not None and custom.family is not None:
        return custom.family
    target = custom.path if custom is not None and custom.path else name
    if is_clip_name(name):
        return "clip"
    if name.lower().startswith(HF_PREFIXES) or name in TRANSFORMERS_NAMES:
        return "transformers"
    directory = Path(target).expanduser()
    if directory.is_dir():
        if (directory / "open_clip_config.json").is_file():
            return "clip"
        if not (directory / "modules.json").is_file() and (directory / "config.json").is_file():
            return "transformers"
    return "sentence-transformers"


def make_loader(
    *,
    device: str,
    cache_dir: str | None,
    allow_download: bool,
    custom_models: Sequence[CustomModel] = (),
    backend: str = "auto",
    allowed: Sequence[str] = (),
) -> Callable[[str], Embedder]:
    """A loader for :class:`~models.manager.ModelManager` that dispatches on the family.

    ``backend`` (``models.backend``) says whether text transformers may run in
    ONNX Runtime on the CPU (models/onnx_runtime.py); CLIP always runs in torch.
    The loader blocks (it reads weights) and raises
    :class:`~core.errors.ModelLoadError` for a model it cannot find or read, and,
    when ``allowed`` names patterns (``models.allowed``), for a name none of
    them matches, before it looks at the disk or the network.
    """
    entries = {entry.name: entry for entry in custom_models}

    def load(name: str) -> Embedder:
        if not is_allowed(name, allowed):
            raise ModelLoadError(
                f"Failed to load model {name}: it is not among the models this worker may load "
                f"({', '.join(allowed)}; VECTORIZE_WORKER_MODELS_ALLOWED, YAML models.allowed); send the task "
                "with one of those, or add the name (or a pattern such as sentence-transformers/*) to that setting."
            )
        entry = entries.get(name)
        family = family_of(name, entry)
        path = entry.path if entry is not None else None
        normalize = entry.normalize if entry is not None else None
        common = {"device": device, "cache_dir": cache_dir, "allow_download": allow_download, "path": path}
        if family == "clip":
            from models.clip import load_clip

            return load_clip(name, normalize=normalize, **common)
        max_length = entry.max_length if entry is not None else None
        if family == "transformers":
            from models.hf_transformers import load_hf_transformer

            pooling = entry.pooling if entry is not None and entry.pooling else "mean"
            return load_hf_transformer(
                name, pooling=pooling, max_length=max_length, normalize=normalize, backend=backend, **common
            )
        from models.sentence_transformers import load_sentence_transformer

        return load_sentence_transformer(name, max_length=max_length, normalize=normalize, backend=backend, **common)

    load.device = device  # type: ignore[attr-defined] - read by the manager to free memory after an OOM
    return load


def is_allowed(name: str, allowed: Sequence[str]) -> bool:
    """Whether ``models.allowed`` lets a task name ``name``: any name when empty, else an entry equal to it,
    or a pattern matching it when it does not look like a path (``*`` also matches ``/``, so ``*MiniLM*``
    must not let in ``/srv/x/all-MiniLM-y``; a path is allowed only when listed as it is)."""
    if not allowed or name in allowed:
        return True
    bare = next((name[len(p) :] for p in FAMILY_PREFIXES if name.lower().startswith(p)), name)
    if bare.startswith(("/", "~", ".", "\\")) or ".." in PurePosixPath(bare).parts:
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)


def make_size_hint(
    *, cache_dir: str | None, custom_models: Sequence[CustomModel] = (), allowed: Sequence[str] = ()
) -> Callable[[str], int | None]:
    """Estimate a model's memory from its weight files on disk, before loading it (None when unknown,
    and for a name ``allowed`` refuses: the loader refuses it without looking at the disk)."""
    entries = {entry.name: entry for entry in custom_models}

    def hint(name: str) -> int | None:
        if not is_allowed(name, allowed):
            return None
        entry = entries.get(name)
        path = entry.path if entry is not None else None
        if family_of(name, entry) == "clip":
            return weights_bytes(local_clip_dir(name, cache_dir, path))
        repo = repo_id(path or name)
        local = local_model_dir(repo, cache_dir) or (None if path else hf_cached_snapshot(repo, cache_dir))
        return weights_bytes(local)

    return hint


def allowed_models(settings: Settings) -> list[str]:
    """What a task's ``model_name`` may be: the configured models (default, default image, custom entries)
    and the names or patterns of ``models.allowed``. ``*`` there opens every hub-style name, never a path."""
    configured = [settings.default_model, settings.default_image_model, *(c.name for c in settings.custom_models)]
    return [*settings.models_allowed, *configured]


def build_manager(settings: Settings, device: str) -> ModelManager:
    """The worker's :class:`ModelManager` from its settings, for models on ``device``.

    On CUDA the memory budget is ``gpu_memory_limit`` (the loaded models' share
    of GPU memory), falling back to ``models_memory_budget``; elsewhere it is
    ``models_memory_budget`` (host RAM; MPS shares it). The default model is
    never unloaded for being idle.
    """
    from models.manager import BUDGET_SETTING, ModelManager

    budget, setting = settings.models_memory_budget, BUDGET_SETTING
    if device.startswith("cuda") and settings.gpu_memory_limit:
        budget, setting = settings.gpu_memory_limit, "VECTORIZE_WORKER_GPU_MEMORY_LIMIT (YAML device.gpu_memory_limit)"
    custom = settings.custom_models
    allowed = allowed_models(settings)
    return ModelManager(
        make_loader(
            device=device,
            cache_dir=settings.models_cache_dir,
            allow_download=settings.models_allow_download,
            custom_models=custom,
            backend=settings.models_backend,
            allowed=allowed,
        ),
        max_loaded=settings.max_loaded_models,
        memory_budget=budget,
        budget_setting=setting,
        size_hint=make_size_hint(cache_dir=settings.models_cache_dir, custom_models=custom, allowed=allowed),
        idle_unload_seconds=settings.models_idle_unload_seconds,
        keep_loaded=[settings.default_model],
        freeze_after_load=True,
        identify=settings.cache_enabled,  # the embedding cache keys vectors by the model's identity
    )
