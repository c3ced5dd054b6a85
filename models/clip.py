"""The CLIP family through open_clip: images and texts into one vector space.

Names: the OpenAI names ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14`` map to
open_clip's ``ViT-B-32`` … with the ``openai`` weights; ``clip:<arch>`` and
``open_clip:<arch>`` take any open_clip architecture, optionally with a
weights tag after ``@`` (``open_clip:ViT-B-32@laion2b_s34b_b79k``).

A local model is a directory in open_clip's Hugging Face layout:
``open_clip_config.json`` (``{"model_cfg": {...}, "preprocess_cfg": {...}}``)
next to the weights (``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidTaskError, ModelLoadError
from models.base import EmbedderInfo, TorchEmbedder, l2_normalize
from models.resolve import downloads_allowed, first_line, local_model_dir, missing_model_error
from models.tokenizers import TextTokenizer, open_clip_text_tokenizer

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("worker.model_manager")
FAMILY = "clip"
CLIP_NAMES: dict[str, str] = {"ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14"}
PREFIXES = ("open_clip:", "clip:")
DEFAULT_PRETRAINED = "openai"
CONFIG_FILE = "open_clip_config.json"
LAYOUT = f" ({CONFIG_FILE} + open_clip_model.safetensors, open_clip's Hugging Face layout)"


@dataclass(frozen=True)
class ClipName:
    base: str  # the name without its prefix and tag (ViT-B/32)
    arch: str  # open_clip's architecture (ViT-B-32)
    pretrained: str  # open_clip's weights tag (openai)


def is_clip_name(name: str) -> bool:
    return name in CLIP_NAMES or name.lower().startswith(PREFIXES)


def parse_clip_name(name: str) -> ClipName:
    base = name
    for prefix in PREFIXES:
        if base.lower().startswith(prefix):
            base = base[len(prefix) :]
            break
    pretrained = DEFAULT_PRETRAINED
    if "@" in base:
        base, pretrained = base.split("@", 1)
    return ClipName(base=base, arch=CLIP_NAMES.get(base, base.replace("/", "-")), pretrained=pretrained)


class ClipEmbedder(TorchEmbedder):
    """An open_clip model: ``embed_images`` with the vision tower, ``embed_texts`` with the text tower."""

    def __init__(
        self,
        name: str,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        *,
        device: str,
        source: str,
        normalize: bool | None,
    ) -> None:
        import torch

        self._model = model.eval()
        self._preprocess = preprocess
        self._tok = tokenizer
        self._normalize_default = normalize
        self.context_length = int(getattr(tokenizer, "context_length", None) or 77)
        self._text_tokenizer: TextTokenizer | None = None
        with torch.inference_mode():
            dim = int(model.encode_text(tokenizer(["dimension"]).to(device)).shape[-1])
        self._info = EmbedderInfo(
            name=name,
            family=FAMILY,
            dim=dim,
            device=device,
            modalities=("text", "image"),
            max_tokens=self.context_length,
            source=source,
            engine="torch",
            engine_reason="the clip family runs on torch float32 (models.backend applies to the text families)",
        )

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        def encode(batch: Sequence[str]) -> Any:
            return self._model.encode_text(self._tok(list(batch)).to(self._info.device))

        return self._run(texts, encode, batch_size, normalize)

    def embed_images(self, images: Sequence[Image], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        import torch

        def encode(batch: Sequence[Image]) -> Any:
            pixels = []
            for image in batch:
                if not hasattr(image, "convert"):
                    raise InvalidTaskError(
                        f"Model {self._info.name} embeds PIL images, got {type(image).__name__}; decode the image first."
                    )
                pixels.append(self._preprocess(image.convert("RGB")))
            return self._model.encode_image(torch.stack(pixels).to(self._info.device))

        return self._run(images, encode, batch_size, normalize)

    def _run(self, items: Sequence[Any], encode: Any, batch_size: int, normalize: bool | None) -> np.ndarray:
        import torch

        parts = [np.zeros((0, self._info.dim), dtype=np.float32)]
        step = max(1, int(batch_size))
        with torch.inference_mode():
            for start in range(0, len(items), step):
                parts.append(encode(items[start : start + step]).float().cpu().numpy())
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        if normalize is None:
            normalize = self._normalize_default
        return l2_normalize(vectors) if normalize else vectors

    def text_tokenizer(self) -> TextTokenizer:
        if self._text_tokenizer is None:
            self._text_tokenizer = open_clip_text_tokenizer(self._tok, self.context_length, model=self._info.name)
        return self._text_tokenizer


def local_clip_dir(name: str, cache_dir: str | None, path: str | None = None) -> Path | None:
    """A directory in open_clip's layout for ``name``: ``path``, the name as a path, or under ``cache_dir``."""
    spec = parse_clip_name(name)
    extra = [spec.arch, f"{spec.arch}-{spec.pretrained}"]
    return local_model_dir(path or spec.base, cache_dir, marker=CONFIG_FILE, extra=[] if path else extra)


