"""Redis Cluster and Sentinel by URL, against real topologies on 127.0.0.1
(tests/redis_topologies.py): what each URL makes, the wrong kinds of Redis
refused or followed at construction with the URL to write, 4 processes as
4 hosts admitting exactly a global limit, and a forced Sentinel failover
mid-run."""

import asyncio
import logging
import multiprocessing as mp
import pickle
import re
import signal
import time
import uuid

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.crc import key_slot

from fastlimit import (
    AsyncRedisBackend,
    ConfigurationError,
    Limiter,
    RedisBackend,
    SharedTable,
    store_from_url,
)
from fastlimit.stores.redis import topology

FAST = dict(timeout=10, connect_timeout=10)  # no spurious timeouts on a loaded machine


def _name():
    return f"t{uuid.uuid4().hex[:10]}"


def _keys_on_every_node(cluster, name, backend):
    """One user key per primary: a limiter's key whose slot each node serves."""
    found = {}
    for i in range(1000):
        key = f"user:{i}"
        found.setdefault(cluster.primary_of(backend.redis_key(name, key)), key)
        if len(found) == len(cluster.nodes):
            return list(found.values())
    raise AssertionError("no key for some node")


def _exact(backend, cluster=None):
    """A limit of 3 on a key per node (or one key): 3 pass, the 4th is denied."""
    name = _name()
    lim = Limiter("3/1d", store=backend, name=name)
    keys = _keys_on_every_node(cluster, name, backend) if cluster else ["k"]
    for key in keys:
        assert [lim.allow(key) for _ in range(4)] == [True, True, True, False]
    assert backend.stats().errors == 0


# -- options in URLs (parsing only: no server is asked) -----------------------------------


def test_an_option_given_twice_is_refused():
    with pytest.raises(ConfigurationError,
                       match="fail is given both in the URL and as a keyword: give it once"):
        RedisBackend.from_url("redis://127.0.0.1:1/0?fail=closed", fail="open")


def test_the_constructor_names_from_url_for_options_in_a_url():
    with pytest.raises(ConfigurationError, match=re.escape(
            "fail= is an option of the backend, read from a URL by "
            "RedisBackend.from_url(url) and store_from_url(url); the constructor takes it "
            "as a keyword (RedisBackend(url, fail=...))")):
        RedisBackend("redis://127.0.0.1:1/0?fail=closed")


@pytest.mark.parametrize("url, fragment", [
    ("redis+cluster://127.0.0.1:7000,h2/", "expected redis+cluster://HOST:PORT[,HOST:PORT...], "
                                           "got the node 'h2'"),
    ("redis+cluster://127.0.0.1:7000/2", "a Redis Cluster has only database 0"),
    ("redis+sentinel://127.0.0.1:26379/svc/x", "expected redis+sentinel://HOST:PORT/SERVICE"),
    ("redis://127.0.0.1:1/zero", "the database must be a number (/0, /1...), got 'zero'"),
    ("memcached://127.0.0.1:1", "unknown scheme 'memcached'; expected one of redis://"),
    ("redis://127.0.0.1:1/0?lease_ttl=long", "lease_ttl must be a number of seconds"),
    ("redis+cluster://127.0.0.1:7000?ssl_ca_certs=/ca.pem",
     "ssl_ca_certs= is a TLS option, and this URL is not TLS: write rediss+cluster:// or add "
     "ssl=true"),
    ("rediss+sentinel://127.0.0.1:26379/svc?ssl=false",
     "ssl=false contradicts rediss+sentinel://, which is TLS"),
    ("redis+cluster://127.0.0.1:7000?ssl=maybe", "ssl must be true or false, got 'maybe'"),
    ("rediss://127.0.0.1:1/0?ssl_cert_reqs=always",
     "ssl_cert_reqs must be one of none, optional, required, got 'always'"),
    ("unix:///run/redis.sock?ssl=true", "a unix socket takes no TLS"),
    ("rediss+cluster://127.0.0.1:7000?sentinel_ssl=false",
     "sentinel_ssl= is for redis+sentinel:// URLs"),
    ("rediss+sentinel://127.0.0.1/svc", "expected rediss+sentinel://HOST:PORT[,HOST:PORT...]"
                                         "/SERVICE[/DB], got the sentinel '127.0.0.1'"),
])
def test_a_bad_url_is_named_with_what_is_accepted(url, fragment):
    for make in (RedisBackend.from_url, AsyncRedisBackend.from_url):
        with pytest.raises(ConfigurationError, match=re.escape(fragment)):
            make(url)


