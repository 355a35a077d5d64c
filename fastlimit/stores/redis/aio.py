"""The asyncio Redis backend (redis.asyncio): :class:`AsyncRedisBackend`
and its state objects, whose methods are coroutines driving the same plans
as the sync backend (:mod:`.plans`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fastlimit._core import Decision
from fastlimit.core.results import Step
from fastlimit.stores.redis import request as request_ops
from fastlimit.stores.redis.batching import DEFAULT_BATCH_SIZE, AsyncBatcher, wanted
from fastlimit.stores.redis.common import (
    CALL_ERRORS,
    BackendBase,
    Fail,
    Failure,
    Key,
    NoBackoff,
    NoScriptError,
    Plan,
    RunsAsync,
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
    from fastlimit.limiters.aio import AsyncLimiter, AsyncQuota
    from fastlimit.stores.table import OnFull

__all__ = ["AsyncRedisBackend", "AsyncRedisGcra", "AsyncRedisLeases",
           "AsyncRedisQuotaCounter"]


class AsyncRedisGcra(RateStateBase):
    """One limiter's GCRA on Redis for asyncio: the store contract's
    AsyncRateState (what :class:`~fastlimit.limiters.aio.AsyncLimiter` binds)."""

    _run: RunsAsync

    async def allow(self, key: Key, cost: int = 1) -> bool:
        return await self._run(self._spec.allow(key, cost))

    async def hit(self, key: Key, cost: int = 1) -> Decision:
        return await self._run(self._spec.check(key, cost, None))

    async def peek(self, key: Key, cost: int = 1) -> Decision:
        return await self._run(self._spec.check(key, cost, False))

    async def refund(self, key: Key, cost: int = 1) -> bool:
        return await self._run(self._spec.refund(key, cost))

    async def reset(self, key: Key) -> None:
        await self._run(self._spec.reset(key))

    async def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                       cost: int = 1) -> npt.NDArray[np.bool_]:
        return await self._run(self._spec.hit_many(keys, cost))


class AsyncRedisQuotaCounter(QuotaStateBase):
    """One quota's counts on Redis for asyncio: the store contract's
    AsyncQuotaCounts."""

    _run: RunsAsync

    async def step(self, key: Key, tag: int, cost: int, mode: int,
                   left_ns: int = 0) -> tuple[Step, int]:
        return await self._run(self._plans.step(key, tag, cost, mode, left_ns))

    async def answer(self, key: Key, tag: int, cost: int, mode: int,
                     left_ns: int = 0) -> Decision:
        return await self._run(self._plans.answer(key, tag, cost, mode, left_ns))

    async def reset(self, key: Key) -> None:
        await self._run(self._plans.reset(key))


class AsyncRedisLeases(LeaseStateBase):
    """One concurrency limit's leases on Redis for asyncio: the store
    contract's LeaseSlots with coroutine methods (what a
    :class:`~fastlimit.Policy` on an :class:`AsyncRedisBackend` takes and
    gives back).  The leases of a RedisBackend's of the same name: the same
    keys, expiring ``lease_ttl`` seconds after their acquire or renew."""

    _run: RunsAsync

    async def acquire(self, key: Key, limit: int, start: int = 0) -> int:
        return await self._run(self._plans.acquire(key, limit))

    async def release(self, key: Key, token: int) -> bool:
        return await self._run(self._plans.release(key, token))

    async def renew(self, key: Key, token: int) -> bool:
        return await self._run(self._plans.renew(key, token))

    async def in_flight(self, key: Key, limit: int) -> int:
        return await self._run(self._plans.in_flight(key, limit))



class AsyncRedisBackend(BackendBase):
    """:class:`~fastlimit.RedisBackend` for asyncio code, on redis.asyncio:
    the same options, keys, scripts and decisions.  Limiters come from
    :meth:`limiter` and quotas from :meth:`quota` (or
    :class:`~fastlimit.limiters.aio.AsyncLimiter` and ``AsyncQuota`` with it
    as their store); their methods are coroutines.  (ConcurrencyLimit takes
    a sync RedisBackend, and works in asyncio code with ``async with``.)
    Make it in the loop that uses it.

    Script calls of concurrent coroutines are coalesced into pipelines, as
    RedisBackend's are for threads (see :mod:`.batching`): a call that finds
    no round trip in flight goes at once; calls that arrive meanwhile go
    together in the next one (``batch_size``, default 128).  Same decisions
    and failure answers.  On by default for one server or a Sentinel primary
    (``batch=None``); a cluster's backend does not batch (``batch=True`` is
    refused), and ``batch=False`` sends every call through redis-py.

    Example:
        >>> backend = AsyncRedisBackend("redis://127.0.0.1:6379/0")  # doctest: +SKIP
        >>> api = backend.limiter("100/1h", name="api")  # doctest: +SKIP
        >>> await api.allow("user:42")  # doctest: +SKIP
        True
    """

    _client_types = (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)
    _client_name = "redis.asyncio.Redis"
    _cluster_type = redis.asyncio.cluster.RedisCluster

    def __init__(self, url_or_client: Any = "redis://127.0.0.1:6379/0", *,
                 batch: bool | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 **options: Any) -> None:
        wanted(batch, cluster=False)  # a bad value is refused before connecting
        super().__init__(url_or_client, **options)
        self._batcher: AsyncBatcher | None = None
        if wanted(batch, self._cluster):
            self._batcher = AsyncBatcher(self, batch_size)

    def _from_url(self, url: str, options: dict[str, Any]) -> Any:
        from fastlimit.stores.redis.topology import connect

        options.setdefault("retry", redis.asyncio.retry.Retry(NoBackoff(), 0))
        return connect(url, options, asyncio=True)

    @property
    def client(self) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
        """The redis.asyncio client in use."""
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster = self._client
        return client

    # -- the store contract (asyncio) ---------------------------------------------

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None,
                   on_full: OnFull | None = None) -> AsyncRedisGcra:
        """GCRA state of the limiter ``name``, with coroutine methods."""
        return AsyncRedisGcra(self, RateSpec(self, name, emission_interval_ns, burst, clock,
                                             self._fail_of(on_full)))

    def quota_counts(self, name: str, limit: int, *,
                     on_full: OnFull | None = None) -> AsyncRedisQuotaCounter:
        """Calendar counts of the quota ``name``, with coroutine methods."""
        return AsyncRedisQuotaCounter(
            self, QuotaPlans(self, name, limit, self._fail_of(on_full)))

    def lease_slots(self, name: str, *, on_full: OnFull | None = None,
                    clock: Callable[[], int] | None = None) -> AsyncRedisLeases:
        """Leases in flight of the concurrency limit ``name``, with coroutine methods."""
        return AsyncRedisLeases(self, LeasePlans(self, name, self._fail_of(on_full), clock))

    def limiter(self, rate: Any, *, name: str = "default", burst: int | None = None,
                clock: Callable[[], int] | None = None,
                fail: Fail | None = None) -> AsyncLimiter:
        """An :class:`~fastlimit.limiters.aio.AsyncLimiter` on this backend;
        ``fail`` overrides the backend's failure policy for it."""
        from fastlimit.limiters.aio import AsyncLimiter  # a convenience over the layer above

        return AsyncLimiter(rate, self, name=name, burst=burst, clock=clock,
                            on_full=on_full_of(fail))

    def quota(self, spec: Any, *, name: str = "quota", tz: Any = "UTC",
              clock: Callable[[], int] | None = None,
              fail: Fail | None = None) -> AsyncQuota:
        """An :class:`~fastlimit.limiters.aio.AsyncQuota` on this backend;
        ``fail`` overrides the backend's failure policy for it."""
        from fastlimit.limiters.aio import AsyncQuota  # a convenience over the layer above

        return AsyncQuota(spec, self, name=name, tz=tz, clock=clock, on_full=on_full_of(fail))

    # -- driving plans ----------------------------------------------------------------

    async def _run(self, plan: Plan[T]) -> T:
        try:
            request = next(plan)
            while True:
                try:
                    reply = await self._eval(*request)
                except Failure as f:
                    request = plan.throw(f)
                else:
                    request = plan.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        if self._batcher is not None:
            return await self._batcher.eval(script, keys, args)
        return await self._eval_one(script, keys, args)

    async def _eval_one(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        """One script call in a round trip of its own: its reply, or Failure raised."""
        node = self._node_of(keys)
        if self._refresh_wanted(node):
            node = self._refreshed(keys, node, await self._refresh(node))
        skipped = self._skip(node)
        if skipped is not None:
            raise skipped
        try:
            reply = await self._call(script, keys, args)
        except CALL_ERRORS as e:
            kind = failure_kind(e)
            if not (retry_safe(script, args, kind) and self._retries(node, kind)):
                raise self._failure(e, node) from e
            await self._fresh()
            try:
                reply = await self._call(script, keys, args)
            except CALL_ERRORS as e2:
                raise self._failure(e2, node) from e2
        self._success(node)
        if self._first_success():
            await self._check_memory_policy()
        return [int(x) for x in reply.split()]

    async def _call(self, script: str, keys: list[bytes], args: list[bytes]) -> Any:
        s = self._scripts[script]
        try:
            return await self._client.evalsha(s.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or flushed server: load it
            self._count("noscript")
            if self._cluster:
                # EVAL caches it where the keys are (SCRIPT LOAD would go to
                # every primary, a dead one too)
                return await self._client.eval(s.script, len(keys), *keys, *args)
            await self._client.script_load(s.script)
            return await self._client.evalsha(s.sha, len(keys), *keys, *args)

    async def _refresh(self, node: str) -> BaseException | None:
        """Read the cluster's slot map again (see _refresh_wanted), the
        node ``node`` tried last; what it raised, or None."""
        try:
            await self._client.nodes_manager.initialize(last_failed_node_name=node)
        except Exception as e:  # noqa: BLE001 - the call is skipped, as it was going to be
            return e
        return None

    async def _fresh(self) -> None:
        """Drop the pool's idle connections (see RedisBackend._fresh)."""
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            try:
                await pool.disconnect(inuse_connections=False)
            except Exception:  # noqa: BLE001 - the retry tells
                pass

    def _bounded_pool(self, client: Any) -> Any:
        if type(client) is not redis.asyncio.Redis or type(client.connection_pool) is not \
                redis.asyncio.ConnectionPool:
            return client  # a cluster or Sentinel client manages its own pools
        pool = client.connection_pool
        # (nothing to close: an asyncio pool connects on its first command)
        bounded = redis.asyncio.BlockingConnectionPool(
            max_connections=pool.max_connections, timeout=self.timeout,
            connection_class=pool.connection_class, **pool.connection_kwargs)
        out = redis.asyncio.Redis(connection_pool=bounded)
        out.auto_close_connection_pool = True
        return out

    async def _check_memory_policy(self) -> None:
        try:
            reply = await self._client.config_get("maxmemory-policy")
        except CALL_ERRORS:  # CONFIG disabled or renamed: nothing to say
            return
        self._memory_policy(reply)

    request_ops = request_ops

    async def count_request(self, leases: Sequence[request_ops.LeaseOp],
                            hits: Sequence[request_ops.RateOp | request_ops.QuotaOp | None]
                            ) -> request_ops.Request | Failure | None:
        """A policy's request in one script call (:mod:`.request`): what a
        :class:`~fastlimit.Policy` on this backend counts each request with,
        behind the ASGI middleware."""
        return await self._run(request_ops.request(self, leases, hits))

    async def hit_all(self, checks: Iterable[Check]) -> list[Decision | None]:
        return await self._run(hit_all(self, checks, AsyncRedisGcra))

    hit_all.__doc__ = HIT_ALL_DOC

    async def ping(self) -> bool:
        """Ask Redis now, even while a node is marked down: True if it
        answers (which ends the marked-down period), False if not.  On a
        cluster, each node marked down is asked too, and only those that
        answer are tried again."""
        plan = self._ping_plan()
        ask = next(plan)
        while True:
            try:
                await self._client.ping(**ask)
                error = None
            except CALL_ERRORS as e:
                error = e
            try:
                ask = plan.send(error)
            except StopIteration as done:
                return bool(done.value)

    async def aclose(self) -> None:
        """Close the connections of a client made from a URL."""
        if self._batcher is not None:
            await self._batcher.close()
        if self._url is not None:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRedisBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncRedisBackend {self.address} prefix={self.prefix!r} fail={self.fail!r}>"
