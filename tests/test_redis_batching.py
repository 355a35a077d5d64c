"""Auto-batching on the Redis backends (issue 17, item 5).

``RedisBackend(url, batch=True)`` coalesces concurrent threads' script calls
into pipelines, ``AsyncRedisBackend(url, batch=True)`` concurrent
coroutines'.  Against a real redis-server (conftest.py): exact counts
under many threads, coroutines and processes, the unbatched backend's
decisions call for call, a lone check sent at once (round trips counted by
``stats().batches`` and by the server's own command counts), calls that
arrive during a round trip carried by the next one, and the failure
policies when the server is stopped, killed or paused.
"""

import asyncio
import multiprocessing as mp
import pickle
import signal
import threading
import time
import uuid

import pytest

from fastlimit import (
    ConcurrencyLimit,
    ConfigurationError,
    Decision,
    FakeClock,
    Limiter,
    RedisBackend,
)
from fastlimit.stores.redis import AsyncRedisBackend

S = 10**9
FAST = dict(timeout=10, connect_timeout=10)  # no spurious timeouts on a loaded machine


def prefix():
    return f"b{uuid.uuid4().hex[:10]}"


def batched(server, **kw):
    return RedisBackend(server.url, prefix=kw.pop("prefix", prefix()), batch=True,
                        **{**FAST, **kw})