@pytest.mark.parametrize("url, options", [
    ("rediss+cluster://10.0.0.5:7000,10.0.0.6:7000?ssl_ca_certs=/etc/ca.pem"
     "&ssl_cert_reqs=required",
     {"ssl": True, "ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}),
    ("redis+cluster://10.0.0.5:7000?ssl=true&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
     "&ssl_check_hostname=false",
     {"ssl": True, "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
      "ssl_check_hostname": False}),
    ("rediss+sentinel://10.0.0.1:26379/cache/1?ssl_cert_reqs=none",
     {"ssl": True, "ssl_cert_reqs": "none"}),
    ("redis+sentinel://10.0.0.1:26379/cache?ssl=yes", {"ssl": True}),
    ("rediss://10.0.0.1:6380/0", {"ssl": True}),
    ("redis+cluster://10.0.0.5:7000?ssl=false", {}),
])
def test_tls_urls_give_redis_py_its_options(url, options):
    assert topology.parse(url).tls_options == options


def test_tls_options_reach_the_clients():
    # nothing listens on port 1: the probes go unanswered, the clients are
    # made as they would be (their TLS read back from their pools)
    q = "ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=none&connect_timeout=0.2"
    one = RedisBackend.from_url(f"redis://127.0.0.1:1/0?ssl=true&{q}")
    pool = one.client.connection_pool
    assert pool.connection_class is redis.connection.SSLConnection
    assert (pool.connection_kwargs["ssl_ca_certs"], pool.connection_kwargs["ssl_cert_reqs"]) == (
        "/etc/ca.pem", "none")
    for extra, to_sentinels in (("", redis.connection.SSLConnection),
                                ("&sentinel_ssl=false", redis.connection.Connection)):
        master = RedisBackend.from_url(f"rediss+sentinel://127.0.0.1:1/svc?{q}{extra}")
        pool = master.client.connection_pool
        assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
        assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
        [sentinel] = pool.sentinel_manager.sentinels
        assert sentinel.connection_pool.connection_class is to_sentinels
        master.close()
    cluster = AsyncRedisBackend.from_url(f"redis+cluster://127.0.0.1:1,127.0.0.1:2?ssl=1&{q}")
    kwargs = cluster.client.connection_kwargs
    assert kwargs["connection_class"] is redis.asyncio.connection.SSLConnection
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/etc/ca.pem", "none")
    one.close()


def test_a_server_that_does_not_answer_is_not_checked():
    # the failure policy answers until it does, as before
    backend = RedisBackend.from_url("redis://127.0.0.1:1/0?fail=closed&connect_timeout=0.2")
    assert not Limiter("5/1s", store=backend, name="x").allow("k")
    assert backend.stats().failed_closed == 1


# -- Redis Cluster ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_cluster_url_makes_a_cluster_client(redis_cluster3):
    backend = RedisBackend.from_url(redis_cluster3.url + "?prefix=" + _name())
    assert isinstance(backend.client, redis.cluster.RedisCluster)
    first = redis_cluster3.nodes[0].port
    assert repr(backend).startswith(f"<RedisBackend redis+cluster://127.0.0.1:{first} ")
    _exact(backend, redis_cluster3)
    again = pickle.loads(pickle.dumps(backend))  # as a worker process receives it
    assert isinstance(again.client, redis.cluster.RedisCluster)
    assert again.prefix == backend.prefix
    _exact(again, redis_cluster3)
    backend.close()
    again.close()


@pytest.mark.slow
def test_a_plain_url_to_a_cluster_node_is_followed(redis_cluster3, caplog):
    port = redis_cluster3.nodes[1].port
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        backend = RedisBackend(redis_cluster3.node_url(1), prefix=_name())
    assert isinstance(backend.client, redis.cluster.RedisCluster)
    assert (f"points at a Redis Cluster node; using it as the seed of a cluster client "
            f"(write redis+cluster://127.0.0.1:{port} to say so)") in caplog.text
    _exact(backend, redis_cluster3)  # every node's keys, not only the seed's


@pytest.mark.slow
def test_a_cluster_node_with_a_database_is_refused(redis_cluster3):
    port = redis_cluster3.nodes[0].port
    with pytest.raises(ConfigurationError, match=re.escape(
            f"points at a Redis Cluster node, and a cluster has only database 0: write "
            f"redis+cluster://127.0.0.1:{port}")):
        RedisBackend(redis_cluster3.node_url(0, db=3))


@pytest.mark.slow
def test_a_cluster_url_to_one_server_is_refused(redis_server):
    with pytest.raises(ConfigurationError, match=re.escape(
            f"127.0.0.1:{redis_server.port} is not a Redis Cluster node (redis_mode:standalone)"
            f": write redis://127.0.0.1:{redis_server.port}/0 for one server")):
        RedisBackend.from_url(f"redis+cluster://127.0.0.1:{redis_server.port}")


# -- Sentinel ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sentinel_url_reaches_the_master(redis_sentinel):
    backend = RedisBackend.from_url(redis_sentinel.url + "?prefix=" + _name())
    name = _name()
    lim = Limiter("2/1d", store=backend, name=name)
    assert [lim.allow("k") for _ in range(3)] == [True, True, False]
    with redis_sentinel.master().client() as master:
        assert master.exists(backend.redis_key(name, "k"))
    backend.close()


@pytest.mark.slow
def test_a_replica_is_refused_with_its_master_named(redis_sentinel):
    url = redis_sentinel.replica_url()
    master = redis_sentinel.master_port()
    expected = re.escape(
        f"points at a replica (INFO replication: role:slave, master 127.0.0.1:{master}), which "
        f"refuses every write (READONLY): point it at the primary (redis://127.0.0.1:{master}), "
        f"or at your Sentinels (redis+sentinel://SENTINEL:26379/SERVICE) to follow the primary "
        f"through failovers")
    for make in (RedisBackend, RedisBackend.from_url, AsyncRedisBackend, store_from_url):
        with pytest.raises(ConfigurationError, match=expected):
            make(url)


@pytest.mark.slow
def test_a_sentinel_given_as_a_server_is_refused(redis_sentinel):
    port = redis_sentinel.sentinel_ports[0]
    with pytest.raises(ConfigurationError, match=re.escape(
            f"points at a Sentinel, not a Redis server: write "
            f"redis+sentinel://127.0.0.1:{port}/SERVICE")):
        RedisBackend(f"redis://127.0.0.1:{port}/0")


@pytest.mark.slow
def test_an_unknown_service_is_refused_with_the_known_ones(redis_sentinel):
    port = redis_sentinel.sentinel_ports[0]
    with pytest.raises(ConfigurationError, match=re.escape(
            f"no Sentinel knows the service 'nope' (they monitor: {redis_sentinel.service})")):
        RedisBackend.from_url(f"redis+sentinel://127.0.0.1:{port}/nope")


@pytest.mark.slow
def test_a_sentinel_url_to_a_server_is_refused(redis_server):
    port = redis_server.port
    with pytest.raises(ConfigurationError, match=re.escape(
            f"127.0.0.1:{port} is not a Sentinel (it answered SENTINEL with: ")):
        RedisBackend.from_url(f"redis+sentinel://127.0.0.1:{port}/svc")


# -- asyncio, and clients made by the caller -----------------------------------------------


@pytest.mark.slow
def test_the_asyncio_backend_takes_the_same_urls(redis_cluster3, redis_sentinel):
    async def check(url, client_type):
        backend = AsyncRedisBackend.from_url(url, prefix=_name())
        assert isinstance(backend.client, client_type)
        lim = backend.limiter("3/1d", name=_name())
        # one call first: redis-py's asyncio cluster client, used concurrently
        # before it has initialised, raises AttributeError (issue 17)
        first = await lim.allow("k")
        rest = await asyncio.gather(*(lim.allow("k") for _ in range(9)))
        assert [first, *rest].count(True) == 3
        await backend.aclose()

    async def main():
        await check(redis_cluster3.url, redis.asyncio.cluster.RedisCluster)
        await check(redis_cluster3.node_url(2), redis.asyncio.cluster.RedisCluster)
        await check(redis_sentinel.url, redis.asyncio.Redis)

    asyncio.run(main())


@pytest.mark.slow
def test_ready_made_clients(redis_cluster3, redis_sentinel):
    port = redis_cluster3.nodes[0].port
    hosts = [("127.0.0.1", p) for p in redis_sentinel.sentinel_ports]
    cluster = redis.cluster.RedisCluster(host="127.0.0.1", port=port)
    _exact(RedisBackend(cluster, prefix=_name()), redis_cluster3)
    master = redis.sentinel.Sentinel(hosts).master_for(redis_sentinel.service)
    _exact(RedisBackend(master, prefix=_name()))
    cluster.close()
    master.close()

    async def main():
        sentinel = redis.asyncio.sentinel.Sentinel(hosts)
        for client in (redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=port),
                       sentinel.master_for(redis_sentinel.service)):
            lim = AsyncRedisBackend(client, prefix=_name()).limiter("2/1d", name="x")
            assert [await lim.allow("k") for _ in range(3)] == [True, True, False]
            await client.aclose()
        for client in sentinel.sentinels:
            await client.aclose()

    asyncio.run(main())


# -- 4 processes as 4 hosts ---------------------------------------------------------------


def _host(url, name, hits, barrier, results):
    backend = RedisBackend.from_url(url)  # each host its own backend, from its URL
    lim = Limiter("300/1d", store=backend, name=name)
    barrier.wait()
    admitted = sum(lim.allow("hot") for _ in range(hits))
    stats = backend.stats()
    results.put((admitted, stats.errors, stats.failed_open + stats.failed_closed))


def _four_hosts(target, args=()):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["cluster", "cluster node URLs", "sentinel"])
def test_four_hosts_admit_exactly_the_global_limit(topology, request):
    name = _name()
    if topology == "sentinel":
        urls = [request.getfixturevalue("redis_sentinel").url] * 4
    else:
        cluster = request.getfixturevalue("redis_cluster3")
        # plain URLs, each host another node's: every one followed as a cluster
        urls = ([cluster.url] * 4 if topology == "cluster"
                else [cluster.node_url(i % 3) for i in range(4)])
    out = _four_hosts(_host, [(url, name, 150) for url in urls])
    assert sum(n for n, _, _ in out) == 300, out
    assert all(errors == 0 and by_policy == 0 for _, errors, by_policy in out), out


