"""How the Redis backend fails: per node, per kind, small (issue 17).

Real redis-server processes on 127.0.0.1 (conftest.py), stopped, killed,
paused and restarted by PID; a three-primary cluster of this module's own
for the failure domains.  Counts are exact; the only waits are timeouts
under test, kept short.
"""

import asyncio
import logging
import multiprocessing
import signal
import threading
import uuid

import pytest
import redis
import redis.asyncio
from conftest import _start_server
from redis.backoff import NoBackoff
from redis.retry import Retry

from fastlimit import (
    ConcurrencyLimit,
    ConfigurationError,
    Decision,
    FakeClock,
    Limiter,
    Quota,
    RedisBackend,
    SharedTable,
)
from fastlimit.stores.redis import AsyncRedisBackend

S = 10**9
FAST = dict(timeout=10, connect_timeout=10)  # no spurious timeouts on a loaded machine
MAY_20_2024 = 1716163200 * S
JUNE_1_2024 = 1717200000 * S
FAST_CLIENT = dict(socket_timeout=10, socket_connect_timeout=10)


def prefix():
    return f"t{uuid.uuid4().hex[:10]}"


# -- a transient error: one retry on a fresh connection --------------------------------


def test_a_restarted_server_is_answered_on_a_fresh_connection(own_redis_server, clock):
    """The pool's connections died with the server; the next check is
    answered on a new one (which loads the script the new server lacks)
    instead of failing and marking Redis down."""
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=3600, **FAST)
    lim = Limiter("5/10s", store=b, name="r", clock=clock)
    assert lim.allow("k")
    own_redis_server.stop(signal.SIGKILL)
    own_redis_server.start()
    assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0), "a new, empty server"
    st = b.stats()
    # NOSCRIPT twice: each server's first call loads the script
    assert (st.calls, st.errors, st.noscript, st.skipped) == (2, 0, 2, 0)
    assert not st.down and own_redis_server.commands("evalsha") == 1


def test_a_dead_server_costs_one_retry_then_its_backoff(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=3600, **FAST)
    lim = Limiter("5/10s", store=b, name="d", clock=clock)
    assert lim.allow("k")
    own_redis_server.stop(signal.SIGKILL)
    for _ in range(5):
        assert not lim.allow("k")
    st = b.stats()
    assert (st.errors, st.connection_errors, st.retries, st.skipped, st.failed_closed) == (
        1, 1, 1, 4, 5)
    assert st.down and st.down_nodes == (b.address,)


def test_a_hung_server_times_out_once_per_backoff(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="closed", timeout=0.2, retry_interval=3600)
    lim = Limiter("5/10s", store=b, name="h", clock=clock)
    assert lim.allow("k")
    own_redis_server.pause()
    try:
        assert not lim.allow("k")  # timed out, retried, timed out again
        assert not lim.allow("k")  # skipped: marked down
    finally:
        own_redis_server.resume()
    st = b.stats()
    assert (st.errors, st.timeouts, st.retries, st.skipped) == (1, 1, 1, 1)
    assert b.ping() and not b.stats().down
    assert lim.allow("k2")


def test_a_refund_that_timed_out_is_not_sent_again(own_redis_server, clock):
    """It may have run: again, it would give back twice."""
    b = RedisBackend(own_redis_server.url, fail="open", timeout=0.2, retry_interval=0)
    lim = Limiter("5/10s", store=b, name="rf", clock=clock)
    assert lim.allow("k")
    own_redis_server.pause()
    try:
        assert not lim.refund("k")
    finally:
        own_redis_server.resume()
    st = b.stats()
    assert (st.errors, st.timeouts, st.retries) == (1, 1, 0)


# -- the connection pool: wait, bounded, never fail open --------------------------------


# batch=None (the default): one connection carries the round trips of all;
# batch=False: each check takes a connection of its own
@pytest.mark.parametrize("batch", [None, False])
def test_threads_beyond_the_pool_wait_for_a_connection(redis_server, batch):
    b = RedisBackend(redis_server.url, prefix=prefix(), max_connections=2, batch=batch, **FAST)
    lim = Limiter("50/1h", store=b, name="pool", clock=FakeClock())
    admitted = []
    start = threading.Barrier(16)

    def run():
        start.wait()
        admitted.append(sum(lim.allow("k") for _ in range(20)))

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = b.stats()
    assert sum(admitted) == 50 and st.calls == 320
    assert (st.errors, st.failed_open) == (0, 0)
    assert len(b.client.connection_pool._connections) <= 2


