"""Redis as the embedding cache's shared layer (the ``RemoteVectors`` port of engine/embedding_cache.py).

One ``MGET`` per lookup and one pipelined batch of ``SET key value EX ttl``
per write (no transaction: each entry stands alone). The client has short
timeouts and no retries of its own: the cache gives up on Redis for a while
after one failure instead (a worker must not wait on a dead cache). Errors
leave as :class:`CacheStoreError` with the URL redacted and any password cut
out (ops/heartbeat.py ``redis_error``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import SecretStr
from redis.exceptions import RedisError

from core.errors import RetryableError
from core.secrets import redact_url
from ops.heartbeat import failfast_redis_client, redis_error

if TYPE_CHECKING:
    from core.settings import Settings


class CacheStoreError(RetryableError):
    """The cache's Redis did not answer; the cache goes off for a while, tasks go on."""


class RedisVectors:
    """``get_many``/``set_many`` on one Redis (``redis.url`` and its password and CA settings)."""

    def __init__(
        self,
        url: str,
        *,
        password: SecretStr | None = None,
        ssl_ca_file: str | None = None,
        timeout: float = 0.5,
    ) -> None:
        self.name = f"Redis at {redact_url(url)}"
        self._raw_url, self._password = url, password  # to cut secrets out of the client's messages
        self._client = failfast_redis_client(url, password=password, ssl_ca_file=ssl_ca_file, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisVectors:
        return cls(settings.redis_url, password=settings.redis_password, ssl_ca_file=settings.redis_ssl_ca_file)

    async def get_many(self, keys: Sequence[str]) -> Sequence[bytes | None]:
        try:
            return await self._client.mget(list(keys))
        except (RedisError, OSError) as exc:
            raise CacheStoreError(redis_error(self._raw_url, exc, self._password)) from None

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=ttl_seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheStoreError(redis_error(self._raw_url, exc, self._password)) from None

    async def close(self) -> None:
        await self._client.aclose()