def _host_through_failover(url, name, i, barrier, switched, results):
    # the exhausted key's backend denies on failure, the flowing key's allows
    spent_b = RedisBackend.from_url(url + "?fail=closed")
    flow_b = RedisBackend.from_url(url + "?fail=open")
    spent = Limiter("40/1d", store=spent_b, name=name + "-spent")
    flow = Limiter("100/1s", store=flow_b, name=name + "-flow")
    barrier.wait()
    healthy = sum(spent.allow("hot") for _ in range(20))
    barrier.wait()  # the parent fails over now
    spent_admitted = flow_admitted = checks = 0
    while not switched.is_set():
        spent_admitted += spent.allow("hot")
        flow_admitted += flow.allow("hot")
        checks += 1
    # after the switch: until Redis itself answers both again, not the policy
    deadline = time.monotonic() + 30
    answered = {id(spent_b): False, id(flow_b): False}
    while not all(answered.values()) and time.monotonic() < deadline:
        for lim, backend in ((spent, spent_b), (flow, flow_b)):
            before = backend.stats()
            allowed = lim.allow("hot")
            after = backend.stats()
            by_redis = after.calls > before.calls and after.errors == before.errors
            answered[id(backend)] |= by_redis
            if lim is spent:
                spent_admitted += allowed
            else:
                flow_admitted += allowed
            checks += 1
    fresh = Limiter("3/1d", store=spent_b, name=name + "-after")
    errors = spent_b.stats().errors
    pattern = [fresh.allow(f"host-{i}") for _ in range(4)]
    pattern_by_redis = spent_b.stats().errors == errors
    stats = [spent_b.stats(), flow_b.stats()]
    results.put({
        "healthy": healthy, "spent": spent_admitted, "flow": flow_admitted, "checks": checks,
        "recovered": all(answered.values()), "pattern": pattern,
        "pattern_by_redis": pattern_by_redis,
        "errors": sum(s.errors for s in stats), "skipped": sum(s.skipped for s in stats),
        "failed_open": sum(s.failed_open for s in stats),
        "failed_closed": sum(s.failed_closed for s in stats),
        "last_error": stats[1].last_error or stats[0].last_error,
        # per kind, where the backend counts them (RedisStats' newer fields)
        "kinds": {k: sum(getattr(s, k, 0) for s in stats)
                  for k in ("retries", "connection_errors", "timeouts", "readonly")},
    })


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_batched_backend_follows_a_sentinel_failover(redis_sentinel, asynchronous):
    """A batcher's connection, dropped on the demoted primary's READONLY,
    connects to the new primary (redis-py's send would reconnect to the old
    one): every check after the switch is answered by Redis."""
    name = _name()
    if not asynchronous:
        b = RedisBackend.from_url(redis_sentinel.url, batch=True, fail="closed")
        lim = Limiter("5/1d", store=b, name=name)
        assert [lim.allow("k") for _ in range(3)] == [True] * 3
        redis_sentinel.failover()
        after = [lim.allow("k") for _ in range(3)]
        st = b.stats()
        b.close()
    else:
        async def run():
            b = AsyncRedisBackend.from_url(redis_sentinel.url, batch=True, fail="closed")
            lim = b.limiter("5/1d", name=name)
            assert [await lim.allow("k") for _ in range(3)] == [True] * 3
            await asyncio.to_thread(redis_sentinel.failover)
            after = [await lim.allow("k") for _ in range(3)]
            st = b.stats()
            await b.aclose()
            return after, st
        after, st = asyncio.run(run())
    # the new primary has every write (failover() waits for the replica)
    assert after == [True, True, False]
    # (a READONLY reply, if the old connection outlived the demotion, is
    # retried once on a fresh one: no check is left to the failure policy)
    assert st.batches == st.calls == 6 and st.failed_closed == st.errors == 0