@pytest.mark.parametrize("batch", [None, False])
def test_coroutines_beyond_the_pool_wait_for_a_connection(redis_server, batch):
    async def main():
        b = AsyncRedisBackend(redis_server.url, prefix=prefix(), max_connections=4, batch=batch,
                              **FAST)
        lim = b.limiter("80/1h", name="apool", clock=FakeClock())

        async def run():
            return sum([await lim.allow("k") for _ in range(5)])

        admitted = sum(await asyncio.gather(*(run() for _ in range(150))))
        await b.aclose()
        return admitted, b.stats()

    admitted, st = asyncio.run(main())
    assert admitted == 80 and st.calls == 750
    assert (st.errors, st.failed_open) == (0, 0)


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_a_pool_wait_is_bounded_by_the_timeout_and_is_not_down(own_redis_server, clock, fail):
    b = RedisBackend(own_redis_server.url, fail=fail, timeout=0.2, retry_interval=3600,
                     max_connections=1)
    lim = Limiter("5/10s", store=b, name="pw", clock=clock)
    held = b.client.connection_pool.get_connection()
    try:
        # no connection within the timeout: denied, even under "open" (a
        # full pool is load on this process, not Redis down)
        assert lim.hit("k") == Decision(False, 5, 0, 0, 2 * S)
    finally:
        b.client.connection_pool.release(held)
    st = b.stats()
    assert (st.errors, st.pool_timeouts, st.retries, st.down) == (1, 1, 0, False)
    assert (st.failed_open, st.failed_closed) == (0, 1)
    assert lim.allow("k"), "the server was never down: tried at once"


@pytest.mark.parametrize("batch", [None, False])
def test_a_client_on_a_failing_pool_never_fails_open(redis_server, batch):
    """A client passed in keeps its own pool (redis-py's raises at once when
    every connection is in use): those checks are denied, not admitted.
    Batched (the default), one connection carries them all: none fails."""
    async def main():
        client = redis.asyncio.Redis(port=redis_server.port, max_connections=4, **FAST_CLIENT)
        b = AsyncRedisBackend(client, prefix=prefix(), fail="open", batch=batch)
        lim = b.limiter("80/1h", name="fpool", clock=FakeClock())

        async def run():
            return sum([await lim.allow("k") for _ in range(5)])

        admitted = sum(await asyncio.gather(*(run() for _ in range(150))))
        await client.aclose()
        return admitted, b.stats()

    admitted, st = asyncio.run(main())
    if batch is None:
        assert (admitted, st.calls, st.errors) == (80, 750, 0)
        return
    # how many find a connection depends on the scheduling; none is let through
    assert admitted <= 80 and st.failed_open == 0 and st.calls + st.errors == 750
    assert st.pool_timeouts == st.failed_closed == st.errors > 0


# -- error replies are answers, not a server down ---------------------------------------


def _fill(server):
    """A server past its maxmemory under noeviction: every write fails OOM."""
    with server.client() as c:
        c.config_set("maxmemory-policy", "noeviction")
        c.config_set("maxmemory", 1)


def test_out_of_memory_is_counted_and_answered_by_the_policy(own_redis_server, clock, caplog):
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=3600, **FAST)
    lim = Limiter("5/10s", store=b, name="oom", clock=clock)
    _fill(own_redis_server)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        assert lim.hit("k") == Decision(False, 5, 0, 0, 2 * S)
        assert not lim.allow("k")
    st = b.stats()
    assert (st.errors, st.oom, st.retries, st.skipped, st.failed_closed) == (2, 2, 0, 0, 2)
    assert not st.down, "Redis answered: it is not down"
    [warning] = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert "out of memory" in warning and "noeviction" in warning
    with own_redis_server.client() as c:
        c.config_set("maxmemory", 0)
    assert lim.allow("k"), "tried again at once"


