"""Embedding models: the :class:`Embedder` port, model families and the manager.

Nothing here knows about Kafka or vector databases.
"""

from __future__ import annotations

from models.base import Embedder, EmbedderInfo
from models.manager import ModelManager

__all__ = ["Embedder", "EmbedderInfo", "ModelManager"]
