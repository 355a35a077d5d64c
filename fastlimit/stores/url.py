"""Storage chosen by a URI, as the framework integrations' ``storage_uri``
settings (and flask-limiter's users) write it.

==========================================  =====================================
``shm://NAME?capacity=100000``              the named shared table (every process
                                            of this user on the host shares it)
``memory://?capacity=65536``                an anonymous table: this process and
                                            the children it forks only
``redis://host:6379/0``, ``rediss://``,     :class:`~fastlimit.RedisBackend`
``unix:///path/redis.sock``
``redis+cluster://host:7000``               a Redis Cluster (redis-py's
                                            ``RedisCluster``), seed node given
``redis+sentinel://h1:26379,h2:26379/svc``  the master of Sentinel service
                                            ``svc`` (``/svc/1``: database 1)
``rediss+cluster://``,                      the same over TLS (as ``?ssl=true``;
``rediss+sentinel://``                      ``ssl_ca_certs=`` and redis-py's other
                                            TLS options in the query)
==========================================  =====================================

Redis URLs are read by :meth:`RedisBackend.from_url <fastlimit.RedisBackend.from_url>`
(:mod:`fastlimit.stores.redis.topology`): they take the backend's options as
query parameters, ``fail`` (local, open, closed, raise), ``prefix``, and in
seconds ``timeout``, ``connect_timeout``, ``retry_interval``,
``max_retry_interval``, ``log_interval`` and ``lease_ttl``; any other
parameter goes to redis-py.  A plain URL to a
cluster node is followed as a cluster; one to a replica is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from fastlimit.errors import ConfigurationError
from fastlimit.stores.table import SharedTable

__all__ = ["REDIS_SCHEMES", "read_url", "shown", "store_from_url"]

# (here, not in stores.redis.topology: reading a URL must not import redis-py)
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster",
                 "redis+sentinel", "rediss+sentinel")
_SCHEMES = ("shm", "memory", *REDIS_SCHEMES)


def store_from_url(url: str) -> Any:
    """The store ``url`` names (see the module's table).

    Raises:
        ConfigurationError: naming the URL and what is accepted.

    Example:
        >>> store_from_url("memory://?capacity=1000").capacity
        1000
    """
    parts, scheme, query = read_url(url, _SCHEMES, "storage URI")
    if scheme in ("shm", "memory"):
        return _table(url, scheme, parts.netloc + parts.path, query)
    return _redis(url)


def _table(url: str, scheme: str, name: str, query: dict[str, str]) -> SharedTable:
    unknown = set(query) - {"capacity"}
    if unknown:
        raise ConfigurationError(
            f"storage URI {url!r}: unknown parameter {sorted(unknown)[0]!r}; a table takes "
            f"capacity=<slots>")
    capacity = None
    if "capacity" in query:
        text = query["capacity"]
        if not text.isdigit() or int(text) < 1:
            raise ConfigurationError(
                f"storage URI {url!r}: capacity must be a positive integer, got {text!r}")
        capacity = int(text)
    if scheme == "memory":
        if name:
            raise ConfigurationError(
                f"storage URI {url!r}: memory:// tables have no name (write "
                f"shm://{name} for a table every process shares)")
        return SharedTable.anonymous(capacity or 65_536)
    if not name:
        raise ConfigurationError(
            f"storage URI {url!r}: expected shm://NAME, the shared table's name")
    return SharedTable.open(name, capacity=capacity)


def _redis(url: str) -> Any:
    # one parser for every Redis URL: the backend's (stores.redis.topology)
    from fastlimit.stores.redis import RedisBackend

    return RedisBackend.from_url(url)


def read_url(url: Any, schemes: Sequence[str],
             what: str) -> tuple[SplitResult, str, dict[str, str]]:
    """``url``'s parts, its scheme (lower case) and its query parameters,
    once it is a str of one of ``schemes`` (``what`` names it in errors).

    Raises:
        ConfigurationError: naming the URL (its password masked) and the
            schemes accepted.

    Example:
        >>> read_url("redis://h:6379/0?ssl=true", REDIS_SCHEMES, "Redis URL")[1:]
        ('redis', {'ssl': 'true'})
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a {what} must be a str, got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ConfigurationError(
            f"{what} {shown(url)}: unknown scheme {parts.scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in schemes)}")
    return parts, scheme, dict(parse_qsl(parts.query, keep_blank_values=True))


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    return repr(url.replace(f":{parts.password}@", ":***@", 1))
