"""More checks in flight than connections: how many a limit of 80 admits.

150 coroutines x 300 checks and 150 threads x 100 checks share one backend
(fail="open") against a redis-server this script starts on a free loopback
port: on a client passed in with redis-py's own pool (which raises at once
when every connection is in use) and on one made from the URL (a blocking
pool, waiting up to the timeout).  Either way a check that gets no
connection is denied, never admitted unchecked.

    python bench/redis_pool_exhaustion.py
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from _util import redis_server

from fastlimit import RedisBackend
from fastlimit.stores.redis import AsyncRedisBackend


async def _coroutines(b: AsyncRedisBackend) -> tuple[int, Any]:
    lim = b.limiter("80/1h", name=f"p{uuid.uuid4().hex[:6]}", fail="open")

    async def run() -> int:
        return sum([await lim.allow("k") for _ in range(300)])

    n = sum(await asyncio.gather(*(run() for _ in range(150))))
    await b.aclose()
    return n, b.stats()


def _threads(b: RedisBackend) -> tuple[int, Any]:
    lim = b.limiter("80/1h", name=f"p{uuid.uuid4().hex[:6]}", fail="open")
    out: list[int] = []

    def run() -> None:
        out.append(sum(lim.allow("k") for _ in range(100)))

    ts = [threading.Thread(target=run) for _ in range(150)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out), b.stats()


def _line(what: str, n: int, st: Any) -> None:
    print(f"  {what:44} admitted {n:6}  failed_open {st.failed_open:6}  "
          f"pool_timeouts {st.pool_timeouts:6}  calls {st.calls}")


def main() -> None:
    with redis_server() as server:
        port, url = server.port, server.url
        print("150 coroutines x 300 checks, limit 80:")
        makers: list[tuple[str, Callable[[], Any]]] = [
            ("client passed in, redis-py's pool (max 100)",
             lambda: AsyncRedisBackend(redis.asyncio.Redis(port=port, socket_timeout=0.5))),
            ("from the URL, blocking pool (max 100)", lambda: AsyncRedisBackend(url))]
        for what, make in makers:
            _line(what, *asyncio.run(_coroutines(make())))
        print("150 threads x 100 checks, limit 80:")
        makers = [("client passed in, redis-py's pool (max 100)",
                   lambda: RedisBackend(redis.Redis(port=port, socket_timeout=0.5))),
                  ("from the URL, blocking pool (max 100)", lambda: RedisBackend(url))]
        for what, make in makers:
            _line(what, *_threads(make()))


if __name__ == "__main__":
    main()