def test_a_replica_is_named_as_such(own_redis_server, tmp_path_factory, clock, caplog):
    replica = _start_server(tmp_path_factory)
    try:
        # (a replica, URL or client, is refused at construction: this one is
        # made a replica afterwards, as a failover demotes a primary)
        b = RedisBackend(replica.client(**FAST_CLIENT), fail="closed", retry_interval=3600)
        with replica.client() as c:
            c.replicaof("127.0.0.1", own_redis_server.port)
        lim = Limiter("5/10s", store=b, name="ro", clock=clock)
        with caplog.at_level(logging.WARNING, logger="fastlimit"):
            assert not lim.allow("k")
            assert not lim.allow("k")
        st = b.stats()
        # each READONLY is retried once on a fresh connection (after a
        # failover behind a DNS name, it reaches the new primary); the node
        # answered, so it is not marked down
        assert (st.errors, st.readonly, st.retries, st.skipped, st.down) == (2, 2, 2, 0, False)
        assert "read-only replica" in caplog.text
    finally:
        replica.stop()


# -- eviction: warned of at the first call ------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "noeviction"])
def test_an_evicting_redis_is_warned_of_once(tmp_path_factory, clock, caplog, policy):
    server = _start_server(tmp_path_factory, "--maxmemory-policy", policy)
    try:
        b = RedisBackend(server.url, **FAST)
        lim = Limiter("5/10s", store=b, name="ev", clock=clock)
        with caplog.at_level(logging.WARNING, logger="fastlimit"):
            for _ in range(3):
                assert lim.allow("k")
        warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert b.maxmemory_policy == policy
        if policy == "noeviction":
            assert warnings == []
        else:
            [w] = warnings
            assert policy in w and "starts again from zero" in w
        b.close()
    finally:
        server.stop()


def test_a_redis_without_config_is_not_an_error(tmp_path_factory, clock, caplog):
    server = _start_server(tmp_path_factory, "--rename-command", "CONFIG", "")
    try:
        b = RedisBackend(server.url, **FAST)
        with caplog.at_level(logging.WARNING, logger="fastlimit"):
            assert Limiter("5/10s", store=b, name="nc", clock=clock).allow("k")
        assert b.maxmemory_policy is None and caplog.records == []
        assert b.stats().errors == 0
        b.close()
    finally:
        server.stop()


def test_async_backend_warns_of_eviction_and_counts_oom(tmp_path_factory, clock, caplog):
    server = _start_server(tmp_path_factory, "--maxmemory-policy", "allkeys-lfu")

    async def main():
        b = AsyncRedisBackend(server.url, fail="closed", retry_interval=3600, **FAST)
        lim = b.limiter("5/10s", name="aev", clock=clock)
        assert await lim.allow("k")
        _fill(server)
        assert not await lim.allow("k")
        await b.aclose()
        return b

    try:
        with caplog.at_level(logging.WARNING, logger="fastlimit"):
            b = asyncio.run(main())
    finally:
        server.stop()
    st = b.stats()
    assert b.maxmemory_policy == "allkeys-lfu" and "allkeys-lfu" in caplog.text
    assert (st.calls, st.errors, st.oom, st.down) == (1, 1, 1, False)


# -- failure domains: a three-primary cluster, one primary killed --------------------------


@pytest.fixture
def cluster3(own_cluster):
    """Three primaries (no replicas), as RedisServer objects; a stopped node
    goes unnoticed by the others for 60 s (conftest's own_cluster: its
    launcher picks each node's bus port and retries a taken one)."""
    return own_cluster(node_timeout_ms=60000).nodes


def _cluster_backend(servers, **kw):
    client = redis.cluster.RedisCluster(
        host="127.0.0.1", port=servers[0].port, retry=Retry(NoBackoff(), 0),
        socket_timeout=2, socket_connect_timeout=2)
    return RedisBackend(client, **kw)


def _keys_by_node(b, servers, n=3):
    """``n`` keys per node: {port: [key, ...]}."""
    by_port = {s.port: [] for s in servers}
    i = 0
    while any(len(v) < n for v in by_port.values()):
        key = f"user:{i}"
        node = b.client.get_node_from_key(b.redis_key("c", key))
        if len(by_port[node.port]) < n:
            by_port[node.port].append(key)
        i += 1
    return by_port