@pytest.mark.slow
def test_four_hosts_through_a_sentinel_failover(redis_sentinel, record_property):
    """A forced failover while 4 hosts check: the exhausted key stays denied
    (its backend's failure policy is closed), every host's backend reaches
    the new master on its own, and what the flowing key admitted during the
    switch is reported."""
    name = _name()
    ctx = mp.get_context("spawn")
    barrier, switched, results = ctx.Barrier(5), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_host_through_failover,
                         args=(redis_sentinel.url, name, i, barrier, switched, results))
             for i in range(4)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)  # every host has made its backends
        barrier.wait(timeout=120)  # the healthy phase is over
        started = time.monotonic()
        old, new = redis_sentinel.failover()
        switch_s = time.monotonic() - started
        switched.set()
        out = [results.get(timeout=120) for _ in procs]
    finally:
        switched.set()
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert sum(r["healthy"] for r in out) == 40, out
    assert sum(r["spent"] for r in out) == 0, out
    assert all(r["recovered"] for r in out), out
    assert all(r["pattern"] == [True, True, True, False] and r["pattern_by_redis"]
               for r in out), out
    with redis_sentinel.master().client() as master:
        assert redis_sentinel.master().port == new
        keys = [RedisBackend.from_url(redis_sentinel.url).redis_key(name + "-after", f"host-{i}")
                for i in range(4)]
        assert master.exists(*keys) == 4  # written on the new master
    kinds = {k: sum(r["kinds"][k] for r in out) for k in out[0]["kinds"]}
    report = (f"sentinel failover {old}->{new} in {switch_s:.2f} s: flow key (100/1s, "
              f"fail=open) admitted {sum(r['flow'] for r in out)} in "
              f"{sum(r['checks'] for r in out)} checks; answered by the failure policy: "
              f"{sum(r['failed_open'] for r in out)} open, "
              f"{sum(r['failed_closed'] for r in out)} closed; "
              f"{sum(r['errors'] for r in out)} errors, {sum(r['skipped'] for r in out)} "
              f"skipped; by kind {kinds}; last error: {out[0]['last_error']}")
    record_property("failover", report)
    print(report)