def cached_weights(arch: str, pretrained: str, cache_dir: str | None) -> str | None:
    """The weights file of an open_clip tag if it is already downloaded (never downloads)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for root in [cache_dir, None]:
            for file in names:
                found = try_to_load_from_cache(repo, file, cache_dir=root)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = cfg.get("url", "")
    if url:
        for root in [cache_dir, os.path.expanduser("~/.cache/clip")]:
            candidate = os.path.join(root, os.path.basename(url)) if root else ""
            if candidate and os.path.isfile(candidate):
                return candidate
    return None


def load_clip(
    name: str,
    *,
    device: str,
    cache_dir: str | None,
    allow_download: bool,
    path: str | None = None,
    normalize: bool | None = None,
) -> ClipEmbedder:
    """Load a CLIP model offline first; raise :class:`ModelLoadError` naming where we looked. Blocks."""
    try:
        import open_clip
    except ImportError as exc:
        raise ModelLoadError(
            f"Failed to load model {name}: open_clip is not installed ({exc}); pip install open_clip_torch"
        ) from None
    spec = parse_clip_name(name)
    local = local_clip_dir(name, cache_dir, path)
    if path is not None and local is None:
        raise ModelLoadError(
            f"Failed to load model {name}: its configured path {path} holds no {CONFIG_FILE}; "
            f"put the model there{LAYOUT} or fix the path of this entry under models.sentence_transformers."
        )
    try:
        if local is not None:
            source = str(local)
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{local}", device=device)
            tokenizer = open_clip.get_tokenizer(f"local-dir:{local}")
        else:
            model, preprocess, tokenizer, source = _load_named(spec, device, cache_dir, allow_download)
    except ModelLoadError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        where = f" from {local}" if local is not None else ""
        raise ModelLoadError(
            f"Failed to load CLIP model {name}{where}: {type(exc).__name__}: {first_line(exc)}. "
            f"A local CLIP model needs{LAYOUT}."
        ) from None
    log.info("Model %s loaded successfully from %s on %s", name, source, device)
    return ClipEmbedder(name, model, preprocess, tokenizer, device=device, source=source, normalize=normalize)


def _load_named(spec: ClipName, device: str, cache_dir: str | None, allow_download: bool) -> tuple[Any, ...]:
    import open_clip

    name = spec.base
    if open_clip.get_model_config(spec.arch) is None:
        raise ModelLoadError(
            f"Failed to load model {name}: {spec.arch} is not an open_clip architecture and no folder "
            f"{Path(cache_dir or './.state/models') / spec.arch}{LAYOUT} exists. Known CLIP names: "
            f"{', '.join(CLIP_NAMES)}, or clip:<arch> for one of open_clip.list_models()."
        )
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.arch)) or "none"
        raise ModelLoadError(
            f"Failed to load model {name}: open_clip has no weights {spec.pretrained!r} for {spec.arch} "
            f"(known: {tags}); write clip:{spec.arch}@<tag>."
        )
    quick_gelu = bool(cfg.get("quick_gelu", False))
    weights = cached_weights(spec.arch, spec.pretrained, cache_dir)
    if weights is None and not downloads_allowed(allow_download):
        raise missing_model_error(
            spec.base,
            cache_dir,
            allow_download=allow_download,
            extra=[spec.arch],
            more=[f"open_clip's cache for {spec.arch}@{spec.pretrained} (~/.cache/clip)"],
            layout=LAYOUT,
            folder=spec.arch,
        )
    preprocess_cfg = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec.arch,
        pretrained=weights or spec.pretrained,
        device=device,
        cache_dir=cache_dir,
        force_quick_gelu=quick_gelu,
        force_preprocess_cfg=preprocess_cfg or None,
    )
    return model, preprocess, open_clip.get_tokenizer(spec.arch), weights or f"open_clip:{spec.arch}@{spec.pretrained}"
