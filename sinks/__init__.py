"""Where results go: vector database adapters, Kafka records, heartbeats.

Nothing here knows about models.
"""

from __future__ import annotations

from sinks.base import BaseVectorDB, StoredPoint, VectorRecord

__all__ = ["BaseVectorDB", "StoredPoint", "VectorRecord"]