def _host_losing_a_primary(url, name, keys, barrier, results):
    # as on 4 machines: each host's fail="local" table of its own
    backend = RedisBackend.from_url(url + "?retry_interval=3600&timeout=10&connect_timeout=10",
                                    local_table=SharedTable.anonymous(4096))
    lim = Limiter("20/1d", store=backend, name=name)
    assert all(lim.allow(k) for k in keys)  # healthy: one hit each, in Redis
    barrier.wait()
    barrier.wait()  # the parent has killed the dead key's primary
    out = []
    for key in keys:
        before = backend.stats()
        admitted = sum(lim.allow(key) for _ in range(30))
        after = backend.stats()
        out.append({f: getattr(after, f) - getattr(before, f) for f in (
            "calls", "errors", "skipped", "failed_local", "failed_open", "failed_closed")}
                   | {"admitted": admitted})
    results.put(out)


@pytest.mark.slow
def test_four_hosts_losing_a_primary_fail_only_its_keys(own_redis_cluster3):
    """A primary killed (SIGKILL) under 4 hosts: the other primaries' keys
    are still counted in Redis, exactly, with no check answered by the
    failure policy; the dead primary's keys are answered by each host's
    local table at the same rate (fail="local")."""
    cluster = own_redis_cluster3
    name = _name()
    probe = RedisBackend.from_url(cluster.url)
    keys = _keys_on_every_node(cluster, name, probe)  # one per node
    dead_node = cluster.nodes[cluster.primary_of(probe.redis_key(name, keys[2]))]
    probe.close()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_host_losing_a_primary,
                         args=(cluster.url, name, keys, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)
        dead_node.stop(signal.SIGKILL)
        barrier.wait(timeout=120)
        out = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    for live in (0, 1):
        per_host = [host[live] for host in out]
        # 20 a day, 4 spent before the kill: 16 more in all, counted in Redis
        assert sum(h["admitted"] for h in per_host) == 16, per_host
        assert all(h["calls"] == 30 and h["errors"] == h["skipped"] == 0
                   and h["failed_local"] == h["failed_open"] == h["failed_closed"] == 0
                   for h in per_host), per_host
    dead = [host[2] for host in out]
    # each host's local table starts afresh: 20 each; one failed call (its
    # retry included), then skipped until the backoff ends
    assert all(h["admitted"] == 20 and h["failed_local"] == 30 and h["calls"] == 0
               and h["errors"] == 1 and h["skipped"] == 29 for h in dead), dead


def _backoff_clock(monkeypatch):
    """The failure backoff's clock (only it), set by hand: [seconds]."""
    import fastlimit.stores.redis.common as common

    now = [1000.0]
    monkeypatch.setattr(common, "_monotonic", lambda: now[0])
    return now


def _drive(asynchronous, url, scenario, **options):
    """Run ``scenario(allow, stats)`` on a RedisBackend (sync) or an
    AsyncRedisBackend made from ``url``: ``allow(key)`` is a coroutine
    either way, one limiter "10/1h" per run."""
    name = _name()

    async def run():
        if asynchronous:
            b = AsyncRedisBackend.from_url(url, **options)
            lim = b.limiter("10/1h", name=name)
            try:
                return await scenario(lim.allow, b.stats, lambda k: b.redis_key(name, k))
            finally:
                await b.aclose()
        b = RedisBackend.from_url(url, **options)
        lim = Limiter("10/1h", store=b, name=name)

        async def allow(key):
            return lim.allow(key)
        try:
            return await scenario(allow, b.stats, lambda k: b.redis_key(name, k))
        finally:
            b.close()

    return asyncio.run(run())