def test_a_dead_primary_fails_only_its_own_keys(cluster3, clock):
    b = _cluster_backend(cluster3, fail="closed", retry_interval=3600, prefix=prefix())
    lim = Limiter("4/1h", store=b, name="c", clock=clock)
    by_port = _keys_by_node(b, cluster3)
    dead = cluster3[2]
    dead.stop(signal.SIGKILL)
    for port, keys in by_port.items():
        for key in keys:
            allowed = [lim.allow(key) for _ in range(6)]
            if port == dead.port:
                assert allowed == [False] * 6, "its failure policy: closed"
            else:
                assert allowed == [True] * 4 + [False] * 2, "exact, as if nothing happened"
    st = b.stats()
    assert st.down_nodes == (f"127.0.0.1:{dead.port}",)
    # the dead node's first call failed (retried once), the rest were skipped
    assert (st.connection_errors, st.retries, st.skipped, st.failed_closed) == (1, 1, 17, 18)
    assert st.calls == 36
    # a cluster's ping names no node: a failed one marks none down
    assert not b.ping()
    assert b.stats().down_nodes == (f"127.0.0.1:{dead.port}",)


def test_a_plain_client_on_a_cluster_node_counts_moved(cluster3, clock, caplog):
    # a cluster node's client is refused at construction, unless its user
    # may neither INFO nor EXISTS (what the check asks): then MOVED tells
    with cluster3[0].client() as c:
        c.execute_command("ACL", "SETUSER", "blind", "on", ">pw", "~*", "+@all", "-info",
                          "-exists")
    client = cluster3[0].client(username="blind", password="pw", **FAST_CLIENT)
    b = RedisBackend(client, fail="closed", retry_interval=3600, prefix=prefix())
    lim = Limiter("4/1h", store=b, name="c", clock=clock)
    by_port = _keys_by_node(_cluster_backend(cluster3, prefix=b.prefix), cluster3, 1)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        assert lim.allow(by_port[cluster3[0].port][0]), "its own slot: answered"
        assert not lim.allow(by_port[cluster3[1].port][0])
        assert not lim.allow(by_port[cluster3[2].port][0])
    st = b.stats()
    assert (st.calls, st.errors, st.moved, st.retries, st.skipped, st.down) == (
        1, 2, 2, 0, 0, False)
    assert "redis+cluster://" in caplog.text


# -- fail="local": the host's own table answers while Redis cannot --------------------------


def test_local_is_the_default_and_answers_at_the_same_rate(own_redis_server, clock, caplog):
    b = RedisBackend(own_redis_server.url, retry_interval=3600, **FAST)
    assert b.fail == "local"
    lim = Limiter("5/10s", store=b, name="loc", clock=clock)
    table = Limiter("5/10s", store=SharedTable.anonymous(), name="loc", clock=clock)
    assert [lim.allow("k") for _ in range(2)] == [True, True]
    own_redis_server.stop(signal.SIGKILL)
    # the local table knows nothing of Redis's two hits: it starts afresh,
    # and answers as the shared table would, decision for decision
    for _ in range(7):
        assert lim.hit("k") == table.hit("k")
    clock.advance(2)
    assert lim.hit("k") == table.hit("k") == Decision(True, 5, 0, 10 * S, 0)
    assert lim.peek("k") == table.peek("k")
    assert lim.hit_many(["a", "b", "a"]).tolist() == [True, True, True]
    assert lim.refund("k") and lim.hit("k").allowed
    lim.reset("k")
    assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0)
    st = b.stats()
    # hit x 8, peek, hit_many x 3, hit x 2 (refunds and resets are not checks)
    assert (st.failed_local, st.failed_open, st.failed_closed) == (14, 0, 0)
    assert (st.connection_errors, st.retries) == (1, 1)
    own_redis_server.start()
    assert b.ping()
    assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0), "Redis answers again: its state"
    assert b.stats().failed_local == 14


def _local_hammer(url, prefix, barrier, q):
    b = RedisBackend(url, prefix=prefix, retry_interval=3600, timeout=2, connect_timeout=2)
    lim = Limiter("10/1h", store=b, name="host")
    barrier.wait()
    q.put((sum(lim.allow("k") for _ in range(20)), b.stats().failed_local))


