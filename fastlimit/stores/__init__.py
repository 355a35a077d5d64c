"""Stores: where limit state lives.

- :mod:`fastlimit.stores.table`: :class:`SharedTable`, the memory-mapped
  table every process on a host shares (the compiled core does its work);
- :mod:`fastlimit.stores.redis`: :class:`RedisBackend` and
  :class:`AsyncRedisBackend`, the same arithmetic on Redis for many hosts
  (redis-py is imported only when first used);
- :mod:`fastlimit.stores.fleet`: :class:`FleetBackend`, global limits
  leased per host from Redis and served from the host's table;
- :mod:`fastlimit.stores.contract`: what a store provides, written as
  protocols, for anyone writing another one;
- :mod:`fastlimit.stores.metrics`: the tables' counters for Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastlimit._lazy import lazy_attributes

if TYPE_CHECKING:
    from fastlimit.stores.fleet import FleetBackend as FleetBackend
    from fastlimit.stores.redis import AsyncRedisBackend as AsyncRedisBackend
    from fastlimit.stores.redis import RedisBackend as RedisBackend
    from fastlimit.stores.table import SharedTable as SharedTable

__all__ = ["AsyncRedisBackend", "FleetBackend", "RedisBackend", "SharedTable"]

__getattr__ = lazy_attributes(__name__, {
    "AsyncRedisBackend": "fastlimit.stores.redis",
    "FleetBackend": "fastlimit.stores.fleet",
    "RedisBackend": "fastlimit.stores.redis",
    "SharedTable": "fastlimit.stores.table",
}, globals())
