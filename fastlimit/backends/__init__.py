"""The stores' former home: :mod:`fastlimit.stores` holds them now.

``fastlimit.backends.RedisBackend`` and ``fastlimit.backends.redis`` keep
working; redis-py is imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastlimit._lazy import lazy_attributes

if TYPE_CHECKING:
    from fastlimit.stores.redis import AsyncRedisBackend as AsyncRedisBackend
    from fastlimit.stores.redis import RedisBackend as RedisBackend

__all__ = ["AsyncRedisBackend", "RedisBackend"]

__getattr__ = lazy_attributes(__name__, dict.fromkeys(__all__, "fastlimit.stores.redis"),
                              globals())
