"""A loaded model's identity: its name, a hash of its weights and configuration, and what shapes its vectors.

The embedding cache (engine/embedding_cache.py) keys every vector by this
identity, so a model whose weights, configuration, pooling, length limit or
default normalisation changed never hits the vectors of the old one.

The weights and configuration are hashed by content (SHA-256), never by
size or modification time alone: a model re-saved with the same size and
an old mtime must not pass for the old one. Hashing reads every byte once
per file (all-MiniLM-L6-v2's 87 MiB: about 0.2 s); each file's digest is
then remembered in this process by (path, size, mtime, ctime, inode), so
loading the model again after the manager evicted it costs a ``stat`` per
file. The ctime is in that key because no one can set it back: a file
rewritten in place with its old size and mtime restored is hashed again.

The same hash is the ``revision`` of the model's identity record
(:func:`identity_record`, :class:`core.versioning.ModelIdentity`): every
stored vector carries it, and a collection is bound to one.

What is hashed in a model folder: the weight files the loaders read
(``*.safetensors`` when there are any, else ``*.bin``/``*.pt``/``*.pth``) and
every configuration or tokenizer file (``*.json``, ``*.txt``, ``*.model``,
``*.yaml``/``*.yml``, ``*.tiktoken``, ``merges``/``vocab``), in every subfolder
(sentence-transformers keeps its pooling in ``1_Pooling/config.json``) but
not in ``onnx/`` or ``openvino/`` (exports of the hub repository that no
loader here reads) nor hidden folders. A model whose source is a single
file (an open_clip weights file) hashes that file; a model with no files to
read (named from a hub or open_clip tag the loader resolved itself) hashes
its parameters in memory (:meth:`models.base.Embedder.weights_digest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from core.versioning import ModelIdentity
from models.base import Embedder
from models.resolve import WEIGHT_SUFFIXES

#: bump to make every cached vector of every model miss (a change in what the identity covers)
IDENTITY_VERSION = "1"
CONFIG_SUFFIXES = (".json", ".txt", ".model", ".yaml", ".yml", ".tiktoken")
CONFIG_NAMES = ("merges", "vocab")
SKIPPED_FOLDERS = frozenset({"onnx", "openvino"})
_CHUNK = 1 << 20

_digests: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime, ctime, inode) -> sha256 hex
_digests_lock = threading.Lock()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, remembered while its path, size, mtime, ctime and inode stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _digests_lock:
        _digests[key] = value
    return value


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that decide its vectors (see the module doc), sorted."""
    weights: list[Path] = []
    configs: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d.lower() not in SKIPPED_FOLDERS)
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root) / name
            lower = name.lower()
            if lower.endswith(WEIGHT_SUFFIXES):
                weights.append(path)
            elif lower.endswith(CONFIG_SUFFIXES) or lower.startswith(CONFIG_NAMES):
                configs.append(path)
    safetensors = [p for p in weights if p.suffix == ".safetensors"]
    return sorted([*(safetensors or weights), *configs])


def source_digest(source: str) -> str | None:
    """SHA-256 over a model's files at ``source`` (a folder or a file); None when it is neither."""
    try:
        path = Path(source).expanduser()
        if path.is_file():
            return file_digest(path)
        if not path.is_dir():
            return None
        digest = hashlib.sha256()
        for file in model_files(path):
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(b"\0")
            digest.update(file_digest(file).encode())
            digest.update(b"\n")
        return digest.hexdigest()
    except (OSError, ValueError):  # an unreadable file: the caller falls back to the weights in memory
        return None


def model_identity(embedder: Embedder) -> str:
    """SHA-256 hex of what decides the vectors ``embedder`` computes for an input (blocks: reads files).

    Covers the name, family and dimension, the settings that shape vectors
    (:meth:`~models.base.Embedder.vector_settings`: pooling, length limit,
    default normalisation) and the weights and configuration by content.
    Not covered: the backend (ONNX Runtime's vectors match torch's to 1e-4 of
    their norm, checked at load) and the device, so CPU and GPU workers share
    one cache.
    """
    info = embedder.info
    weights = source_digest(info.source) if info.source else None
    if weights is None:
        weights = "memory:" + embedder.weights_digest()
    parts = {
        "version": IDENTITY_VERSION,
        "name": info.name,
        "family": info.family,
        "dim": info.dim,
        "settings": embedder.vector_settings(),
        "weights": weights,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def identity_record(embedder: Embedder, revision: str | None = None) -> ModelIdentity:
    """The model's identity record: its name, ``revision`` (:func:`model_identity`, computed when not given:
    blocks, reads files), dimension, default normalisation and pooling (from
    :meth:`~models.base.Embedder.vector_settings`) and family."""
    info = embedder.info
    settings = embedder.vector_settings()
    normalize = settings.get("normalize_default")
    pooling = settings.get("pooling")
    return ModelIdentity(
        name=info.name,
        revision=revision if revision is not None else model_identity(embedder),
        dim=info.dim,
        normalize=normalize if isinstance(normalize, bool) else None,
        pooling=pooling if isinstance(pooling, str) else None,
        family=info.family,
    )