def _owner_port(node, slot):
    with node.client(socket_timeout=2) as c:
        for first, last, owner, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                return int(owner[1])
    return None


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_promoted_replica_is_found_before_the_backoff_ends(own_cluster, monkeypatch,
                                                             asynchronous):
    """A primary killed, its replica promoted (CLUSTER FAILOVER TAKEOVER)
    while the dead node is in its backoff: the slot map is read again at
    most every retry_interval / 4, and the next read sends the key to the
    new primary, which has its count (exact: 10 in all)."""
    import redis_topologies

    cluster = own_cluster(node_timeout_ms=60000, replicas=1,
                          extra=("--cluster-replica-no-failover", "yes"))
    now = _backoff_clock(monkeypatch)

    async def scenario(allow, stats, rkey):
        key = "user:1"
        i = cluster.primary_of(rkey(key))
        primary, replica = cluster.nodes[i], cluster.replicas[i][0]
        assert await allow(key)  # counted in Redis
        with primary.client(socket_timeout=5) as c:
            assert c.execute_command("WAIT", 1, 5000) == 1  # and on the replica
        primary.stop(signal.SIGKILL)
        assert await allow(key)  # failed: answered by the local table
        assert stats().down_nodes == (f"127.0.0.1:{primary.port}",)
        now[0] += 1  # in the backoff (10 s): a refresh, which finds the dead node
        assert await allow(key)
        now[0] += 1  # 1 s since the refresh: none before 2.5 s
        assert await allow(key)
        with replica.client(socket_timeout=5) as c:
            c.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        slot = key_slot(rkey(key))
        for node in [*(n for j, n in enumerate(cluster.nodes) if j != i), replica]:
            redis_topologies.wait_for(
                f"node {node.port} sees the takeover",
                lambda node=node: _owner_port(node, slot) == replica.port)
        now[0] += 1.4  # 2.4 s since the refresh: still none
        assert await allow(key)
        before = stats()
        now[0] += 0.1  # 2.5 s: the next call reads the slot map, and goes there
        after = [await allow(key) for _ in range(10)]
        return before, after, stats()

    before, after, st = _drive(asynchronous, cluster.url, scenario, fail="local",
                               retry_interval=10, **FAST)
    assert (before.refreshes, before.skipped, before.failed_local) == (1, 3, 4)
    # 1 before the kill, 9 more on the promoted replica: exact
    assert after == [True] * 9 + [False]
    assert st.refreshes == 2 and st.skipped == 3 and st.failed_local == 4
    assert st.errors == 1 and st.down_nodes == () and not st.down
    assert st.calls == 1 + 10


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
def test_clusterdown_holds_a_live_node_briefly_and_never_marks_it_down(own_cluster,
                                                                       monkeypatch,
                                                                       asynchronous):
    """With a primary dead and no replica, every node answers CLUSTERDOWN
    (cluster-require-full-coverage): that is an answer, not a dead node.
    Its calls are held for a fixed retry_interval / 4 (never doubled),
    counted as cluster_down, and the node is not reported down; once the
    cluster is whole again the next call after the hold is answered."""
    import redis_topologies

    cluster = own_cluster(node_timeout_ms=1000)
    now = _backoff_clock(monkeypatch)

    async def scenario(allow, stats, rkey):
        found = {}
        for n in range(1000):
            found.setdefault(cluster.primary_of(rkey(f"user:{n}")), f"user:{n}")
        live_key, dead = found[0], cluster.nodes[2]
        assert await allow(live_key)
        dead.stop(signal.SIGKILL)
        with cluster.nodes[0].client(socket_timeout=2) as c:
            redis_topologies.wait_for("the cluster says it is down", lambda: b"cluster_state:fail"
                                      in c.execute_command("CLUSTER", "INFO"))
        tried = []
        for at in (0, 0.9, 1.0, 1.9, 2.0, 2.5, 3.0):  # hold: 4 / 4 = 1 s
            now[0] = 1000.0 + at
            before = stats().cluster_down
            assert await allow(live_key)  # by the local table
            tried.append(stats().cluster_down > before)
        mid = stats()
        dead.start()
        with cluster.nodes[0].client(socket_timeout=2) as c:
            redis_topologies.wait_for("the cluster is whole again", lambda: b"cluster_state:ok"
                                      in c.execute_command("CLUSTER", "INFO"))
        now[0] = 1004.0
        answered = [await allow(live_key) for _ in range(10)]
        return tried, mid, answered, stats()

    tried, mid, answered, st = _drive(asynchronous, cluster.url, scenario, fail="local",
                                      retry_interval=4, **FAST)
    assert tried == [True, False, True, False, True, False, True]
    assert mid.cluster_down == 4 and mid.skipped == 3 and mid.failed_local == 7
    assert mid.connection_errors == 0 and mid.down_nodes == () and not mid.down
    # Redis has counted 1 of its 10: 9 more pass, all answered by Redis
    assert answered == [True] * 9 + [False]
    assert st.calls == 1 + 10 and st.failed_local == 7 and st.cluster_down == 4


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_cluster_with_every_node_dead_is_answered_by_the_policy(own_cluster, asynchronous):
    """redis-py's cluster client raises its own errors, not RedisErrors,
    when no node answers a refresh (RedisClusterUnreachableError): they are
    failures like any other, each check answered by ``fail``, none raised."""
    cluster = own_cluster(node_timeout_ms=60000)
    keys = [f"user:{i}" for i in range(10)]

    async def scenario(allow, stats, rkey):
        before = [await allow(k) for k in keys]
        for node in cluster.nodes:
            node.stop(signal.SIGKILL)
        return before, [await allow(k) for k in keys], stats()

    before, after, st = _drive(asynchronous, cluster.url, scenario, fail="closed",
                               retry_interval=3600, **FAST)
    assert before == [True] * 10 and after == [False] * 10
    assert st.failed_closed == 10 and st.raised == 0 and st.calls == 10
    assert len(st.down_nodes) == st.errors == st.connection_errors


