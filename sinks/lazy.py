"""A client opened on first use, shared by the adapter's calls, dropped after a connection failure."""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import Any

from core.errors import StoreUnavailableError


class LazyClient:
    """Mixin for adapters whose client connects once and is rebuilt after an outage.

    Subclasses implement :meth:`_open` (build the client; may raise anything,
    reported as unavailable) and :meth:`_unavailable` (the adapter's message).
    :meth:`_connect` blocks while the client is being built; it is thread-safe.
    """

    _client: Any = None

    def _init_client(self) -> None:
        self._client = None
        self._lock = threading.Lock()

    @abstractmethod
    def _open(self) -> Any: ...

    @abstractmethod
    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError: ...

    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._open()
                except Exception as exc:  # noqa: BLE001 - each client raises its own connect errors
                    raise self._unavailable("connect", exc) from None
            return self._client

    def _forget(self) -> None:
        """Drop the client (after a connection failure, or on close); the next call reconnects."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            self._dropped(client)

    def _dropped(self, client: Any) -> None:
        """Release a dropped client; adapters with more per-client state override this."""
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing a broken client must not raise
            pass
