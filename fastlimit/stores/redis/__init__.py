"""Redis backend: the shared table's GCRA, decision for decision, on Redis.

When limits must hold across hosts, pass a :class:`RedisBackend` where a
:class:`~fastlimit.SharedTable` would go; nothing else changes::

    backend = RedisBackend("redis://10.0.0.5:6379/0")
    api = fastlimit.Limiter("100/1h", store=backend, name="api")
    api.allow("user:42")

See :mod:`fastlimit.stores.redis.backend` for how it works.  It needs
redis-py (``pip install 'fastlimit[redis]'``).
"""

from fastlimit.stores.redis.backend import (
    AsyncRedisBackend,
    AsyncRedisLimiter,
    AsyncRedisQuota,
    RedisBackend,
    RedisGcra,
    RedisLeases,
    RedisQuotaCounter,
    RedisStats,
)

__all__ = ["AsyncRedisBackend", "AsyncRedisLimiter", "AsyncRedisQuota", "RedisBackend",
           "RedisGcra", "RedisLeases", "RedisQuotaCounter", "RedisStats"]