def run_threads(n, work):
    barrier = threading.Barrier(n)
    out = [None] * n
    errors = []

    def run(i):
        try:
            barrier.wait()
            out[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return out


def wait_until(what, condition, timeout=30.0):
    """Waits for a state the test set up (not a duration under test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


# -- exactness -----------------------------------------------------------------------


def test_64_threads_admit_exactly_the_limit_in_fewer_round_trips(redis_server):
    b = batched(redis_server)
    lim = Limiter("500/1d", store=b, name="hot")
    admitted = run_threads(64, lambda i: sum(lim.allow("k") for _ in range(20)))
    assert sum(admitted) == 500
    st = b.stats()
    assert st.calls == st.batched == 64 * 20 and st.errors == 0
    assert st.batches < st.calls, "concurrent calls shared round trips"
    assert lim.peek("k").remaining == 0


def test_hit_decisions_under_64_threads_count_every_hit_once(redis_server):
    """Each Decision's remaining is the count after its own hit: under
    batching, the allowed hits see every remaining from limit-1 down to 0
    exactly once (no hit counted twice or lost)."""
    b = batched(redis_server)
    lim = Limiter("300/1d", store=b, name="hits")
    seen = run_threads(64, lambda i: [lim.hit("k") for _ in range(8)])
    allowed = sorted(d.remaining for ds in seen for d in ds if d.allowed)
    assert allowed == list(range(300))
    assert all(d.retry_after > 0 for ds in seen for d in ds if not d.allowed)


def _hammer(url, pfx, barrier, q):
    b = RedisBackend(url, prefix=pfx, batch=True, **FAST)
    lim = Limiter("400/1d", store=b, name="mp")
    barrier.wait()
    counts = []
    threads = [threading.Thread(target=lambda: counts.append(
        sum(lim.allow("hot") for _ in range(40)))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = b.stats()
    q.put((sum(counts), st.errors, st.calls))


def test_four_processes_of_16_threads_admit_exactly_the_limit(redis_server):
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(4), ctx.Queue()
    pfx = prefix()
    procs = [ctx.Process(target=_hammer, args=(redis_server.url, pfx, barrier, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(n for n, _e, _c in results) == 400, results
    assert all(e == 0 and c == 16 * 40 for _n, e, c in results)
    assert all(p.exitcode == 0 for p in procs)



def _inherited(lim, barrier, q):
    barrier.wait()
    counts = []
    threads = [threading.Thread(target=lambda: counts.append(
        sum(lim.allow("hot") for _ in range(25)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.put(sum(counts))


def test_a_batched_backend_in_use_when_forked_serves_each_child_on_its_own_connection(
        redis_server):
    """Forked while its connection is held (and used again in the parent
    meanwhile): each child takes a connection of its own, no reply is read
    by the wrong process, and the counts stay exact."""
    b = batched(redis_server)
    lim = Limiter("300/1d", store=b, name="fork")
    assert lim.allow("hot")
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_inherited, args=(lim, barrier, q)) for _ in range(3)]
    for p in procs:
        p.start()
    barrier.wait()
    mine = sum(lim.allow("hot") for _ in range(100))
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert mine + sum(results) == 299, (mine, results)
    assert all(p.exitcode == 0 for p in procs)


# -- the unbatched backend's decisions -------------------------------------------------


def _script(backend, clock):
    """A scripted sequence over every rate operation; returns what each answered."""
    api = Limiter("5/10s", store=backend, name="api", clock=clock)
    big = Limiter("3/1s", store=backend, name="big", burst=6, clock=clock)
    out = []
    for step in range(40):
        key = f"u{step % 3}"
        out.append(api.hit(key))
        out.append(big.hit(key, cost=step % 4))
        out.append(api.peek(key, cost=2))
        out.append(api.allow(key))
        if step % 7 == 3:
            out.append(api.refund(key))
        if step % 11 == 5:
            api.reset(key)
        if step % 5 == 0:
            out.append(api.hit_many([key, "u9", key, "u8"]).tolist())
        if step % 6 == 1:
            out.append(backend.hit_all([(api, key), (big, key, 2)]))
        clock.advance(0.37)
    return out


def test_a_scripted_sequence_answers_as_unbatched(redis_server):
    plain = RedisBackend(redis_server.url, prefix=prefix(), **FAST)
    expected = _script(plain, FakeClock(1000 * S))
    assert any(isinstance(d, Decision) and not d.allowed for d in expected)
    b = batched(redis_server)
    assert _script(b, FakeClock(1000 * S)) == expected
    st = b.stats()
    assert st.batched == st.calls == plain.stats().calls


def test_a_scripted_sequence_answers_as_unbatched_while_other_threads_share_its_round_trips(
        redis_server):
    """Threads hammering other keys keep a round trip in flight, so the
    script's calls queue and go in pipelines with theirs: same answers."""
    plain = RedisBackend(redis_server.url, prefix=prefix(), **FAST)
    expected = _script(plain, FakeClock(1000 * S))
    b = batched(redis_server)
    noise = Limiter("1000000/1s", store=b, name="noise")
    stop = threading.Event()

    def hammer(i):
        n = 0
        while not stop.is_set():
            noise.allow(f"n{i}:{n % 50}")
            n += 1
        return n

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        got = _script(b, FakeClock(1000 * S))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert got == expected
    st = b.stats()
    assert st.errors == 0 and st.batches < st.batched, "calls shared round trips"


# -- a lone check waits for nothing ----------------------------------------------------


def test_a_lone_check_is_sent_at_once_in_a_round_trip_of_its_own(own_redis_server):
    b = batched(own_redis_server)
    lim = Limiter("10/1m", store=b, name="lone", clock=FakeClock(S))
    assert lim.hit("k") == Decision(True, 10, 9, 6 * S, 0)
    st = b.stats()
    # (a new server: NOSCRIPT, the script loaded, the call sent again)
    assert (st.batches, st.batched, st.calls, st.noscript) == (1, 1, 1, 1)
    for _ in range(9):
        lim.allow("k")
    assert not lim.allow("k")
    st = b.stats()
    assert (st.batches, st.batched, st.calls) == (11, 11, 11)
    assert own_redis_server.commands("evalsha") == 11


def test_calls_that_arrive_during_a_round_trip_go_together_in_the_next(own_redis_server):
    """The server paused: the first check's round trip stays in flight while
    ten more threads check; they queue, and once it is answered the first
    of them sends all ten in one pipeline."""
    b = batched(own_redis_server)
    lim = Limiter("100/1m", store=b, name="queue")
    lim.allow("warm")  # connects and loads the script
    sent = b.stats().batches
    own_redis_server.pause()
    try:
        first = threading.Thread(target=lim.allow, args=("k",))
        first.start()
        wait_until("the first call in flight", lambda: b.stats().batches == sent + 1)
        rest = [threading.Thread(target=lim.allow, args=(f"k{i}",)) for i in range(10)]
        for t in rest:
            t.start()
        wait_until("ten calls queued", lambda: len(b._batcher._queue) == 10)
    finally:
        own_redis_server.resume()
    for t in [first, *rest]:
        t.join(timeout=60)
    st = b.stats()
    assert (st.batches - sent, st.calls, st.errors) == (2, 12, 0)


def test_a_script_the_server_lacks_is_loaded_and_its_pipelined_calls_sent_again(
        own_redis_server):
    """Ten lease acquires queued behind a rate check: the leases script was
    never loaded, so the pipeline's replies are NOSCRIPT; it is loaded and
    the ten sent again, each acquire answered once, in the same order."""
    b = batched(own_redis_server)
    lim = Limiter("100/1m", store=b, name="rate")
    uploads = ConcurrencyLimit(6, b, name="uploads")
    lim.allow("warm")  # loads gcra only
    sent = b.stats().batches
    got = []
    own_redis_server.pause()
    try:
        first = threading.Thread(target=lim.allow, args=("k",))
        first.start()
        wait_until("the first call in flight", lambda: b.stats().batches == sent + 1)
        rest = [threading.Thread(target=lambda: got.append(uploads.try_acquire("f")))
                for _ in range(10)]
        for t in rest:
            t.start()
        wait_until("ten calls queued", lambda: len(b._batcher._queue) == 10)
    finally:
        own_redis_server.resume()
    for t in [first, *rest]:
        t.join(timeout=60)
    st = b.stats()
    assert (st.batches - sent, st.noscript, st.errors) == (2, 11, 0)  # (warm's NOSCRIPT too)
    assert sum(lease is not None for lease in got) == 6
    assert uploads.in_flight("f") == 6


def test_batch_size_bounds_the_calls_per_round_trip(own_redis_server):
    b = batched(own_redis_server, batch_size=4)
    lim = Limiter("100/1m", store=b, name="size")
    lim.allow("warm")
    sent = b.stats().batches
    own_redis_server.pause()
    try:
        first = threading.Thread(target=lim.allow, args=("k",))
        first.start()
        wait_until("the first call in flight", lambda: b.stats().batches == sent + 1)
        rest = [threading.Thread(target=lim.allow, args=(f"k{i}",)) for i in range(10)]
        for t in rest:
            t.start()
        wait_until("ten calls queued", lambda: len(b._batcher._queue) == 10)
    finally:
        own_redis_server.resume()
    for t in [first, *rest]:
        t.join(timeout=60)
    st = b.stats()
    # first, then 4 + 4 + 2
    assert (st.batches - sent, st.calls) == (4, 12)


# -- failures ------------------------------------------------------------------------


@pytest.mark.parametrize("fail", ["closed", "open", "local"])
def test_a_stopped_server_gets_each_checks_failure_policy(own_redis_server, fail):
    b = batched(own_redis_server, fail=fail, retry_interval=3600)
    lim = Limiter("50/1h", store=b, name="down", clock=FakeClock(1000 * S))
    assert lim.allow("k")
    own_redis_server.stop(signal.SIGKILL)
    decisions = run_threads(16, lambda i: [lim.hit("k") for _ in range(10)])
    flat = [d for ds in decisions for d in ds]
    st = b.stats()
    if fail == "closed":
        assert not any(d.allowed for d in flat) and st.failed_closed == 160
    elif fail == "open":
        assert all(d.allowed for d in flat) and st.failed_open == 160
    else:  # the local table answers at the same rate: exactly the limit
        assert sum(d.allowed for d in flat) == 50 and st.failed_local == 160
    assert st.down and st.down_nodes == (b.address,)
    assert st.errors + st.skipped == 160 and st.skipped > 0
    assert st.errors == st.connection_errors


def test_failure_answers_match_the_unbatched_backend(own_redis_server):
    plain = RedisBackend(own_redis_server.url, prefix=prefix(), fail="closed",
                         retry_interval=3600, **FAST)
    b = batched(own_redis_server, fail="closed", retry_interval=3600)
    limits = [Limiter("5/10s", store=s, name="x", clock=FakeClock(S)) for s in (plain, b)]
    own_redis_server.stop(signal.SIGKILL)
    answers = [[lim.hit("k", cost=2), lim.peek("k"), lim.allow("k"), lim.refund("k")]
               for lim in limits]
    assert answers[0] == answers[1]
    one, two = plain.stats(), b.stats()
    assert (one.errors, one.skipped, one.failed_closed) == (two.errors, two.skipped,
                                                            two.failed_closed)


@pytest.mark.parametrize("batch", [False, True])
def test_a_restarted_server_is_answered_on_a_fresh_connection(own_redis_server, clock, batch):
    """As unbatched (test_redis_failures.py), number for number."""
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=3600, batch=batch,
                     **FAST)
    lim = Limiter("5/10s", store=b, name="r", clock=clock)
    assert lim.allow("k")
    own_redis_server.stop(signal.SIGKILL)
    own_redis_server.start()
    assert lim.hit("k") == Decision(True, 5, 4, 2 * S, 0), "a new, empty server"
    st = b.stats()
    assert (st.calls, st.errors, st.noscript, st.skipped) == (2, 0, 2, 0)
    assert not st.down and own_redis_server.commands("evalsha") == 1


