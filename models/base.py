"""The ports of a model family: :class:`ModelFamily` loads a :class:`ModelSpec` into an :class:`Embedder`.

The built-in families (models/families.py) and a plugin's (an installed
package registering a :class:`ModelFamily` under the entry-point group
``vectorize_worker.model_families``, models/registry.py) implement the same
two classes; the model manager (models/manager.py) then treats every
embedder alike: memory accounting, LRU, warm-up, one device thread.
docs/models.md ("Model family plugins") walks through an example.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import UnsupportedTaskError

_log = logging.getLogger("worker.model_manager")

if TYPE_CHECKING:
    from PIL.Image import Image

    from models.tokenizers import TextTokenizer


@dataclass(frozen=True)
class EmbedderInfo:
    name: str  # the name tasks use (e.g. sentence-transformers/all-MiniLM-L6-v2)
    family: str  # sentence-transformers, transformers, clip, ...
    dim: int  # vector dimension
    device: str  # cpu, cuda, cuda:1, mps
    modalities: tuple[str, ...] = ("text",)
    max_batch: int = 256
    max_tokens: int = 512  # the model's maximum sequence length in tokens
    source: str = ""  # where it was loaded from (path or package)
    backend: str = "torch"  # what runs it: torch or onnxruntime (models/onnx_runtime.py)
    # the engine (models/engines.py): torch, torch-bf16, torch-fp16, onnx, onnx-int8, onnx-int8-static; empty: the
    # family does not say
    engine: str = ""
    engine_reason: str = ""  # why that engine: models.backend forced it, or auto's measurements (ms per engine)


class Embedder(ABC):
    """A loaded model that turns inputs into vectors.

    Every ``embed_*`` method blocks (it runs the model) and must be called from
    a worker thread, never from the event loop. Implementations are not
    required to be thread-safe: the manager runs one call at a time on a model
    unless it sets :attr:`concurrent_calls` (its ``embed_*`` methods may then
    run on several threads at once). They raise
    :class:`~core.errors.PermanentError` for inputs they cannot handle.

    A family must implement :attr:`info` and :meth:`embed_texts` (the
    manager warms every text model up with one). The rest have defaults:
    :meth:`embed_images` (only with ``"image"`` in ``info.modalities``),
    :meth:`text_tokenizer` (document chunking and the long-text check need
    it), :meth:`token_lengths` (batching by length), :meth:`memory_bytes`
    (the memory budget counts it; 0 = free), :meth:`vector_settings` and
    :meth:`weights_digest` (the embedding cache's key, models/fingerprint.py),
    :meth:`close`.
    """

    #: whether ``embed_*`` may run on several threads at once (models.parallel_calls); False: one call at a time
    concurrent_calls: bool = False

    @property
    @abstractmethod
    def info(self) -> EmbedderInfo: ...

    @abstractmethod
    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim), rows in input order."""

    def embed_images(self, images: Sequence[Image], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        """Return a float32 array of shape (len(images), dim), rows in input order.

        ``images`` are decoded PIL images (any mode; converted to what the
        model needs). Only families with ``"image"`` in ``info.modalities``
        implement it; the others raise :class:`~core.errors.UnsupportedTaskError`.
        """
        raise UnsupportedTaskError(
            f"Model {self.info.name} ({self.info.family}) cannot embed images; "
            "send image tasks with a CLIP model such as ViT-B/32."
        )

    def text_tokenizer(self) -> TextTokenizer:
        """The model's tokenizer for counting tokens and cutting documents into chunks.

        Returns an object with ``max_tokens`` (content tokens that fit one model
        input), ``count(text)`` and ``offsets(text)`` (character spans of the
        content tokens); see :class:`models.tokenizers.TextTokenizer`. Cheap to
        call repeatedly (the same object is returned). Raises
        :class:`~core.errors.UnsupportedTaskError` when the model cannot report
        token offsets.
        """
        raise UnsupportedTaskError(f"Model {self.info.name} ({self.info.family}) has no text tokenizer.")

    def token_lengths(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens each text takes in one model input (special tokens included, cut at the model's limit).

        Batching sorts texts by it so each model call pads as little as
        possible; ``None`` when the family has no fast tokenizer that can
        tell (the caller then estimates from the characters).
        """
        try:
            tokenizer = self.text_tokenizer()
        except UnsupportedTaskError:
            return None
        lengths = getattr(tokenizer, "lengths", None)
        return lengths(texts) if lengths is not None else None

    def memory_bytes(self) -> int:
        """Bytes held by the model's parameters and buffers (0 when unknown). Does not block."""
        return 0

    def vector_settings(self) -> dict[str, Any]:
        """What shapes this model's vectors besides its weights (length limit, pooling, default normalisation).

        Part of the model's identity (models/fingerprint.py), so a change here makes the embedding cache miss.
        """
        return {"max_tokens": self.info.max_tokens, "modalities": list(self.info.modalities)}

    def weights_digest(self) -> str:
        """A hash of the weights held in memory, for a model loaded without files to hash; blocks while it
        reads them. The base has no weights to read: the name and settings stand for the model."""
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model's memory; the embedder is unusable afterwards."""


class TorchEmbedder(Embedder):
    """An embedder around one torch module held in ``_model``, described by ``_info``.

    Shares what every torch family does alike: ``info``, the memory the
    module holds, and releasing it on ``close``. A text family whose
    transformer may run in another engine (models/engines.py: ONNX Runtime,
    bfloat16/float16 torch, int8) implements :meth:`_onnx_parts` and
    :meth:`_embed_with`; :meth:`select_engine` then keeps that engine's
    encoder (a callable from tokenizer output to token states) in ``_encoder``.
    """

    _info: EmbedderInfo
    _model: Any = None
    _encoder: Any = None  # None: the transformer runs in torch float32 (the family's own path)
    # torch float32 chosen: the transformer traced on the same weights (engines.TorchTransformer), so its calls hold
    # no GIL between operators and may run concurrently; None: the family's own path
    _fp32_encoder: Any = None
    _released_digest: str | None = None  # the float32 weights' digest, taken before a torch engine released them
    _normalize_default: bool | None = None  # a custom entry's normalize: what a task that does not say gets
    pooling: str | None = None  # set by the families that choose one (transformers: mean or cls)

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    def vector_settings(self) -> dict[str, Any]:
        return {**super().vector_settings(), "pooling": self.pooling, "normalize_default": self._normalize_default}

    def weights_digest(self) -> str:
        """SHA-256 of the module's parameters and buffers by name (those ONNX Runtime now runs are released:
        the export's folder name, itself a hash of those weights, stands for them; those a bfloat16/float16
        copy now runs were hashed before they were released)."""
        import hashlib

        import torch

        if self._released_digest is not None:
            return self._released_digest
        digest = hashlib.sha256()
        if self._model is not None:
            for key, tensor in self._model.state_dict().items():
                if tensor.device.type == "meta":
                    continue
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        path = getattr(self._encoder, "path", None)
        if path is not None:
            digest.update(f"onnx:{path.parent.name}".encode())
        return digest.hexdigest()

    def memory_bytes(self) -> int:
        held = module_bytes(self._model) if self._model is not None else 0
        return held + (self._encoder.memory_bytes() if self._encoder is not None else 0)

    def select_engine(self, backend: str, cache_dir: str | None) -> None:
        """Run the transformer in the engine ``backend`` (``models.backend``) names, or under ``auto`` in the
        fastest one that matches torch float32 here (models/engines.py); blocks while it measures (seconds).

        The family supplies :meth:`_onnx_parts` and :meth:`_embed_with`; when another engine than torch
        float32 wins, the transformer's float32 weights are released. Raises
        :class:`~core.errors.ModelLoadError` when a forced engine cannot run or does not match.
        """
        from models import engines
        from models.onnx_runtime import (
            PROBE_TEXTS,
            OnnxUnavailable,
            check_parity,
            exported_model,
            open_session,
            quantized_model,
            static_quantized_model,
        )

        name, device = self._info.name, self._info.device
        if backend == "auto":
            try:
                self._onnx_parts()
            except OnnxUnavailable as exc:  # nothing to measure: the model runs in torch float32 only
                _log.warning(
                    "Model %s runs on torch, not ONNX Runtime: %s. Set VECTORIZE_WORKER_MODELS_BACKEND=torch (YAML "
                    "models.backend: torch) to skip the attempt.",
                    name,
                    exc,
                )
                reason = f"auto: torch float32, the only engine this model runs in ({exc})"
                self._info = replace(self._info, engine=engines.TORCH, engine_reason=reason)
                return
        exported: list[tuple[list[str], Any]] = []

        def export() -> tuple[list[str], Any]:
            if not exported:
                transformer, tokenizer = self._onnx_parts()
                sample = tokenizer(
                    list(PROBE_TEXTS[:2]),
                    padding=True,
                    truncation=True,
                    max_length=self._info.max_tokens,
                    return_tensors="pt",
                )
                exported.append(exported_model(transformer, sample, cache_dir=cache_dir))
            return exported[0]

        def int8() -> Any:
            names, path = export()
            return open_session(quantized_model(path), names)

        def int8_static() -> Any:
            names, path = export()
            tokenizer = self._onnx_parts()[1]
            return open_session(static_quantized_model(path, names, tokenizer, self._info.max_tokens), names)

        candidates = [
            engines.Candidate(
                engines.ONNX,
                lambda: open_session(export()[1], export()[0]),
                strict=lambda g, e: check_parity(name, g, e),
            ),
            engines.Candidate(
                engines.TORCH_BF16, lambda: engines.reduced_precision(self._onnx_parts()[0], engines.TORCH_BF16, device)
            ),
            engines.Candidate(
                engines.TORCH_FP16, lambda: engines.reduced_precision(self._onnx_parts()[0], engines.TORCH_FP16, device)
            ),
            engines.Candidate(engines.ONNX_INT8, int8, quantized=True),
            engines.Candidate(engines.ONNX_INT8_STATIC, int8_static, quantized=True),
        ]
        support = engines.engine_support(device, cpu_flags=engines.cpu_description()[1], cuda_bf16=_cuda_bf16(device))
        cache = None
        if backend == "auto" and any(support[c.engine] is None for c in candidates):
            cache = self._choice_cache(cache_dir, support)
        choice = engines.choose(
            name, backend, device=device, candidates=candidates, support=support, embed=self._embed_with, cache=cache
        )
        if choice.encoder is not None:
            if getattr(choice.encoder, "path", None) is None and not _is_path(self._info.source):
                self._released_digest = self.weights_digest()  # the identity stays that of the float32 weights
            self._encoder = choice.encoder
            self._onnx_parts()[0].to("meta")  # the parameters' memory goes; the module's structure stays
        else:
            import torch

            try:
                self._fp32_encoder = engines.TorchTransformer(self._onnx_parts()[0], torch.float32, device)
            except OnnxUnavailable:  # no transformers module to run apart: the family's own path
                self._fp32_encoder = None
        self._info = replace(
            self._info, backend=engines.RUNTIME[choice.engine], engine=choice.engine, engine_reason=choice.reason
        )

    def _choice_cache(self, cache_dir: str | None, support: Mapping[str, str | None]) -> Any:
        """Where this model's measured choice is kept on this machine (None when its identity cannot be told)."""
        from models import engines
        from models.fingerprint import model_identity

        try:
            identity = model_identity(self)
            machine = engines.machine_signature(self._info.device)
        except Exception as exc:  # noqa: BLE001 - no cache: the choice is measured at every load
            _log.info("Model %s: its engine choice is not cached (%s: %s)", self._info.name, type(exc).__name__, exc)
            return None
        usable = [e for e, why in support.items() if why is None]
        return engines.ChoiceCache(engines.cache_root(cache_dir), identity, machine, usable)

    def _runner(self) -> Any:
        """What runs the transformer in ``embed_texts``: the chosen engine's encoder, else the float32 transformer
        traced (None: the family's own torch path, untraced)."""
        return self._encoder if self._encoder is not None else self._fp32_encoder

    def _onnx_parts(self) -> tuple[Any, Any]:
        """The ``transformers`` model another engine would run, and its tokenizer; raises ``OnnxUnavailable``."""
        from models.onnx_runtime import OnnxUnavailable

        raise OnnxUnavailable(f"the {self._info.family} family runs on torch float32 only")

    def _embed_with(self, texts: Sequence[str], batch_size: int, encoder: Any) -> np.ndarray:
        """Vectors of ``texts`` (not normalised), the transformer run by ``encoder`` or by torch when None."""
        raise NotImplementedError

    def close(self) -> None:
        from models.device import release_memory

        self._model = None
        self._encoder = None
        self._fp32_encoder = None
        release_memory(self._info.device)


@dataclass(frozen=True)
class ModelSpec:
    """What a :class:`ModelFamily` is asked to load: the model's name, its custom entry and the worker's settings."""

    name: str  # the name tasks send as model_name (and the custom entry's name)
    device: str  # cpu, cuda, cuda:1, mps (models/device.py resolved it)
    cache_dir: str | None = None  # models.cache_dir: where models may be looked up or downloaded to
    allow_download: bool = False  # models.allow_download and not HF_HUB_OFFLINE (models.resolve.downloads_allowed)
    backend: str = "auto"  # models.backend: auto or an engine of models/engines.py (torch, onnx-int8-static, ...)
    path: str | None = None  # the custom entry's path
    max_length: int | None = None  # the custom entry's max_length (tokens per input)
    normalize: bool | None = None  # the custom entry's normalize: the default when a task does not say
    pooling: str | None = None  # the custom entry's pooling (transformers: mean or cls)
    options: Mapping[str, Any] = field(default_factory=dict)  # a plugin family's own keys of the custom entry


class ModelFamily(ABC):
    """A model family: turns a :class:`ModelSpec` into a loaded :class:`Embedder`.

    A custom model entry names its family (``family: hashing``); the worker
    finds the family by that name among the entry points of the group
    ``vectorize_worker.model_families`` (models/registry.py). The entry point
    names a subclass (instantiated once, without arguments) or an instance.
    The manager calls :meth:`load` on its device thread and keeps the result
    under the same rules as every built-in model: its size is
    :meth:`Embedder.memory_bytes`, it is warmed up with one text, evicted
    least recently used first and closed (:meth:`Embedder.close`) when it goes.
    """

    @abstractmethod
    def load(self, spec: ModelSpec) -> Embedder:
        """Load the model; may block (reads weights, downloads when ``spec.allow_download``).

        Raise :class:`~core.errors.ModelLoadError` with what failed and what to do for a model that cannot
        be found or read: its tasks fail with that message, the worker goes on.
        """

    def check(self, spec: ModelSpec) -> None:  # noqa: B027 - optional hook
        """Refuse a custom entry this family cannot load (unknown or bad ``options``) by raising ``ValueError``
        naming the key and what to write. Called at start-up for every custom entry of the family, so a bad
        entry stops the worker instead of failing its tasks; must not block (no loading)."""

    def size_hint(self, spec: ModelSpec) -> int | None:
        """Bytes the model will hold once loaded, estimated before loading it (None: unknown). Must not block
        for long (a look at the disk at most): the manager makes room for it in the memory budget first."""
        return None


def as_tensor(states: Any) -> Any:
    """Token states from an engine as a float torch tensor (ONNX Runtime gives numpy arrays)."""
    import torch

    return torch.from_numpy(states) if isinstance(states, np.ndarray) else states


def _cuda_bf16(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - no CUDA runtime: no bfloat16 engine
        return False


def _is_path(source: str) -> bool:
    from pathlib import Path

    try:
        return bool(source) and Path(source).expanduser().exists()
    except (OSError, ValueError):
        return False


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)


def module_bytes(module: object) -> int:
    """Bytes of a torch module's parameters and buffers (what it holds on its device)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:  # type: ignore[attr-defined]
        if tensor.device.type != "meta":  # released weights (a transformer now run by ONNX Runtime)
            total += tensor.numel() * tensor.element_size()
    return total


def format_bytes(value: int | None) -> str:
    if value is None:
        return "unlimited"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover
