"""The sync Redis backend (redis-py): :class:`RedisBackend` and the state
objects it hands out, which drive the plans of :mod:`.plans`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fastlimit._core import Decision
from fastlimit.core.results import Step
from fastlimit.stores.redis import request as request_ops
from fastlimit.stores.redis.batching import DEFAULT_BATCH_SIZE, Batcher, wanted
from fastlimit.stores.redis.common import (
    CALL_ERRORS,
    BackendBase,
    Fail,
    Failure,
    Key,
    NoBackoff,
    NoScriptError,
    Plan,
    Runs,
    T,
    failure_kind,
    on_full_of,
    redis,
    retry_safe,
)
from fastlimit.stores.redis.plans import (
    HIT_ALL_DOC,
    Check,
    LeasePlans,
    LeaseStateBase,
    QuotaPlans,
    QuotaStateBase,
    RateSpec,
    RateStateBase,
    hit_all,
)

if TYPE_CHECKING:
    from fastlimit.limiters.limiter import Limiter
    from fastlimit.stores.table import OnFull

__all__ = ["RedisBackend", "RedisGcra", "RedisLeases", "RedisQuotaCounter"]


class RedisGcra(RateStateBase):
    """One limiter's GCRA on Redis: the store contract's RateState, what a
    :class:`~fastlimit.Limiter` on a :class:`RedisBackend` binds."""

    _run: Runs

    def allow(self, key: Key, cost: int = 1) -> bool:
        return self._run(self._spec.allow(key, cost))

    def hit(self, key: Key, cost: int = 1) -> Decision:
        return self._run(self._spec.check(key, cost, None))

    def peek(self, key: Key, cost: int = 1) -> Decision:
        return self._run(self._spec.check(key, cost, False))

    def refund(self, key: Key, cost: int = 1) -> bool:
        return self._run(self._spec.refund(key, cost))

    def reset(self, key: Key) -> None:
        self._run(self._spec.reset(key))

    def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                 cost: int = 1) -> npt.NDArray[np.bool_]:
        return self._run(self._spec.hit_many(keys, cost))


class RedisQuotaCounter(QuotaStateBase):
    """One quota's counts on Redis: the store contract's QuotaCounts, what a
    :class:`~fastlimit.Quota` on a :class:`RedisBackend` counts with.  When
    Redis fails, a step answers ``Step.NO_SLOT`` and the quota answers by
    ``on_full`` (``"raise"`` raised BackendError here)."""

    _run: Runs

    def step(self, key: Key, tag: int, cost: int, mode: int,
             left_ns: int = 0) -> tuple[Step, int]:
        return self._run(self._plans.step(key, tag, cost, mode, left_ns))

    def answer(self, key: Key, tag: int, cost: int, mode: int, left_ns: int = 0) -> Decision:
        return self._run(self._plans.answer(key, tag, cost, mode, left_ns))

    def reset(self, key: Key) -> None:
        self._run(self._plans.reset(key))


class RedisLeases(LeaseStateBase):
    """One concurrency limit's leases on Redis: the store contract's
    LeaseSlots (and Renewable), what a :class:`~fastlimit.ConcurrencyLimit`
    on a :class:`RedisBackend` takes.

    Leases expire ``lease_ttl`` seconds after their acquire or last renew;
    ``reclaimed`` counts the expired leases this process's acquires found
    and dropped (a key whose leases have all expired is gone, Redis having
    expired it: nothing to count)."""

    _run: Runs

    def acquire(self, key: Key, limit: int, start: int = 0) -> int:
        # (start spreads acquirers over the table's lease slots; a set has none)
        return self._run(self._plans.acquire(key, limit))

    def release(self, key: Key, token: int) -> bool:
        return self._run(self._plans.release(key, token))

    def renew(self, key: Key, token: int) -> bool:
        return self._run(self._plans.renew(key, token))

    def in_flight(self, key: Key, limit: int) -> int:
        return self._run(self._plans.in_flight(key, limit))



class RedisBackend(BackendBase):
    """GCRA state in Redis, for limits shared by many hosts (sync, redis-py).

    Pass it as a Limiter's ``store``: each check is then one Lua script on
    Redis, with the shared table's exact decisions.  A Quota's or a
    ConcurrencyLimit's ``store`` too, and a Policy's: then every limit it
    enforces is shared by every host.

    Args:
        url_or_client: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
            ``redis.Redis`` or ``redis.cluster.RedisCluster`` client (whose
            own timeouts and retries then apply).
        prefix: the first part of every key (no braces).
        fail: what a check answers when Redis fails or times out:
            ``"local"`` (the default: the host's local table answers, at the
            same rates, so an outage admits at most hosts x limit),
            ``"open"`` (allowed), ``"closed"`` (denied; ``retry_after`` one
            hit) or ``"raise"`` (:class:`~fastlimit.BackendError`).  A
            Limiter's ``on_full`` overrides it for that limiter (allow =
            open, deny = closed, raise = raise, ``"local"``), as does
            ``limiter(fail=...)``.
        connect_timeout: seconds to connect (with a URL).
        timeout: seconds to wait for a reply (with a URL).
        deny_cache: a :class:`~fastlimit.SharedTable` (named, or anonymous and
            inherited by forked workers): denials Redis gave are answered
            from it by every process on the host until they end.  One table
            per Redis deployment.
        local_table: the rates :class:`~fastlimit.SharedTable` that answers
            limiters and leases under ``fail="local"``; default: a named
            table per Redis address and prefix, shared by every process of
            the host (``redis-local.<digest>``), made on first need.
        local_quota_table: the same for quotas (a ``kind="quotas"`` table;
            default ``redis-local-quotas.<digest>``).
        hash_tag: ``f(limiter_name, key) -> str``: the Redis Cluster hash tag
            of a key (default: the key itself).
        retry_interval: after a node fails to connect or to answer in time,
            seconds during which checks of its keys answer by the failure
            policy without trying it (one server: every key; a cluster: that
            node's slots only).  It doubles with each failure in a row, up to
            ``max_retry_interval``; a call the node answers, or :meth:`ping`,
            ends it.  Error replies (OOM, READONLY, MOVED...) do not mark a
            node down: each call tries again.
        max_retry_interval: the longest marked-down period (default 30 s).
        log_interval: at most one failure warning per this many seconds.
        lease_ttl: seconds a ConcurrencyLimit's lease counts after its
            acquire or last :meth:`~fastlimit.Lease.renew` (default 60): a
            holder that dies frees its lease within this time.
        batch: coalesce the script calls of concurrent threads into
            pipelines (see :mod:`.batching`): a call that finds no round
            trip in flight goes at once; calls that arrive meanwhile go
            together in the next one.  Same decisions and failure answers;
            fewer round trips under load, and less client time per call
            even alone.  Default None: batch on one server or a Sentinel
            primary, not on a cluster (``batch=True`` is refused there);
            ``False``: every call through redis-py's command layer.
        batch_size: the most calls one batched round trip carries (128).
        **redis_options: more options for ``redis.Redis.from_url``, e.g.
            ``max_connections`` (default 100).  A client made from a
            ``redis://`` URL uses a blocking pool: a check that finds every
            connection in use waits for one, up to ``timeout``.

    Example:
        >>> backend = RedisBackend("redis://127.0.0.1:6379/0", fail="closed")  # doctest: +SKIP
        >>> api = fastlimit.Limiter("100/1h", store=backend, name="api")  # doctest: +SKIP
        >>> api.hit("user:42").remaining  # doctest: +SKIP
        99
    """

    _client_types = (redis.Redis, redis.cluster.RedisCluster)
    _client_name = "redis.Redis"
    _cluster_type = redis.cluster.RedisCluster

    def __init__(self, url_or_client: Any = "redis://127.0.0.1:6379/0", *,
                 batch: bool | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 **options: Any) -> None:
        wanted(batch, cluster=False)  # a bad value is refused before connecting
        super().__init__(url_or_client, **options)
        self._batcher: Batcher | None = None
        if wanted(batch, self._cluster):
            self._batcher = Batcher(self, batch_size)
        self._options.update(batch=batch, batch_size=batch_size)

    def _from_url(self, url: str, options: dict[str, Any]) -> Any:
        from fastlimit.stores.redis.topology import connect

        options.setdefault("retry", redis.retry.Retry(NoBackoff(), 0))
        return connect(url, options, asyncio=False)

    @property
    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """The redis-py client in use."""
        client: redis.Redis | redis.cluster.RedisCluster = self._client
        return client

    # -- the store contract ---------------------------------------------------------

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None,
                   on_full: OnFull | None = None) -> RedisGcra:
        """GCRA state of the limiter ``name`` (see the store contract)."""
        return RedisGcra(self, RateSpec(self, name, emission_interval_ns, burst, clock,
                                        self._fail_of(on_full)))

    def quota_counts(self, name: str, limit: int, *,
                     on_full: OnFull | None = None) -> RedisQuotaCounter:
        """Calendar counts of the quota ``name``."""
        return RedisQuotaCounter(self, QuotaPlans(self, name, limit, self._fail_of(on_full)))

    def lease_slots(self, name: str, *, on_full: OnFull | None = None,
                    clock: Callable[[], int] | None = None) -> RedisLeases:
        """Leases in flight of the concurrency limit ``name``."""
        return RedisLeases(self, LeasePlans(self, name, self._fail_of(on_full), clock))

    def limiter(self, rate: Any, *, name: str = "default", burst: int | None = None,
                clock: Callable[[], int] | None = None, fail: Fail | None = None) -> Limiter:
        """A :class:`~fastlimit.Limiter` on this backend; ``fail`` overrides
        the backend's failure policy for it."""
        from fastlimit.limiters.limiter import Limiter  # a convenience over the layer above

        return Limiter(rate, self, name=name, burst=burst, clock=clock, on_full=on_full_of(fail))

    # -- driving plans ----------------------------------------------------------------

    def _run(self, plan: Plan[T]) -> T:
        try:
            request = next(plan)
            while True:
                try:
                    reply = self._eval(*request)
                except Failure as f:
                    request = plan.throw(f)
                else:
                    request = plan.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        if self._batcher is not None:
            return self._batcher.eval(script, keys, args)
        return self._eval_one(script, keys, args)

    def _eval_one(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        """One script call in a round trip of its own: its reply, or Failure raised."""
        node = self._node_of(keys)
        if self._refresh_wanted(node):
            node = self._refreshed(keys, node, self._refresh(node))
        skipped = self._skip(node)
        if skipped is not None:
            raise skipped
        try:
            reply = self._call(script, keys, args)
        except CALL_ERRORS as e:
            kind = failure_kind(e)
            if not (retry_safe(script, args, kind) and self._retries(node, kind)):
                raise self._failure(e, node) from e
            self._fresh()
            try:
                reply = self._call(script, keys, args)
            except CALL_ERRORS as e2:
                raise self._failure(e2, node) from e2
        self._success(node)
        if self._first_success():
            self._check_memory_policy()
        return [int(x) for x in reply.split()]

    def _call(self, script: str, keys: list[bytes], args: list[bytes]) -> Any:
        s = self._scripts[script]
        try:
            return self._client.evalsha(s.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or flushed server: load it
            self._count("noscript")
            if self._cluster:
                # EVAL caches it where the keys are (SCRIPT LOAD would go to
                # every primary, a dead one too)
                return self._client.eval(s.script, len(keys), *keys, *args)
            self._client.script_load(s.script)
            return self._client.evalsha(s.sha, len(keys), *keys, *args)

    def _refresh(self, node: str) -> BaseException | None:
        """Read the cluster's slot map again (see _refresh_wanted), the
        node ``node`` tried last; what it raised, or None."""
        try:
            self._client.nodes_manager.initialize(last_failed_node_name=node)
        except Exception as e:  # noqa: BLE001 - the call is skipped, as it was going to be
            return e
        return None

    def _fresh(self) -> None:
        """Drop the pool's idle connections, which a restarted server or a
        failover left dead: the next call connects anew (resolving the
        host again; a Sentinel pool asks for the primary again)."""
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            try:
                pool.disconnect(inuse_connections=False)
            except Exception:  # noqa: BLE001 - the retry tells
                pass

    def _bounded_pool(self, client: Any) -> Any:
        if type(client) is not redis.Redis or type(client.connection_pool) is not \
                redis.ConnectionPool:
            return client  # a cluster or Sentinel client manages its own pools
        pool = client.connection_pool
        bounded = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=pool.max_connections, timeout=self.timeout,
            connection_class=pool.connection_class, **pool.connection_kwargs)
        pool.disconnect()
        out = redis.Redis(connection_pool=bounded)
        out.auto_close_connection_pool = True
        return out

    def _check_memory_policy(self) -> None:
        try:
            reply = self._client.config_get("maxmemory-policy")
        except CALL_ERRORS:  # CONFIG disabled or renamed: nothing to say
            return
        self._memory_policy(reply)

    # the ops count_request takes (what a Policy's decision path builds)
    request_ops = request_ops

    def count_request(self, leases: Sequence[request_ops.LeaseOp],
                      hits: Sequence[request_ops.RateOp | request_ops.QuotaOp | None]
                      ) -> request_ops.Request | Failure | None:
        """A policy's request in one script call (:mod:`.request`): what a
        :class:`~fastlimit.Policy` on this backend counts each request with."""
        return self._run(request_ops.request(self, leases, hits))

    def hit_all(self, checks: Iterable[Check]) -> list[Decision | None]:
        return self._run(hit_all(self, checks, RedisGcra))

    hit_all.__doc__ = HIT_ALL_DOC + """
        Example:
            >>> user = backend.limiter("1000/1h", name="user")  # doctest: +SKIP
            >>> login = backend.limiter("5/1m", name="login")  # doctest: +SKIP
            >>> ds = backend.hit_all([(user, "u42"), (login, "u42")])  # doctest: +SKIP
            >>> all(d.allowed for d in ds)  # doctest: +SKIP
            True
        """

    def ping(self) -> bool:
        """Ask Redis now, even while a node is marked down: True if it
        answers (which ends the marked-down period), False if not.  On a
        cluster, each node marked down is asked too, and only those that
        answer are tried again."""
        plan = self._ping_plan()
        ask = next(plan)
        while True:
            try:
                self._client.ping(**ask)
                error = None
            except CALL_ERRORS as e:
                error = e
            try:
                ask = plan.send(error)
            except StopIteration as done:
                return bool(done.value)

    def close(self) -> None:
        """Close the connections of a client made from a URL (a client
        passed in is the caller's to close)."""
        if self._batcher is not None:
            self._batcher.close()
        if self._url is not None:
            self._client.close()

    def __enter__(self) -> RedisBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._url is None:
            raise TypeError(
                "a RedisBackend made from a client cannot be pickled: make it from a URL "
                "to send it to another process")
        return (_rebuild, (self._url, self._options))

    def __repr__(self) -> str:
        return f"<RedisBackend {self.address} prefix={self.prefix!r} fail={self.fail!r}>"


def _rebuild(url: str, options: dict[str, Any]) -> RedisBackend:
    return RedisBackend(url, **options)