@pytest.mark.parametrize("batch", [False, True])
def test_a_dead_server_costs_one_retry_then_its_backoff(own_redis_server, clock, batch):
    b = RedisBackend(own_redis_server.url, fail="closed", retry_interval=3600, batch=batch,
                     **FAST)
    lim = Limiter("5/10s", store=b, name="d", clock=clock)
    assert lim.allow("k")
    own_redis_server.stop(signal.SIGKILL)
    for _ in range(5):
        assert not lim.allow("k")
    st = b.stats()
    assert (st.errors, st.connection_errors, st.retries, st.skipped, st.failed_closed) == (
        1, 1, 1, 4, 5)
    assert st.down and st.down_nodes == (b.address,)


@pytest.mark.parametrize("batch", [False, True])
def test_a_hung_server_times_out_once_per_backoff(own_redis_server, clock, batch):
    b = RedisBackend(own_redis_server.url, fail="closed", timeout=0.2, retry_interval=3600,
                     batch=batch)
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


def test_a_hung_server_under_threads_marks_its_node_down_once(own_redis_server):
    """One round trip timed out (twice: the retry) carrying whatever was
    queued; each of its calls is answered by the policy and counted, the
    node is marked down once, and the calls queued behind it are skipped."""
    b = RedisBackend(own_redis_server.url, prefix=prefix(), batch=True, fail="closed",
                     timeout=0.2, connect_timeout=5, retry_interval=3600)
    lim = Limiter("5/10s", store=b, name="hung", clock=FakeClock(S))
    assert lim.allow("k")
    own_redis_server.pause()
    try:
        decisions = run_threads(8, lambda i: lim.hit("k"))
    finally:
        own_redis_server.resume()
    assert not any(d.allowed for d in decisions)
    st = b.stats()
    assert st.failed_closed == 8 and st.errors + st.skipped == 8
    assert st.errors == st.timeouts and st.retries == st.errors
    assert st.down and st.down_nodes == (b.address,)


