"""Which Redis a URL names, and whether it is the kind of Redis the URL says.

One parser for every Redis URL fastlimit reads: :meth:`RedisBackend.from_url
<fastlimit.RedisBackend.from_url>`, ``RedisBackend(url)``, the asyncio twins
and :func:`fastlimit.store_from_url`.

========================================  =======================================
``redis://h:6379/0``, ``rediss://``,      one server (``redis.Redis``)
``unix:///run/redis.sock``
``redis+cluster://h1:7000,h2:7001``       a Redis Cluster, from these seed nodes
``redis+sentinel://h1:26379,h2:26379/s``  the master of Sentinel service ``s``
                                          (``/s/1``: its database 1), followed
                                          through failovers
``rediss+cluster://``,                    the same over TLS; so is ``?ssl=true``
``rediss+sentinel://``                    on any of them
========================================  =======================================

TLS takes redis-py's options as query parameters, as its ``from_url`` does:
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
(``none``, ``optional``, ``required``), ``ssl_check_hostname``...  With a
Sentinel URL they go to the sentinels as well as to the master, unless
``sentinel_ssl=false`` (sentinels without TLS in front of a master with it).

A URL's password goes to the server (for Sentinel: to the master; the
sentinels' own are ``sentinel_username`` / ``sentinel_password`` query
parameters).  ``from_url`` also reads the backend's options from the query
(:data:`BACKEND_OPTIONS`); other parameters go to redis-py, typed by its
own URL rules.

Before a client is made, one short-lived connection asks the server what it
is (``INFO server`` and ``INFO replication`` in one round trip), because a
wrong kind of Redis does not fail at once: it fails every write later, which
the failure policy would answer on every check (with ``fail="local"``, the
default, each host by its own table; with ``"open"``, every check allowed).

* a plain URL to a **cluster node** (``redis_mode:cluster``, or where an
  ACL refuses INFO, a ``MOVED`` reply to EXISTS on keys of three distant
  slots) is followed: the node becomes the seed of a ``RedisCluster``, with
  a warning naming ``redis+cluster://``;
* a plain URL to a **replica** (``role:slave``) is refused, naming its
  master and ``redis+sentinel://`` (where INFO is refused, a replica shows
  only at the first write, as READONLY); a Sentinel URL always reaches the
  master;
* a plain URL to a **Sentinel**, a cluster URL to a server without cluster
  mode, or a Sentinel URL to something else or for a service no sentinel
  knows, is refused naming the URL to write instead.

The asyncio backend asks with a sync connection too (construction is not a
coroutine), so making one blocks its loop for that round trip, once.
A server that does not answer within the backend's timeouts is not checked:
the backend is made as before and its failure policy answers until Redis
does.  Clients passed in ready-made are asked the same (:func:`check_client`,
on a connection of its own with the client's address and credentials): a
``redis.Redis`` or ``redis.asyncio.Redis`` on a cluster node, a replica or
a Sentinel is refused, naming the client to pass instead (a client is the
caller's: it is not swapped for a cluster client as a URL is);
``Sentinel.slave_for(...)`` is refused without asking; ``RedisCluster`` and
``Sentinel.master_for(...)`` clients are used as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.backoff
import redis.cluster
import redis.connection
import redis.retry
import redis.sentinel
from redis.connection import parse_url
from redis.exceptions import (
    ConnectionError,
    MovedError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
)

from fastlimit.errors import BackendError, ConfigurationError
from fastlimit.stores.url import REDIS_SCHEMES, read_url, shown

__all__ = ["BACKEND_OPTIONS", "SCHEMES", "RedisURL", "address_of", "check_client", "connect",
           "parse", "server_url", "split_options"]

log = logging.getLogger("fastlimit")

SCHEMES = REDIS_SCHEMES


def _seconds(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None


# The backend's options a URL's query may carry (from_url and store_from_url
# read them), with how each is read from text.
BACKEND_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "fail": lambda _, text: text,
    "prefix": lambda _, text: text,
    "timeout": _seconds,
    "connect_timeout": _seconds,
    "retry_interval": _seconds,
    "max_retry_interval": _seconds,
    "log_interval": _seconds,
    "lease_ttl": _seconds,
}
# query parameters for the sentinels themselves, not the master
_SENTINEL_AUTH = {"sentinel_username": "username", "sentinel_password": "password"}
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_CERT_REQS = ("none", "optional", "required")
# an unanswered probe: construction goes on, the failure policy answers
_UNANSWERED = (ConnectionError, TimeoutError, OSError)
# slots 0, 8192 and 16383: no node of a cluster of several primaries serves all
_SPREAD_KEYS = ("fastlimit-probe{3560}", "fastlimit-probe{4}", "fastlimit-probe{5}")


@dataclass(frozen=True)
class RedisURL:
    """A Redis URL, parsed.

    Attributes:
        scheme: one of :data:`SCHEMES`, lower case.
        url: the URL as given, without the backend's options.
        nodes: ``(host, port)`` of the server, of each cluster seed or of
            each sentinel (empty for ``unix://``).
        service: the Sentinel service, or None.
        db: the database number.
        query: the other query parameters, as text (redis-py's; without
            ``ssl``).
        kind: ``"server"``, ``"unix"``, ``"cluster"`` or ``"sentinel"``.
        tls: whether the connections use TLS (``rediss``, or ``ssl=true``).
        tls_options: redis-py's keyword arguments for TLS, typed as its
            ``from_url`` types them (``ssl=True`` and the ``ssl_*`` of the
            query); empty without TLS.
        sentinel_tls: whether the sentinels are reached over TLS too.
    """

    scheme: str
    url: str
    nodes: tuple[tuple[str, int], ...]
    service: str | None = None
    db: int = 0
    query: dict[str, str] = field(default_factory=dict)
    kind: str = "server"
    tls: bool = False
    tls_options: dict[str, Any] = field(default_factory=dict)
    sentinel_tls: bool = False

    @property
    def shown(self) -> str:
        """The URL for messages: quoted, its password masked."""
        return shown(self.url)


def split_options(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without the backend's options in its query, and those options.

    Raises:
        ConfigurationError: a URL that is not a str, or an option that does
            not read (``timeout=soon``).

    Example:
        >>> split_options("redis://h:6379/0?fail=closed&timeout=2&health_check_interval=5")
        ('redis://h:6379/0?health_check_interval=5', {'fail': 'closed', 'timeout': 2.0})
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a Redis URL must be a str, got {url!r}")
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, text in parse_qsl(query, keep_blank_values=True):
        read = BACKEND_OPTIONS.get(name)
        if read is None:
            rest.append((name, text))
            continue
        try:
            options[name] = read(name, text)
        except ValueError as e:
            raise ConfigurationError(f"Redis URL {shown(url)}: {e}") from None
    return base + ("?" + urlencode(rest) if rest else ""), options


def parse(url: str) -> RedisURL:
    """Read ``url`` (see the module's table).

    Raises:
        ConfigurationError: naming the URL (its password masked) and what is
            accepted.

    Example:
        >>> parse("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/cache/1").nodes
        (('10.0.0.1', 26379), ('10.0.0.2', 26379))
        >>> parse("rediss+cluster://10.0.0.5:7000?ssl_ca_certs=/etc/ca.pem").tls_options
        {'ssl': True, 'ssl_ca_certs': '/etc/ca.pem'}
    """
    parts, scheme, query = read_url(url, SCHEMES, "Redis URL")
    mine = sorted(set(query) & set(BACKEND_OPTIONS))
    if mine:
        raise ConfigurationError(
            f"Redis URL {shown(url)}: {mine[0]}= is an option of the backend, read from a "
            f"URL by RedisBackend.from_url(url) and store_from_url(url); the constructor "
            f"takes it as a keyword (RedisBackend(url, {mine[0]}=...))")
    kind = {"redis": "server", "rediss": "server", "unix": "unix"}.get(
        scheme, scheme.partition("+")[2])
    tls, tls_options, sentinel_tls = _tls(url, scheme, kind, query)
    made: dict[str, Any] = dict(query=query, kind=kind, tls=tls, tls_options=tls_options,
                sentinel_tls=sentinel_tls)
    if kind == "unix":
        return RedisURL(scheme, url, (), **made)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if kind == "server":
        nodes: tuple[tuple[str, int], ...] = ((parts.hostname or "localhost", _port(parts)),)
        return RedisURL(scheme, url, nodes, db=_db(url, parts.path.strip("/") or "0"), **made)
    what = f"{scheme}://HOST:PORT[,HOST:PORT...]" + ("" if kind == "cluster" else "/SERVICE[/DB]")
    found = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            node = "node" if kind == "cluster" else "sentinel"
            raise ConfigurationError(
                f"Redis URL {shown(url)}: expected {what}, got the {node} {item!r}")
        found.append((host.strip("[]"), int(port)))
    if kind == "cluster":
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigurationError(
                f"Redis URL {shown(url)}: a Redis Cluster has only database 0")
        return RedisURL(scheme, url, tuple(found), **made)
    service, _, db = parts.path.strip("/").partition("/")
    if not service or (db and not db.isdigit()):
        raise ConfigurationError(
            f"Redis URL {shown(url)}: expected {scheme}://HOST:PORT/SERVICE[/DB]")
    return RedisURL(scheme, url, tuple(found), service=service, db=int(db or 0), **made)


def _tls(url: str, scheme: str, kind: str,
         query: dict[str, str]) -> tuple[bool, dict[str, Any], bool]:
    """Whether ``url`` asks for TLS, redis-py's TLS options from its query,
    and whether the sentinels get them too.  Takes ``ssl`` and
    ``sentinel_ssl`` out of ``query``."""
    tls = scheme.startswith("rediss")
    if "ssl" in query:
        said = _flag(url, "ssl", query.pop("ssl"))
        if tls and not said:
            raise ConfigurationError(
                f"Redis URL {shown(url)}: ssl=false contradicts {scheme}://, which is TLS")
        tls = said
    sentinel_tls = tls and kind == "sentinel"
    if "sentinel_ssl" in query:
        if kind != "sentinel":
            raise ConfigurationError(
                f"Redis URL {shown(url)}: sentinel_ssl= is for redis+sentinel:// URLs")
        sentinel_tls = _flag(url, "sentinel_ssl", query.pop("sentinel_ssl"))
    given = {k: v for k, v in query.items() if k.startswith("ssl_")}
    if not tls:
        if given:
            plain = scheme.replace("rediss", "redis")
            raise ConfigurationError(
                f"Redis URL {shown(url)}: {sorted(given)[0]}= is a TLS option, and this URL "
                f"is not TLS: write {plain.replace('redis', 'rediss', 1)}:// or add ssl=true")
        return False, {}, sentinel_tls
    if kind == "unix":
        raise ConfigurationError(
            f"Redis URL {shown(url)}: a unix socket takes no TLS (ssl=true): write "
            f"rediss://HOST:PORT")
    reqs = given.get("ssl_cert_reqs")
    if reqs is not None and reqs.lower() not in _CERT_REQS:
        raise ConfigurationError(
            f"Redis URL {shown(url)}: ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, "
            f"got {reqs!r}")
    try:
        typed = parse_url("redis://localhost/?" + urlencode(given))  # type: ignore[no-untyped-call,unused-ignore]
    except ValueError as e:
        raise ConfigurationError(f"Redis URL {shown(url)}: {e}") from None
    typed.pop("host", None)
    return True, {"ssl": True, **typed}, sentinel_tls


def _flag(url: str, name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigurationError(
        f"Redis URL {shown(url)}: {name} must be true or false, got {text!r}")


def address_of(url: str) -> str:
    """Where a URL points, for messages (never with credentials): the first
    node of a cluster or sentinel URL.

    Example:
        >>> address_of("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/cache")
        'redis+sentinel://10.0.0.1:26379/cache'
    """
    parts = urlsplit(url)
    first = parts.netloc.rsplit("@", 1)[-1].split(",")[0]
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    if parts.scheme.endswith("+sentinel"):
        return f"{parts.scheme}://{first}/{parts.path.strip('/').split('/')[0]}"
    return f"{parts.scheme}://{first}"


def connect(url: str, options: dict[str, Any], *, asyncio: bool) -> Any:
    """A redis-py client for ``url`` (sync, or redis.asyncio's), made with
    connection ``options`` (timeouts, ``retry``, redis-py's own), once the
    server is known to be what the URL says (see the module docstring).

    Raises:
        ConfigurationError: a URL that does not read, or points at the wrong
            kind of Redis.
        BackendError: a cluster none of whose seeds answers (redis-py's sync
            cluster client cannot be made without one).
    """
    target = parse(url)
    if target.kind == "sentinel":
        return _sentinel(target, options, asyncio)
    if target.kind == "cluster":
        first = _probe_seeds(target, options)
        if first is not None and first["mode"] != "cluster":
            raise ConfigurationError(_not_a_cluster(target, first))
        return _cluster(target, options, asyncio)
    found = _probe(target, options)
    if found is None:
        return _single(target, options, asyncio)
    if found["mode"] == "sentinel":
        raise ConfigurationError(
            f"Redis URL {target.shown} points at a Sentinel, not a Redis server: write "
            f"{_scheme(target, 'sentinel')}://{_node(target, 'HOST:26379')}/SERVICE for the "
            f"master of a "
            f"service it monitors")
    if found["mode"] == "cluster":
        return _follow_cluster(target, options, asyncio)
    if found["role"] == "slave":
        master = f"{found['master_host']}:{found['master_port']}"
        raise ConfigurationError(
            f"Redis URL {target.shown} points at a replica (INFO replication: role:slave, "
            f"master {master}), which refuses every write (READONLY): point it at the "
            f"primary (redis://{master}), or at your Sentinels "
            f"(redis+sentinel://SENTINEL:26379/SERVICE) to follow the primary through "
            f"failovers")
    return _single(target, options, asyncio)


# -- building clients ---------------------------------------------------------------


def server_url(target: RedisURL) -> str:
    """The URL redis-py's ``from_url`` reads for one server: ``rediss://``
    where the URL said ``ssl=true``, with the query it takes (TLS options
    included).

    Example:
        >>> server_url(parse("redis://h:6380/2?ssl=true&ssl_cert_reqs=none"))
        'rediss://h:6380/2?ssl_cert_reqs=none'
    """
    parts = urlsplit(target.url)
    scheme = "rediss" if target.tls else parts.scheme
    query = urlencode(target.query)
    # (not urlunsplit: it writes unix:/path, without the //, which redis-py refuses)
    return f"{scheme}://{parts.netloc}{parts.path}" + ("?" + query if query else "")


def _single(target: RedisURL, options: dict[str, Any], asyncio: bool) -> Any:
    url = server_url(target)
    if asyncio:
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def _seed_url(target: RedisURL, host: str, port: int) -> str:
    parts = urlsplit(target.url)
    auth = parts.netloc.rpartition("@")[0]
    query = urlencode(target.query)  # redis-py's options, TLS's among them
    scheme = "rediss" if target.tls else "redis"
    return f"{scheme}://{auth + '@' if auth else ''}{_bracket(host)}:{port}/0" + (
        "?" + query if query else "")


def _cluster(target: RedisURL, options: dict[str, Any], asyncio: bool) -> Any:
    (host, port), *rest = target.nodes
    seed = _seed_url(target, host, port)
    if asyncio:
        anodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in rest]
        return redis.asyncio.cluster.RedisCluster.from_url(seed, startup_nodes=anodes,
                                                           **options)
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in rest]  # type: ignore[no-untyped-call,unused-ignore]
    try:
        return redis.cluster.RedisCluster.from_url(seed, startup_nodes=nodes, **options)
    except RedisClusterException as e:
        raise BackendError(
            f"Redis Cluster at {address_of(target.url)}: no seed node answered ({e}); "
            f"redis-py's cluster client needs one to start") from e


def _follow_cluster(target: RedisURL, options: dict[str, Any], asyncio: bool) -> Any:
    node = _node(target, "HOST:PORT")
    if not target.nodes:
        raise ConfigurationError(
            f"Redis URL {target.shown} points at a Redis Cluster node, which redis-py's "
            f"cluster client cannot reach by a unix socket: write redis+cluster://{node}")
    if target.db != 0:
        raise ConfigurationError(
            f"Redis URL {target.shown} points at a Redis Cluster node, and a cluster has only "
            f"database 0: write {_scheme(target, 'cluster')}://{node}")
    log.warning(
        "fastlimit: Redis URL %s points at a Redis Cluster node; using it as the seed of a "
        "cluster client (write %s://%s to say so)", target.shown, _scheme(target, "cluster"),
        node)
    return _cluster(target, options, asyncio)


def _sentinel(target: RedisURL, options: dict[str, Any], asyncio: bool) -> Any:
    assert target.service is not None
    query = dict(target.query)
    auth = {key: query.pop(name) for name, key in _SENTINEL_AUTH.items() if name in query}
    kwargs = {**_typed(target, query), **target.tls_options}
    kwargs.pop("db", None)  # the URL's path names it
    parts = urlsplit(target.url)
    for key, value in (("username", parts.username), ("password", parts.password)):
        if value:
            kwargs[key] = value
    # the sentinels get the backend's timeouts and no retries, as the master
    to_sentinels = {k: v for k, v in options.items()
                    if k.startswith("socket_") or k == "retry"}
    to_sentinels.update(auth)
    if target.sentinel_tls:
        to_sentinels.update(target.tls_options)
    _check_service(target, to_sentinels)
    master = {**options, **kwargs}
    sentinel: Any
    if asyncio:
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.nodes), sentinel_kwargs=to_sentinels)
        return sentinel.master_for(target.service, redis_class=_AsyncSentinelMaster,
                                   db=target.db, **master)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(target.nodes), sentinel_kwargs=to_sentinels)
    return sentinel.master_for(target.service, redis_class=_SentinelMaster, db=target.db,
                               **master)


# The master's client of a Sentinel URL also closes the clients it asks the
# sentinels with (redis-py leaves them open, to be found by the collector).

class _SentinelMaster(redis.Redis):
    def close(self) -> None:
        super().close()
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        for client in pool.sentinel_manager.sentinels:
            client.close()


class _AsyncSentinelMaster(redis.asyncio.Redis):
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool
        for client in pool.sentinel_manager.sentinels:
            await client.aclose()


def _typed(target: RedisURL, query: dict[str, str]) -> dict[str, Any]:
    """redis-py's options from a query, typed as redis-py types a URL's."""
    try:
        kwargs: dict[str, Any] = parse_url(  # type: ignore[no-untyped-call,unused-ignore]
            "redis://localhost/?" + urlencode(query))
    except ValueError as e:
        raise ConfigurationError(f"Redis URL {target.shown}: {e}") from None
    kwargs.pop("host", None)
    return kwargs


# -- clients passed in ----------------------------------------------------------------


# redis.asyncio's connection classes, and the sync ones that reach the same server
_SYNC_CONNECTIONS: dict[type, type] = {
    redis.asyncio.connection.Connection: redis.connection.Connection,
    redis.asyncio.connection.SSLConnection: redis.connection.SSLConnection,
    redis.asyncio.connection.UnixDomainSocketConnection:
        redis.connection.UnixDomainSocketConnection,
}


def check_client(client: Any, backend: str, connect_timeout: float | None,
                 timeout: float | None) -> None:
    """Refuse a ready-made client that reaches the wrong kind of Redis: a
    cluster node (its other nodes' keys answer MOVED), a replica (every
    write answers READONLY) or a Sentinel.  The server is asked on a
    connection of its own, made from the client's pool's address and
    credentials, within the backend's timeouts; a server that does not
    answer is not checked (as with a URL).  Cluster clients, and
    ``Sentinel.master_for`` clients (always the master), are not asked.

    Raises:
        ConfigurationError: naming what was given and what to pass instead.
    """
    given = f"{backend} was given a {type(client).__module__}.{type(client).__name__} client"
    pool = getattr(client, "connection_pool", None)
    if pool is None or isinstance(client, (redis.cluster.RedisCluster,
                                           redis.asyncio.cluster.RedisCluster)):
        return
    if hasattr(pool, "is_master"):  # a Sentinel's pool: master_for or slave_for
        if not pool.is_master:
            raise ConfigurationError(
                f"{given} from Sentinel.slave_for({pool.service_name!r}): a replica, which "
                f"refuses every write (READONLY): pass Sentinel(...).master_for("
                f"{pool.service_name!r}) instead")
        return
    kwargs = dict(pool.connection_kwargs)
    kind = _SYNC_CONNECTIONS.get(pool.connection_class, pool.connection_class)
    if not issubclass(kind, redis.connection.AbstractConnection):
        return  # a connection class of the caller's own: not second-guessed
    where = kwargs.get("path") or f"{_bracket(str(kwargs.get('host', 'localhost')))}:" \
        f"{kwargs.get('port', 6379)}"
    kwargs.update(socket_connect_timeout=connect_timeout, socket_timeout=timeout,
                  retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    for name in ("retry_on_timeout", "retry_on_error", "health_check_interval",
                 "event_dispatcher"):
        kwargs.pop(name, None)
    try:
        probe = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=kind,
                                                                 **kwargs))
    except (TypeError, ValueError):  # options the sync client does not take
        return
    try:
        found = _ask(probe, f"{backend}({type(client).__name__} of {where})")
    except (TypeError, ValueError, ResponseError):
        found = None
    finally:
        probe.close()
        probe.connection_pool.disconnect()
    if found is None:
        return
    cluster = "redis.asyncio.cluster.RedisCluster" if "asyncio" in type(client).__module__ \
        else "redis.cluster.RedisCluster"
    host, _, port = where.rpartition(":")
    if found["mode"] == "cluster":
        raise ConfigurationError(
            f"{given} connected to {where}, a Redis Cluster node (redis_mode:cluster), which "
            f"answers MOVED for the other nodes' keys: pass {cluster}(host={host.strip('[]')!r}"
            f", port={port}) instead, or the URL redis+cluster://{where}")
    if found["mode"] == "sentinel":
        raise ConfigurationError(
            f"{given} connected to {where}, a Sentinel, not a Redis server: pass "
            f"Sentinel([({host.strip('[]')!r}, {port})]).master_for('SERVICE') instead, or the "
            f"URL redis+sentinel://{where}/SERVICE")
    if found["role"] == "slave":
        master = f"{found['master_host']}:{found['master_port']}"
        raise ConfigurationError(
            f"{given} connected to {where}, a replica (INFO replication: role:slave, master "
            f"{master}), which refuses every write (READONLY): pass a client of the primary "
            f"({master}) or Sentinel(...).master_for('SERVICE') instead, or the URL "
            f"redis+sentinel://SENTINEL:26379/SERVICE to follow the primary through failovers")


# -- asking the server what it is ------------------------------------------------------


def _probe_client(host: str, port: int, options: dict[str, Any],
                  **extra: Any) -> redis.Redis:
    return redis.Redis(
        host=host, port=port, socket_timeout=options.get("socket_timeout"),
        socket_connect_timeout=options.get("socket_connect_timeout"),
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), **extra)


def _probe(target: RedisURL, options: dict[str, Any]) -> dict[str, Any] | None:
    """What the server of a plain URL is: ``mode`` (standalone, cluster,
    sentinel), ``role`` and its master, or None if it did not answer."""
    keep = {k: v for k, v in options.items()
            if k not in ("retry", "connection_class", "connection_pool")}
    try:
        client = redis.Redis.from_url(server_url(target), **keep)
        try:
            return _ask(client, target.shown)
        finally:
            client.close()
    except (TypeError, ValueError):  # options only the asyncio client takes
        return None


def _probe_seeds(target: RedisURL, options: dict[str, Any]) -> dict[str, Any] | None:
    parts = urlsplit(target.url)
    auth = {k: v for k, v in (("username", parts.username), ("password", parts.password)) if v}
    for host, port in target.nodes:
        with _probe_client(host, port, options, **auth, **target.tls_options) as client:
            found = _ask(client, target.shown)
        if found is not None:
            found["node"] = f"{_bracket(host)}:{port}"
            return found
    return None


def _ask(client: redis.Redis, shown_url: str) -> dict[str, Any] | None:
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("INFO", "server")  # type: ignore[no-untyped-call,unused-ignore]
    pipe.execute_command("INFO", "replication")  # type: ignore[no-untyped-call,unused-ignore]
    try:
        server, replication = pipe.execute(raise_on_error=False)
    except ResponseError as e:  # from the connection's set-up: SELECT, AUTH
        if "cluster mode" in str(e):  # "SELECT is not allowed in cluster mode"
            return {"mode": "cluster", "role": "master"}
        raise
    except _UNANSWERED as e:
        log.info("fastlimit: Redis URL %s did not answer at construction (%s); not checked "
                 "for a cluster node or a replica", shown_url, e)
        return None
    if isinstance(server, ResponseError):  # INFO refused (an ACL): MOVED still tells
        return {"mode": _moved(client), "role": "master"}
    if isinstance(server, Exception):
        return None
    found: dict[str, Any] = {"mode": _text(server.get("redis_mode", "standalone")),
                             "role": "master"}
    if isinstance(replication, dict):
        found["role"] = _text(replication.get("role", "master"))
        found["master_host"] = _text(replication.get("master_host", "?"))
        found["master_port"] = replication.get("master_port", "?")
    return found


def _moved(client: redis.Redis) -> str:
    pipe = client.pipeline(transaction=False)
    for key in _SPREAD_KEYS:
        pipe.exists(key)
    try:
        replies = pipe.execute(raise_on_error=False)
    except _UNANSWERED:
        return "standalone"
    moved = any(isinstance(r, MovedError) for r in replies)
    return "cluster" if moved else "standalone"


def _check_service(target: RedisURL, to_sentinels: dict[str, Any]) -> None:
    """Refuse a Sentinel URL whose sentinels answer but do not know its
    service, or that are no sentinels."""
    known: set[str] = set()
    answered = False
    extra = {k: v for k, v in to_sentinels.items()
             if k in ("username", "password") or k.startswith("ssl")}
    for host, port in target.nodes:
        with _probe_client(host, port, to_sentinels, **extra) as client:
            try:
                if client.sentinel_get_master_addr_by_name(target.service):
                    return
                masters = client.sentinel_masters()
            except _UNANSWERED:
                continue
            except ResponseError as e:
                node = f"{_bracket(host)}:{port}"
                raise ConfigurationError(
                    f"Redis URL {target.shown}: {node} is not a Sentinel (it answered "
                    f"SENTINEL with: {e}): write redis://{node}/DB for a Redis server, or "
                    f"redis+cluster://{node} for a cluster") from None
        answered = True
        known.update(_text(name) for name in masters)
    if answered:
        raise ConfigurationError(
            f"Redis URL {target.shown}: no Sentinel knows the service {target.service!r} "
            f"(they monitor: {', '.join(sorted(known)) or 'none'})")
    log.info("fastlimit: no Sentinel of %s answered at construction; the master of %r is "
             "looked up at the first call", target.shown, target.service)


def _not_a_cluster(target: RedisURL, found: dict[str, Any]) -> str:
    node = found["node"]
    if found["mode"] == "sentinel":
        return (f"Redis URL {target.shown}: {node} is a Sentinel, not a cluster node: write "
                f"{_scheme(target, 'sentinel')}://{node}/SERVICE")
    return (f"Redis URL {target.shown}: {node} is not a Redis Cluster node (redis_mode:"
            f"{found['mode']}): write {_scheme(target, 'server')}://{node}/0 for one server")


# -- small readers ------------------------------------------------------------------------


def _scheme(target: RedisURL, kind: str) -> str:
    """The scheme of a URL of ``kind`` with ``target``'s TLS."""
    tls = "rediss" if target.tls else "redis"
    return tls if kind == "server" else f"{tls}+{kind}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _node(target: RedisURL, otherwise: str) -> str:
    """``host:port`` of a URL's first node (``otherwise`` for a unix socket)."""
    if not target.nodes:
        return otherwise
    host, port = target.nodes[0]
    return f"{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port(parts: Any) -> int:
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            f"Redis URL {shown(parts.geturl())}: the port is not a number") from None
    return 6379 if port is None else int(port)


def _db(url: str, text: str) -> int:
    if not text.isdigit():
        raise ConfigurationError(
            f"Redis URL {shown(url)}: the database must be a number (/0, /1...), got {text!r}")
    return int(text)