@pytest.mark.slow
def test_a_cluster_node_is_found_by_moved_where_info_is_refused(redis_cluster3):
    user = _name()
    for node in redis_cluster3.nodes:  # ACL users are per node
        with node.client() as c:
            c.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-info")
    port = redis_cluster3.nodes[0].port
    with redis.Redis(host="127.0.0.1", port=port, username=user, password="pw") as c:
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.info("server")
    backend = RedisBackend(f"redis://{user}:pw@127.0.0.1:{port}/0", prefix=_name())
    assert isinstance(backend.client, redis.cluster.RedisCluster)
    _exact(backend, redis_cluster3)
    backend.close()


@pytest.mark.slow
def test_a_cluster_node_by_unix_socket_is_refused(tmp_path_factory):
    from conftest import _start_server

    sock = tmp_path_factory.mktemp("sock") / "redis.sock"
    server = _start_server(tmp_path_factory, "--cluster-enabled", "yes", "--cluster-config-file",
                           "nodes.conf", "--unixsocket", str(sock))
    try:
        with pytest.raises(ConfigurationError, match=re.escape(
                "points at a Redis Cluster node, which redis-py's cluster client cannot reach "
                "by a unix socket: write redis+cluster://HOST:PORT")):
            RedisBackend(f"unix://{sock}")
    finally:
        server.stop()


# -- TLS: a server, a one-node cluster and a sentinel, each on a TLS port ----------------


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """``urls(query)``: the TLS URLs of every kind, each server's own port
    TLS (its plain port only for the fixture's own waits)."""
    import redis_topologies as rt
    from conftest import _redis_binary, _start_server

    binary = _redis_binary()
    cert = rt.make_certificate(tmp_path_factory.mktemp("tls"))
    if cert is None:
        pytest.skip("openssl is not installed: no certificate for the TLS tests")
    tls = {"server": rt.free_port(), "cluster": rt.free_port(), "sentinel": rt.free_port()}
    args = [a for pair in rt.tls_config(cert, tls["server"]) for a in ("--" + pair[0], pair[1])]
    try:
        server = _start_server(tmp_path_factory, *args)
    except RuntimeError:
        pytest.skip("redis-server did not start with --tls-port: built without TLS")
    started, procs = [server], []
    try:
        node = _start_server(
            tmp_path_factory, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(rt.free_port()), "--tls-cluster", "yes",
            *(a for pair in rt.tls_config(cert, tls["cluster"]) for a in ("--" + pair[0], pair[1])))
        started.append(node)
        with node.client() as c:
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            rt.wait_for("the TLS cluster", lambda: b"cluster_state:ok" in c.execute_command(
                "CLUSTER", "INFO"))
        conf = tmp_path_factory.mktemp("tls-sentinel") / "sentinel.conf"
        procs.append(rt.sentinel_process(
            binary, conf, f"port 0\ntls-port {tls['sentinel']}", "tls-svc", tls["server"],
            "".join(f"{k} {v}\n" for k, v in rt.tls_config(cert, tls["sentinel"])[1:])
            + "tls-replication yes\n"))
        with redis.Redis(host="127.0.0.1", port=tls["sentinel"], ssl=True,
                         ssl_ca_certs=str(cert), socket_timeout=2) as s:
            rt.wait_for("the TLS sentinel", lambda: s.sentinel_get_master_addr_by_name("tls-svc"))
        host = "127.0.0.1"

        def urls(q):
            return [f"rediss://{host}:{tls['server']}/0?{q}",
                    f"redis://{host}:{tls['server']}/0?ssl=true&{q}",
                    f"rediss+cluster://{host}:{tls['cluster']}?{q}",
                    f"redis+cluster://{host}:{tls['cluster']}?ssl=true&{q}",
                    f"rediss+sentinel://{host}:{tls['sentinel']}/tls-svc?{q}",
                    f"redis+sentinel://{host}:{tls['sentinel']}/tls-svc?ssl=true&{q}"]

        yield urls, cert
    finally:
        for proc in procs:
            rt._stop(proc)
        for s in started:
            s.stop()