# -- options -------------------------------------------------------------------------


def test_bad_batch_options_are_refused(redis_server):
    with pytest.raises(ConfigurationError, match="batch must be"):
        RedisBackend(redis_server.url, batch=1)
    with pytest.raises(ConfigurationError, match="batch_size"):
        RedisBackend(redis_server.url, batch=True, batch_size=0)


def test_a_batched_backend_pickles_batched(redis_server):
    b = batched(redis_server)
    copy = pickle.loads(pickle.dumps(b))
    lim = Limiter("5/1m", store=copy, name="p")
    assert lim.allow("k") and copy.stats().batches == 1


def test_a_cluster_is_refused(redis_cluster):
    url = f"redis+cluster://127.0.0.1:{redis_cluster.port}"
    with pytest.raises(ConfigurationError, match="batch=True needs one Redis server"):
        RedisBackend(url, batch=True)

    async def main():
        with pytest.raises(ConfigurationError, match="batch=True needs one Redis server"):
            AsyncRedisBackend(url, batch=True)
        with pytest.raises(ConfigurationError, match="batch must be"):
            AsyncRedisBackend(redis_cluster.url, batch="yes")

    asyncio.run(main())


# -- coroutines: AsyncRedisBackend(url, batch=True) ------------------------------------


def abatched(server, **kw):
    return AsyncRedisBackend(server.url, prefix=kw.pop("prefix", prefix()), batch=True,
                             **{**FAST, **kw})