def test_local_tables_are_shared_by_the_processes_of_a_host(own_redis_server):
    """Four processes, each with its backend, Redis dead: the local table is
    one per host, so the host admits the limit once, not once per process."""
    url = own_redis_server.url
    own_redis_server.stop(signal.SIGKILL)
    ctx = multiprocessing.get_context("spawn")  # nothing inherited: a table by name
    barrier, q = ctx.Barrier(4), ctx.Queue()
    prefix_ = prefix()
    procs = [ctx.Process(target=_local_hammer, args=(url, prefix_, barrier, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(n for n, _ in results) == 10 and [f for _, f in results] == [20] * 4


def test_local_quotas_and_leases(own_redis_server):
    b = RedisBackend(own_redis_server.url, retry_interval=3600, **FAST)
    q = Quota("5/month", store=b, name="q", clock=FakeClock(MAY_20_2024))
    uploads = ConcurrencyLimit(2, b, name="up", clock=FakeClock())
    assert q.hit("k").remaining == 4
    in_redis = uploads.try_acquire("k")
    own_redis_server.stop(signal.SIGKILL)
    left = JUNE_1_2024 - MAY_20_2024
    assert [q.allow("k") for _ in range(6)] == [True] * 5 + [False]
    assert q.hit("k") == Decision(False, 5, 0, left, left)
    assert q.usage("k").used == 5 and q.refund("k") and q.allow("k")
    a, c = uploads.try_acquire("k"), uploads.try_acquire("k")
    assert a and c and a.held and uploads.try_acquire("k") is None
    assert uploads.in_flight("k") == 2
    assert a.renew() and a.held
    a.release()
    assert uploads.in_flight("k") == 1
    own_redis_server.start()
    assert b.ping()
    c.release()  # a local lease goes back to the local table, Redis up or not
    assert not in_redis.renew(), "the new server never saw it"
    assert uploads.in_flight("k") == 0
    st = b.stats()
    # quota: 6 allow, hit, usage, allow; leases: 3 acquires (in_flight is not a check)
    assert (st.failed_local, st.failed_open, st.failed_closed) == (12, 0, 0)


def test_local_per_limiter_and_hit_all(own_redis_server, clock):
    b = RedisBackend(own_redis_server.url, fail="open", retry_interval=3600, **FAST)
    opened = Limiter("1/10s", store=b, name="o", clock=clock)
    local = b.limiter("2/10s", name="l", clock=clock, fail="local")
    local2 = Limiter("3/10s", store=b, name="l2", clock=clock, on_full="local")
    own_redis_server.stop(signal.SIGKILL)
    assert [opened.allow("k") for _ in range(3)] == [True] * 3
    assert [local.allow("k") for _ in range(3)] == [True, True, False]
    # all or nothing: l2 has room, l has none, so nothing is counted
    assert [d.allowed for d in b.hit_all([(local2, "k"), (local, "k")])] == [True, False]
    assert [local2.allow("k") for _ in range(4)] == [True] * 3 + [False]
    assert [d.allowed for d in b.hit_all([(local2, "j"), (opened, "j")])] == [True, True]
    assert local2.peek("j").remaining == 2
    with pytest.raises(ConfigurationError, match="fail must be one of 'local', 'open'"):
        RedisBackend(own_redis_server.url, fail="down")


def test_async_backend_answers_locally(own_redis_server, clock):
    async def main():
        b = AsyncRedisBackend(own_redis_server.url, retry_interval=3600, **FAST)
        lim = b.limiter("3/10s", name="al", clock=clock)
        q = b.quota("2/day", name="aq", clock=FakeClock(MAY_20_2024))
        assert await lim.allow("k")
        own_redis_server.stop(signal.SIGKILL)
        got = [await lim.allow("k") for _ in range(4)] + [await q.allow("k") for _ in range(3)]
        await b.aclose()
        return got, b.stats()

    got, st = asyncio.run(main())
    assert got == [True, True, True, False, True, True, False]
    assert st.failed_local == 7 and st.failed_open == 0


# -- a policy sets fail per limit ---------------------------------------------------------


def test_a_policy_sets_fail_per_limit(own_redis_server, tmp_path):
    from fastlimit import Identity, Policy

    b = RedisBackend(own_redis_server.url, fail="open", retry_interval=3600, **FAST)
    policy = Policy.from_dict({
        "identities": {"session": {"rate": "3/1h", "fail": "local"}},
        "routes": {"login": {"match": "POST /login", "rate": "100/1h", "fail": "closed",
                             "per": "identity", "dedicated": True},
                   "search": {"match": "GET /search", "rate": "1/1h", "per": "identity"}},
    }, store=b, overrides=tmp_path / "ov.json")
    user = Identity.session("u1")
    assert policy.hit("GET", "/", user, "192.0.2.1").allowed
    own_redis_server.stop(signal.SIGKILL)
    # login: closed while Redis is down, whatever its own room
    assert not policy.hit("POST", "/login", user, "192.0.2.1").allowed
    # the session limit answers locally: 3 an hour on this host
    assert [policy.hit("GET", "/", user, "192.0.2.1").allowed for _ in range(4)] == [
        True, True, True, False]
    # search's own limit is the backend's: open (the session limit still binds)
    assert not policy.hit("GET", "/search", user, "192.0.2.1").allowed
    st = b.stats()
    # login: closed; GET / x 4 and search's session check: local; search: open
    assert (st.failed_closed, st.failed_local, st.failed_open) == (1, 5, 1)
    # a request is one call, skipped once however many limits it counts
    assert (st.errors, st.skipped) == (1, 5)
    policy.close()


def test_a_policys_fail_is_checked(tmp_path):
    from fastlimit import Policy

    with pytest.raises(ConfigurationError, match=r"routes\.login\.fail: expected one of"):
        Policy.from_dict({"identities": {"session": {"rate": "3/1h"}},
                          "routes": {"login": {"match": "POST /login", "rate": "5/1m",
                                               "fail": "raise"}}},
                         overrides=tmp_path / "ov.json")
    # on a shared table there is nothing to fail: accepted, and moot
    p = Policy.from_dict({"identities": {"session": {"rate": "3/1h", "fail": "closed"}}},
                         store=SharedTable.anonymous(1024), overrides=tmp_path / "ov2.json")
    assert p.spec.identities["session"].fail == "closed"
    p.close()


def test_the_backoff_doubles_up_to_its_cap(own_redis_server, clock, monkeypatch):
    import fastlimit.stores.redis.common as common

    now = [1000.0]
    monkeypatch.setattr(common, "_monotonic", lambda: now[0])  # the backoff's clock only
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=10,
                     max_retry_interval=25, **FAST)
    lim = Limiter("5/10s", store=b, name="bo", clock=clock)
    own_redis_server.stop(signal.SIGKILL)
    tried = []
    for at in (0, 9.9, 10, 29.9, 30, 54.9, 55, 79.9, 80):
        now[0] = 1000.0 + at
        before = b.stats().errors
        assert not lim.allow("k")
        tried.append(b.stats().errors > before)
    # down 10 s, then 20, then 25 (the cap), 25...
    assert tried == [True, False, True, False, True, False, True, False, True]
    own_redis_server.start()
    now[0] += 24.9
    assert not lim.allow("k"), "still within its backoff"
    assert b.ping() and lim.allow("k")


def test_async_hung_server_times_out_once_per_backoff(own_redis_server, clock):
    async def main():
        b = AsyncRedisBackend(own_redis_server.url, fail="closed", timeout=0.2,
                              retry_interval=3600)
        lim = b.limiter("5/10s", name="ah", clock=clock)
        assert await lim.allow("k")
        own_redis_server.pause()
        try:
            assert not await lim.allow("k")  # timed out, retried, timed out again
            assert not await lim.allow("k")  # skipped: marked down
        finally:
            own_redis_server.resume()
        st = b.stats()
        assert (st.errors, st.timeouts, st.retries, st.skipped) == (1, 1, 1, 1)
        assert await b.ping() and not b.stats().down
        assert await lim.allow("k2")
        await b.aclose()

    asyncio.run(main())


def test_a_dead_primarys_keys_are_answered_locally(cluster3, clock):
    b = _cluster_backend(cluster3, retry_interval=3600, prefix=prefix())  # fail="local"
    lim = Limiter("4/1h", store=b, name="c", clock=clock)
    by_port = _keys_by_node(b, cluster3)
    dead = cluster3[1]
    for key in by_port[dead.port]:
        assert lim.allow(key), "one hit counted in Redis before the crash"
    dead.stop(signal.SIGKILL)
    for keys in by_port.values():
        for key in keys:
            # 4 an hour everywhere: the dead node's keys start afresh on the
            # local table (their one hit in Redis is not known there)
            assert [lim.allow(key) for _ in range(6)] == [True] * 4 + [False] * 2
    st = b.stats()
    assert st.down_nodes == (f"127.0.0.1:{dead.port}",)
    assert (st.failed_local, st.failed_open, st.failed_closed) == (18, 0, 0)
    assert st.calls == 3 + 2 * 3 * 6, "the live nodes' keys all went to Redis"