@pytest.mark.slow
def test_tls_urls_against_tls_servers(tls_redis):
    urls, cert = tls_redis
    for url in urls(f"ssl_ca_certs={cert}&ssl_cert_reqs=required"):
        backend = RedisBackend.from_url(url, prefix=_name())
        _exact(backend)
        backend.close()

    async def main():
        for url in urls(f"ssl_ca_certs={cert}")[2:]:  # a cluster and a sentinel
            backend = AsyncRedisBackend.from_url(url, prefix=_name())
            lim = backend.limiter("2/1d", name="x")
            assert [await lim.allow("k") for _ in range(3)] == [True, True, False]
            assert backend.stats().errors == 0
            await backend.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_tls_without_the_ca_is_refused_by_the_server_not_admitted(tls_redis):
    urls, _ = tls_redis
    # a certificate this client cannot verify: every connection fails, the
    # failure policy (closed here) answers
    backend = RedisBackend.from_url(urls("")[0] + "&fail=closed")
    assert not Limiter("5/1s", store=backend, name="x").allow("k")
    st = backend.stats()
    assert (st.failed_closed, st.connection_errors) == (1, 1)
    assert "certificate verify failed" in st.last_error


@pytest.mark.slow
def test_ready_made_clients_of_the_wrong_kind_are_refused(redis_cluster3, redis_sentinel):
    node = redis_cluster3.nodes[0].port
    replica = redis_sentinel.replica().port
    master = redis_sentinel.master_port()
    sentinel = redis_sentinel.sentinel_ports[0]
    cases = [
        (RedisBackend, redis.Redis(host="127.0.0.1", port=node),
         f"RedisBackend was given a redis.client.Redis client connected to 127.0.0.1:{node}, "
         f"a Redis Cluster node (redis_mode:cluster), which answers MOVED for the other nodes' "
         f"keys: pass redis.cluster.RedisCluster(host='127.0.0.1', port={node}) instead, or "
         f"the URL redis+cluster://127.0.0.1:{node}"),
        (AsyncRedisBackend, redis.asyncio.Redis(host="127.0.0.1", port=node),
         f"AsyncRedisBackend was given a redis.asyncio.client.Redis client connected to "
         f"127.0.0.1:{node}, a Redis Cluster node (redis_mode:cluster), which answers MOVED "
         f"for the other nodes' keys: pass redis.asyncio.cluster.RedisCluster("
         f"host='127.0.0.1', port={node}) instead"),
        (RedisBackend, redis.Redis(host="127.0.0.1", port=replica),
         f"connected to 127.0.0.1:{replica}, a replica (INFO replication: role:slave, master "
         f"127.0.0.1:{master}), which refuses every write (READONLY): pass a client of the "
         f"primary (127.0.0.1:{master}) or Sentinel(...).master_for('SERVICE') instead, or "
         f"the URL redis+sentinel://SENTINEL:26379/SERVICE"),
        (AsyncRedisBackend, redis.asyncio.Redis(host="127.0.0.1", port=replica),
         f"connected to 127.0.0.1:{replica}, a replica (INFO replication: role:slave"),
        (RedisBackend, redis.Redis(host="127.0.0.1", port=sentinel),
         f"connected to 127.0.0.1:{sentinel}, a Sentinel, not a Redis server: pass "
         f"Sentinel([('127.0.0.1', {sentinel})]).master_for('SERVICE') instead, or the URL "
         f"redis+sentinel://127.0.0.1:{sentinel}/SERVICE"),
        (RedisBackend, redis.sentinel.Sentinel([("127.0.0.1", sentinel)]).slave_for(
            redis_sentinel.service),
         f"from Sentinel.slave_for('{redis_sentinel.service}'): a replica, which refuses "
         f"every write (READONLY): pass Sentinel(...).master_for('{redis_sentinel.service}') "
         f"instead"),
        (AsyncRedisBackend, redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel)]).slave_for(
            redis_sentinel.service), "from Sentinel.slave_for("),
    ]
    for make, client, message in cases:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            make(client)
    # the right kinds, from the same servers, are taken
    for client in (redis.Redis(host="127.0.0.1", port=master),
                   redis.asyncio.Redis(host="127.0.0.1", port=master)):
        backend = (RedisBackend if isinstance(client, redis.Redis) else AsyncRedisBackend)(
            client, prefix=_name())
        assert backend.client is client