async def await_state(what, condition, timeout=30.0):
    """Waits for a state the test set up (not a duration under test), letting
    the loop run meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_64_coroutines_admit_exactly_the_limit_in_fewer_round_trips(redis_server):
    async def main():
        b = abatched(redis_server)
        lim = b.limiter("500/1d", name="hot")

        async def work():
            return sum([await lim.allow("k") for _ in range(20)])

        admitted = await asyncio.gather(*[work() for _ in range(64)])
        st = b.stats()
        left = (await lim.peek("k")).remaining
        await b.aclose()
        return sum(admitted), left, st

    admitted, left, st = asyncio.run(main())
    assert (admitted, left) == (500, 0)
    assert st.calls == st.batched == 64 * 20 and st.errors == 0
    assert st.batches < st.calls / 4, "concurrent calls shared round trips"


def test_hit_decisions_under_64_coroutines_count_every_hit_once(redis_server):
    async def main():
        b = abatched(redis_server)
        lim = b.limiter("300/1d", name="hits")

        async def work():
            return [await lim.hit("k") for _ in range(8)]

        seen = await asyncio.gather(*[work() for _ in range(64)])
        await b.aclose()
        return [d for ds in seen for d in ds]

    decisions = asyncio.run(main())
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(300))
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)


async def _ascript(backend, clock):
    """_script's sequence on an asyncio backend."""
    api = backend.limiter("5/10s", name="api", clock=clock)
    big = backend.limiter("3/1s", name="big", burst=6, clock=clock)
    out = []
    for step in range(40):
        key = f"u{step % 3}"
        out.append(await api.hit(key))
        out.append(await big.hit(key, cost=step % 4))
        out.append(await api.peek(key, cost=2))
        out.append(await api.allow(key))
        if step % 7 == 3:
            out.append(await api.refund(key))
        if step % 11 == 5:
            await api.reset(key)
        if step % 5 == 0:
            out.append((await api.hit_many([key, "u9", key, "u8"])).tolist())
        if step % 6 == 1:
            out.append(await backend.hit_all([(api, key), (big, key, 2)]))
        clock.advance(0.37)
    return out


def test_coroutines_answer_a_scripted_sequence_as_the_sync_backend_alone_and_sharing_trips(
        redis_server):
    """Coroutines hammering other keys keep a round trip in flight, so the
    script's calls queue and go in pipelines with theirs: same answers as
    the unbatched sync backend."""
    plain = RedisBackend(redis_server.url, prefix=prefix(), **FAST)
    expected = _script(plain, FakeClock(1000 * S))

    async def main():
        b = abatched(redis_server)
        alone = await _ascript(b, FakeClock(1000 * S))
        b2 = abatched(redis_server)
        noise = b2.limiter("1000000/1s", name="noise")
        stop = False

        async def hammer(i):
            n = 0
            while not stop:
                await noise.allow(f"n{i}:{n % 50}")
                n += 1

        tasks = [asyncio.create_task(hammer(i)) for i in range(8)]
        await asyncio.sleep(0)
        shared = await _ascript(b2, FakeClock(1000 * S))
        stop = True
        await asyncio.gather(*tasks)
        await b.aclose()
        await b2.aclose()
        return alone, shared, b.stats(), b2.stats()

    alone, shared, st, st2 = asyncio.run(main())
    assert alone == expected and shared == expected
    assert st.batched == st.calls == st.batches == plain.stats().calls, "one at a time: alone"
    assert st2.errors == 0 and st2.batches < st2.batched, "calls shared round trips"


