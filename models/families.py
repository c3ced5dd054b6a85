"""Pick the model family for a name (or a custom entry) and build the manager's loader.

Rules, first match wins:

1. a custom entry (``models.sentence_transformers``) with ``family`` set;
2. CLIP names: ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ``clip:<arch>``, ``open_clip:<arch>``;
3. ``hf:<id>`` / ``transformers:<id>``, or a known transformers name
   (``bert-base-uncased``, ``distilbert-base-uncased``, ``roberta-base`` and their hub ids);
4. a local directory decides by its files: ``open_clip_config.json`` → clip,
   ``modules.json`` → sentence-transformers, a bare ``config.json`` → transformers;
5. anything else is a sentence-transformers model.

A family is a :class:`~models.base.ModelFamily` found by name in the registry
(models/registry.py): the three built-in ones below, and any family an
installed package registers (a custom entry names it with ``family``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from core.errors import ConfigError, ModelLoadError
from core.model_settings import BUILTIN_FAMILIES
from models.base import Embedder, ModelFamily, ModelSpec
from models.clip import CLIP_NAMES, is_clip_name, local_clip_dir
from models.clip import PREFIXES as CLIP_PREFIXES
from models.hf_transformers import HF_ALIASES, repo_id
from models.registry import get_family
from models.resolve import hf_cached_snapshot, local_model_dir, weights_bytes

if TYPE_CHECKING:
    from core.model_settings import CustomModel
    from core.settings import Settings
    from models.manager import ModelManager

__all__ = [
    "CLIP_NAMES",
    "ClipFamily",
    "SentenceTransformersFamily",
    "TransformersFamily",
    "build_manager",
    "family_of",
    "make_loader",
    "make_size_hint",
]
TRANSFORMERS_NAMES = frozenset([*HF_ALIASES, *HF_ALIASES.values()])
#: name prefixes that pick a family (matched in any case, as :func:`family_of` and the loaders do)
HF_PREFIXES = ("hf:", "transformers:")
FAMILY_PREFIXES = (*HF_PREFIXES, *CLIP_PREFIXES)


def family_of(name: str, custom: CustomModel | None = None) -> str:
    """The family that loads ``name``: ``sentence-transformers``, ``transformers``, ``clip``, or the plugin
    family a custom entry names."""
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


class SentenceTransformersFamily(ModelFamily):
    """sentence-transformers models (models/sentence_transformers.py); the default family."""

    def load(self, spec: ModelSpec) -> Embedder:
        from models.sentence_transformers import load_sentence_transformer

        return load_sentence_transformer(
            spec.name, max_length=spec.max_length, normalize=spec.normalize, backend=spec.backend, **_common(spec)
        )

    def size_hint(self, spec: ModelSpec) -> int | None:
        return _hub_weights_bytes(spec)


class TransformersFamily(ModelFamily):
    """Hugging Face transformers models with mean or CLS pooling (models/hf_transformers.py)."""

    def load(self, spec: ModelSpec) -> Embedder:
        from models.hf_transformers import load_hf_transformer

        return load_hf_transformer(
            spec.name,
            pooling=spec.pooling or "mean",  # type: ignore[arg-type] - the settings allow mean and cls only
            max_length=spec.max_length,
            normalize=spec.normalize,
            backend=spec.backend,
            **_common(spec),
        )

    def size_hint(self, spec: ModelSpec) -> int | None:
        return _hub_weights_bytes(spec)


class ClipFamily(ModelFamily):
    """CLIP models through open_clip (models/clip.py): images and texts."""

    def load(self, spec: ModelSpec) -> Embedder:
        from models.clip import load_clip

        return load_clip(spec.name, normalize=spec.normalize, **_common(spec))

    def size_hint(self, spec: ModelSpec) -> int | None:
        return weights_bytes(local_clip_dir(spec.name, spec.cache_dir, spec.path))


def _common(spec: ModelSpec) -> dict[str, object]:
    return {
        "device": spec.device,
        "cache_dir": spec.cache_dir,
        "allow_download": spec.allow_download,
        "path": spec.path,
    }


def _hub_weights_bytes(spec: ModelSpec) -> int | None:
    repo = repo_id(spec.path or spec.name)
    local = local_model_dir(repo, spec.cache_dir) or (None if spec.path else hf_cached_snapshot(repo, spec.cache_dir))
    return weights_bytes(local)


def model_spec(
    name: str,
    entry: CustomModel | None,
    *,
    device: str,
    cache_dir: str | None,
    allow_download: bool = False,
    backend: str = "auto",
) -> ModelSpec:
    """What a family is asked to load for ``name`` (its custom entry, if any, and the worker's settings)."""
    if entry is None:
        return ModelSpec(name=name, device=device, cache_dir=cache_dir, allow_download=allow_download, backend=backend)
    return ModelSpec(
        name=name,
        device=device,
        cache_dir=cache_dir,
        allow_download=allow_download,
        backend=backend,
        path=entry.path,
        max_length=entry.max_length,
        normalize=entry.normalize,
        pooling=entry.pooling,
        options=dict(entry.options),
    )


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

    The family is :func:`family_of` the name, found in the registry
    (models/registry.py): a built-in family or a plugin's. ``backend``
    (``models.backend``) says whether text transformers may run in
    ONNX Runtime on the CPU (models/onnx_runtime.py); CLIP always runs in torch.
    The loader blocks (it reads weights) and raises
    :class:`~core.errors.ModelLoadError` for a model it cannot find or read, or
    whose family is not installed, and, when ``allowed`` names patterns
    (``models.allowed``), for a name none of them matches, before it looks at
    the disk or the network.
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
        spec = model_spec(
            name, entry, device=device, cache_dir=cache_dir, allow_download=allow_download, backend=backend
        )
        return get_family(family_of(name, entry), model=name).load(spec)

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
    """Estimate a model's memory before loading it, by its family's :meth:`~models.base.ModelFamily.size_hint`
    (the built-in ones: from its weight files on disk). None when unknown, for a family that is not installed,
    and for a name ``allowed`` refuses: the loader refuses it without looking at the disk."""
    entries = {entry.name: entry for entry in custom_models}

    def hint(name: str) -> int | None:
        if not is_allowed(name, allowed):
            return None
        entry = entries.get(name)
        try:
            family = get_family(family_of(name, entry), model=name)
        except ModelLoadError:
            return None  # the loader raises it, with what to do
        return family.size_hint(model_spec(name, entry, device="cpu", cache_dir=cache_dir))

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
    never unloaded for being idle. ``models.parallel_calls`` sets how many model calls run at once and with how
    many torch threads each (:func:`models.device.call_plan`). Raises :class:`ConfigError` for a custom
    entry whose plugin family cannot be loaded or refuses the entry.
    """
    from models.device import call_plan
    from models.manager import BUDGET_SETTING, ModelManager

    budget, setting = settings.models_memory_budget, BUDGET_SETTING
    if device.startswith("cuda") and settings.gpu_memory_limit:
        budget, setting = settings.gpu_memory_limit, "VECTORIZE_WORKER_GPU_MEMORY_LIMIT (YAML device.gpu_memory_limit)"
    custom = settings.custom_models
    check_custom_families(custom, device=device, cache_dir=settings.models_cache_dir)
    allowed = allowed_models(settings)
    parallel_calls, call_threads = call_plan(device, settings.models_parallel_calls)
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
        parallel_calls=parallel_calls,
        call_threads=call_threads,
    )


def check_custom_families(custom_models: Sequence[CustomModel], *, device: str, cache_dir: str | None) -> None:
    """Import the plugin family of every custom entry that names one and let it check the entry
    (:meth:`~models.base.ModelFamily.check`), so a broken plugin or a bad entry stops start-up instead of
    failing every task of that model. Raises :class:`ConfigError` naming each bad entry."""
    problems = []
    for entry in custom_models:
        if entry.family is None or entry.family in BUILTIN_FAMILIES:
            continue
        try:
            family = get_family(entry.family, model=entry.name)
            family.check(model_spec(entry.name, entry, device=device, cache_dir=cache_dir))
        except ModelLoadError as exc:
            problems.append(str(exc))
        except ValueError as exc:
            problems.append(f"model {entry.name} (family {entry.family}): {exc}")
    if problems:
        raise ConfigError(
            "Invalid custom model entries under models.sentence_transformers (VECTORIZE_WORKER_CUSTOM_MODELS); "
            "the worker will not start:\n  - " + "\n  - ".join(problems)
        )
