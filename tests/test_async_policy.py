"""A Policy on an AsyncRedisBackend behind the ASGI middleware (issue 17,
item 6): requests are counted with ``await``, so the event loop serves
other work while Redis answers, or does not.

Loop lag is measured by a heartbeat task that counts its turns on the loop
(``await asyncio.sleep(0)``) while one request is in flight against a
paused Redis (SIGSTOP): a request that blocked the loop would leave it no
turn at all, which the same measurement shows for a sync policy.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

import fastlimit
from fastlimit import FakeClock, Policy, RedisBackend, asgi, wsgi

POLICY = {
    "policy": {"name": "aio"},
    "identities": {"anonymous": {"rate": "3/1h"}},
    "routes": {"login": {"match": "POST /login", "rate": "2/1h", "per": "ip"}},
}


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(middleware, method="GET", path="/", peer="203.0.113.7"):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000),
             "client": (peer, 40000), "headers": []}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers


async def with_heartbeat(request):
    """(the request's answer, the heartbeat's turns while it was in flight)."""
    turns = 0
    done = False

    async def beat():
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    beating = asyncio.ensure_future(beat())
    await asyncio.sleep(0)  # the heartbeat's first turn
    start = turns
    try:
        answer = await request
    finally:
        done = True
        await beating
    return answer, turns - start


def test_the_asgi_middleware_awaits_a_policy_on_an_asyncio_store(redis_server):
    clock = FakeClock(1_760_000_000 * 10**9)

    async def main():
        backend = fastlimit.AsyncRedisBackend(redis_server.url,
                                              prefix=f"t{uuid.uuid4().hex[:10]}")
        policy = Policy.from_dict(POLICY, store=backend, clock=clock, wall_clock=clock)
        middleware = asgi.RateLimitMiddleware(app, policy)
        answers = [await call(middleware) for _ in range(5)]
        assert [status for status, _ in answers] == [200, 200, 200, 429, 429]
        assert [h["x-ratelimit-remaining"] for _, h in answers] == ["2", "1", "0", "0", "0"]
        assert int(answers[3][1]["retry-after"]) > 0
        # the login route and the caller's own limit: one call per request
        calls = backend.stats().calls
        logins = [await call(middleware, "POST", "/login", "203.0.113.8") for _ in range(3)]
        assert [s for s, _ in logins] == [200, 200, 429]
        assert backend.stats().calls - calls == 3
        policy.close()
        await backend.aclose()

    asyncio.run(main())


def test_a_paused_redis_does_not_block_the_loop(own_redis_server):
    """The loop runs on while a request waits on a paused Redis, and the
    request is then answered by the failure policy (the local table)."""
    clock = FakeClock(1_760_000_000 * 10**9)

    async def main():
        backend = fastlimit.AsyncRedisBackend(own_redis_server.url, prefix="lag", timeout=0.3,
                                              connect_timeout=0.3)
        policy = Policy.from_dict(POLICY, store=backend, clock=clock, wall_clock=clock)
        middleware = asgi.RateLimitMiddleware(app, policy)
        assert (await call(middleware))[0] == 200  # connected, Redis counted it
        own_redis_server.pause()
        try:
            (status, headers), turns = await with_heartbeat(call(middleware))
        finally:
            own_redis_server.resume()
        # answered locally (fail="local": its own count starts at zero)
        assert (status, headers["x-ratelimit-remaining"]) == (200, "2")
        assert backend.stats().timeouts == 1
        # the heartbeat ran all along (thousands of turns in the timeout)
        assert turns >= 100
        policy.close()
        await backend.aclose()

    asyncio.run(main())


def test_a_sync_policy_on_a_paused_redis_blocks_the_loop(own_redis_server):
    """What the heartbeat shows when the loop is blocked: no turn at all
    while the request waits (the measurement above can fail)."""
    clock = FakeClock(1_760_000_000 * 10**9)
    backend = RedisBackend(own_redis_server.url, prefix="lag", timeout=0.3,
                           connect_timeout=0.3)
    policy = Policy.from_dict(POLICY, store=backend, clock=clock, wall_clock=clock)
    middleware = asgi.RateLimitMiddleware(app, policy)

    async def main():
        assert (await call(middleware))[0] == 200
        own_redis_server.pause()
        try:
            (status, _), turns = await with_heartbeat(call(middleware))
        finally:
            own_redis_server.resume()
        assert status == 200
        assert turns == 0

    asyncio.run(main())
    policy.close()
    backend.close()


def test_synchronous_callers_are_told_to_await(redis_server):
    async def main():
        backend = fastlimit.AsyncRedisBackend(redis_server.url, prefix="sync")
        policy = Policy.from_dict(POLICY, store=backend)
        with pytest.raises(fastlimit.ConfigurationError,
                           match=r"cannot await it; use the ASGI middleware"):
            wsgi.RateLimitMiddleware(lambda environ, start: [], policy)
        with pytest.raises(fastlimit.ConfigurationError, match=r"await policy\.apeek"):
            policy.peek("GET", "/", None, "203.0.113.1")
        with pytest.raises(fastlimit.ConfigurationError, match="RouteLimit's check is synch"):
            fastlimit.web.RouteLimit(policy)
        policy.close()
        await backend.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_uvicorn_workers_share_an_async_policys_counts(redis_server, tmp_path):
    """Real uvicorn, 2 workers, one Redis: the anonymous 5/h is exact across them."""
    import os
    import sys

    from servers import Server, all_workers_up, free_port, from_workers

    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    env = dict(os.environ, FASTLIMIT_TEST_REDIS=redis_server.url,
               FASTLIMIT_TEST_PREFIX=f"t{uuid.uuid4().hex[:10]}",
               PYTHONPATH=os.path.dirname(__file__))
    argv = [exe, "async_redis_app:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "2", "--no-access-log"]
    with Server(argv, port, env=env, cwd=str(tmp_path), log=str(tmp_path / "uvicorn.log")):
        all_workers_up(port, 2)
        replies, workers = from_workers(port, "GET", "/v1/items", 12, concurrency=4)
    assert len(workers) == 2
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 5 + [429] * 7
    assert {r.headers["x-ratelimit-limit"] for r in replies} == {"5"}