def test_a_lone_coroutine_is_sent_at_once_in_a_round_trip_of_its_own(own_redis_server):
    async def main():
        b = abatched(own_redis_server)
        lim = b.limiter("10/1m", name="lone", clock=FakeClock(S))
        first = await lim.hit("k")
        st1 = b.stats()
        got = [await lim.allow("k") for _ in range(10)]
        await b.aclose()
        return first, st1, got, b.stats()

    first, st1, got, st = asyncio.run(main())
    assert first == Decision(True, 10, 9, 6 * S, 0)
    # (a new server: NOSCRIPT, the script loaded, the call sent again)
    assert (st1.batches, st1.batched, st1.calls, st1.noscript) == (1, 1, 1, 1)
    assert got == [True] * 9 + [False]
    assert (st.batches, st.batched, st.calls) == (11, 11, 11)
    assert own_redis_server.commands("evalsha") == 11


def _paused_with_queue(server, b, first, rest):
    """Runs ``first`` (a coroutine function) with the server paused until its
    round trip is in flight and the coroutines ``rest`` are queued behind
    it; then resumes the server and returns every result."""

    async def main():
        sent = b.stats().batches
        server.pause()
        try:
            lead = asyncio.create_task(first())
            await await_state("the first call in flight", lambda: b.stats().batches == sent + 1)
            queued = [asyncio.create_task(c()) for c in rest]
            await await_state(f"{len(rest)} calls queued",
                              lambda: len(b._batcher._queue) == len(rest))
        finally:
            server.resume()
        return await asyncio.gather(lead, *queued), b.stats().batches - sent

    return main()


def test_coroutines_that_arrive_during_a_round_trip_go_together_in_the_next(own_redis_server):
    async def main():
        b = abatched(own_redis_server)
        lim = b.limiter("100/1m", name="queue")
        await lim.allow("warm")  # connects and loads the script
        got, trips = await _paused_with_queue(
            own_redis_server, b, lambda: lim.allow("k"),
            [lambda i=i: lim.allow(f"k{i}") for i in range(10)])
        await b.aclose()
        return got, trips, b.stats()

    got, trips, st = asyncio.run(main())
    assert got == [True] * 11
    assert (trips, st.calls, st.errors, st.batched) == (2, 12, 0, 12)


def test_batch_size_bounds_the_coroutines_per_round_trip(own_redis_server):
    async def main():
        b = abatched(own_redis_server, batch_size=4)
        lim = b.limiter("100/1m", name="size")
        await lim.allow("warm")
        _got, trips = await _paused_with_queue(
            own_redis_server, b, lambda: lim.allow("k"),
            [lambda i=i: lim.allow(f"k{i}") for i in range(10)])
        await b.aclose()
        return trips, b.stats()

    trips, st = asyncio.run(main())
    assert (trips, st.calls) == (4, 12)  # first, then 4 + 4 + 2


def test_a_coroutine_cancelled_while_queued_is_not_sent(own_redis_server):
    async def main():
        b = abatched(own_redis_server)
        lim = b.limiter("100/1m", name="cancel")
        await lim.allow("warm")
        sent = b.stats().batches
        own_redis_server.pause()
        try:
            lead = asyncio.create_task(lim.allow("k"))
            await await_state("the first call in flight", lambda: b.stats().batches == sent + 1)
            queued = [asyncio.create_task(lim.hit("c")) for _ in range(5)]
            await await_state("5 calls queued", lambda: len(b._batcher._queue) == 5)
            queued[1].cancel()
            queued[3].cancel()
        finally:
            own_redis_server.resume()
        got = await asyncio.gather(lead, *queued, return_exceptions=True)
        trips = b.stats().batches - sent
        left = (await lim.peek("c")).remaining
        await b.aclose()
        return got, left, trips

    got, left, trips = asyncio.run(main())
    assert got[0] is True
    assert [type(g).__name__ for g in got[1:]] == [
        "Decision", "CancelledError", "Decision", "CancelledError", "Decision"]
    assert sorted(d.remaining for d in got[1:] if isinstance(d, Decision)) == [97, 98, 99]
    assert left == 97, "the cancelled hits were not sent"
    assert trips == 2


