"""Stores other than the shared table.

:class:`~fastlimit.backends.redis.RedisBackend` and
:class:`~fastlimit.backends.redis.AsyncRedisBackend` run the same GCRA on
Redis (or Valkey) for limits shared by many hosts.  They need redis-py
(``pip install 'fastlimit[redis]'``), imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastlimit.backends.redis import AsyncRedisBackend as AsyncRedisBackend
    from fastlimit.backends.redis import RedisBackend as RedisBackend

__all__ = ["AsyncRedisBackend", "RedisBackend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fastlimit.backends import redis

        return getattr(redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