def test_a_leader_cancelled_in_flight_leaves_the_queued_coroutines_answered(own_redis_server):
    """The lone call's round trip is its own coroutine's; cancelling it
    mid-flight drops that connection, and the calls queued behind it still
    go (in a task of the backend, not of any caller)."""
    async def main():
        b = abatched(own_redis_server)
        lim = b.limiter("100/1m", name="lead")
        await lim.allow("warm")
        sent = b.stats().batches
        own_redis_server.pause()
        try:
            lead = asyncio.create_task(lim.allow("k"))
            await await_state("the first call in flight", lambda: b.stats().batches == sent + 1)
            queued = [asyncio.create_task(lim.hit(f"q{i}")) for i in range(5)]
            await await_state("5 calls queued", lambda: len(b._batcher._queue) == 5)
            lead.cancel()
            await asyncio.gather(lead, return_exceptions=True)
        finally:
            own_redis_server.resume()
        got = await asyncio.gather(*queued)
        await b.aclose()
        return got, b.stats()

    got, st = asyncio.run(main())
    assert [d.remaining for d in got] == [99] * 5
    assert st.errors == 0 and st.batched == 7


@pytest.mark.parametrize("fail", ["closed", "open", "local"])
def test_a_stopped_server_gets_each_coroutines_failure_policy(own_redis_server, fail):
    async def main():
        b = abatched(own_redis_server, fail=fail, retry_interval=3600)
        lim = b.limiter("50/1h", name="down", clock=FakeClock(1000 * S))
        assert await lim.allow("k")
        own_redis_server.stop(signal.SIGKILL)

        async def work():
            return [await lim.hit("k") for _ in range(10)]

        decisions = await asyncio.gather(*[work() for _ in range(16)])
        await b.aclose()
        return [d for ds in decisions for d in ds], b.stats(), b.address

    flat, st, address = asyncio.run(main())
    if fail == "closed":
        assert not any(d.allowed for d in flat) and st.failed_closed == 160
    elif fail == "open":
        assert all(d.allowed for d in flat) and st.failed_open == 160
    else:  # the local table answers at the same rate: exactly the limit
        assert sum(d.allowed for d in flat) == 50 and st.failed_local == 160
    assert st.down and st.down_nodes == (address,)
    assert st.errors + st.skipped == 160 and st.skipped > 0
    assert st.errors == st.connection_errors


def _mixed_policies(backend):
    return [backend.limiter("5/10s", name=f"m{fail}", clock=FakeClock(S), fail=fail)
            for fail in ("closed", "open", "local", "raise")]


def _policy_answers(results):
    """What each call got, by its limiter's policy: denied, allowed, the
    local table's fresh answer, BackendError."""
    names = []
    for r in results:
        if isinstance(r, BaseException):
            names.append(type(r).__name__)
        else:
            names.append((r.allowed, r.remaining))
    return names


def each_its_own(answers):
    """Closed denies; open allows (remaining as for one hit); raise raises;
    local counts in the local table: 4, 3 and 2 left, in the order the
    callers run once answered (threads: any)."""
    assert answers[0::4] == [(False, 0)] * 3
    assert answers[1::4] == [(True, 4)] * 3
    assert sorted(answers[2::4]) == [(True, 2), (True, 3), (True, 4)]
    assert answers[3::4] == ["BackendError"] * 3
    return True


def test_a_server_killed_mid_round_trip_answers_each_queued_call_by_its_own_policy(
        own_redis_server):
    """Sync: the server paused with a round trip in flight and twelve calls
    of four limiters (closed, open, local, raise) queued behind it, then
    killed.  The first call fails (connection lost, retried, refused); with
    no backoff (retry_interval=0) the twelve go in one round trip, which is
    refused: each answered by its own limiter's policy, the node marked down
    once per failed round trip."""
    b = batched(own_redis_server, retry_interval=0)
    first = Limiter("5/10s", store=b, name="first", clock=FakeClock(S), on_full="deny")
    lims = _mixed_policies(b)
    assert first.allow("warm") and all(lim.peek("k").remaining == 5 for lim in lims)
    base = b.stats()
    out = [None] * 12
    own_redis_server.pause()
    try:
        lead = threading.Thread(target=first.allow, args=("k",))
        lead.start()
        wait_until("the first call in flight", lambda: b.stats().batches == base.batches + 1)

        def call(i):
            try:
                out[i] = lims[i % 4].hit("k")
            except BaseException as e:  # noqa: BLE001 - compared below
                out[i] = e

        rest = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for i, t in enumerate(rest):  # in order: the queue is the calls' order
            t.start()
            wait_until(f"{i + 1} queued", lambda i=i: len(b._batcher._queue) == i + 1)
    finally:
        own_redis_server.stop(signal.SIGKILL)
    for t in [lead, *rest]:
        t.join(timeout=60)
    assert each_its_own(_policy_answers(out))
    st = b.stats()
    assert st.batches - base.batches == 2
    assert (st.errors - base.errors, st.connection_errors, st.retries, st.skipped) == (
        13, 13, 1, 0)
    assert (st.failed_closed, st.failed_open, st.failed_local, st.raised) == (4, 3, 3, 3)


def test_a_server_killed_mid_round_trip_answers_each_queued_coroutine_by_its_own_policy(
        own_redis_server):
    """The same with coroutines."""
    async def main():
        b = abatched(own_redis_server, retry_interval=0)
        first = b.limiter("5/10s", name="first", clock=FakeClock(S), fail="closed")
        lims = _mixed_policies(b)
        assert await first.allow("warm")
        base = b.stats()
        own_redis_server.pause()
        try:
            lead = asyncio.create_task(first.allow("k"))
            await await_state("the first call in flight",
                              lambda: b.stats().batches == base.batches + 1)
            rest = [asyncio.create_task(lims[i % 4].hit("k")) for i in range(12)]
            await await_state("12 queued", lambda: len(b._batcher._queue) == 12)
        finally:
            own_redis_server.stop(signal.SIGKILL)
        got = await asyncio.gather(lead, *rest, return_exceptions=True)
        await b.aclose()
        return got, base, b.stats()

    got, base, st = asyncio.run(main())
    assert got[0] is False
    assert each_its_own(_policy_answers(got[1:]))
    assert st.batches - base.batches == 2
    assert (st.errors - base.errors, st.connection_errors, st.retries, st.skipped) == (
        13, 13, 1, 0)
    assert (st.failed_closed, st.failed_open, st.failed_local, st.raised) == (4, 3, 3, 3)


def test_a_hung_server_under_coroutines_marks_its_node_down_once(own_redis_server):
    """Paused: the lone call in flight times out (and its retry); the calls
    queued behind it are skipped while the node is marked down."""
    async def main():
        b = AsyncRedisBackend(own_redis_server.url, prefix=prefix(), batch=True,
                              fail="closed", timeout=0.2, connect_timeout=5,
                              retry_interval=3600)
        lim = b.limiter("5/10s", name="hung", clock=FakeClock(S))
        assert await lim.allow("k")
        own_redis_server.pause()
        try:
            decisions = await asyncio.gather(*[lim.hit("k") for _ in range(8)])
        finally:
            own_redis_server.resume()
        await b.aclose()
        return decisions, b.stats(), b.address

    decisions, st, address = asyncio.run(main())
    assert not any(d.allowed for d in decisions)
    assert st.failed_closed == 8 and st.errors + st.skipped == 8
    assert st.errors == st.timeouts == 1 and st.retries == 1
    assert st.down and st.down_nodes == (address,)


def test_a_restarted_server_is_answered_on_a_fresh_connection_by_coroutines(own_redis_server):
    async def main():
        b = abatched(own_redis_server, fail="closed", retry_interval=3600)
        lim = b.limiter("5/10s", name="r", clock=FakeClock(S))
        assert await lim.allow("k")
        own_redis_server.stop(signal.SIGKILL)
        own_redis_server.start()
        d = await lim.hit("k")
        await b.aclose()
        return d, b.stats()

    d, st = asyncio.run(main())
    assert d == Decision(True, 5, 4, 2 * S, 0), "a new, empty server"
    assert (st.calls, st.errors, st.noscript, st.skipped, st.retries) == (2, 0, 2, 0, 1)
    assert not st.down and own_redis_server.commands("evalsha") == 1
