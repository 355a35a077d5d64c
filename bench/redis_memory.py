"""Bytes per key fastlimit keeps on Redis: MEMORY USAGE of one key of each
kind, and INFO's used_memory over many fresh keys (which adds the keyspace's
and the expiry table's own entries).  Against a redis-server this script
starts on a free loopback port (or --url), on an empty database.

    python bench/redis_memory.py [--keys 100000] [--url redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import contextlib
import uuid

import redis
from _util import redis_server

import fastlimit
from fastlimit import ConcurrencyLimit, FakeClock, Limiter, Quota, RedisBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--url")
    a = ap.parse_args()
    with contextlib.ExitStack() as stack:
        url = a.url or stack.enter_context(redis_server()).url
        r = redis.Redis.from_url(url)
        info = r.info("server")
        allocator = r.info("memory").get("mem_allocator", "?")
        print(f"redis {info['redis_version']}, {allocator}; "
              f"redis-py {redis.__version__}; fastlimit {fastlimit.__version__}")
        b = RedisBackend(url, prefix=f"m{uuid.uuid4().hex[:6]}", timeout=10, connect_timeout=10)
        lim = Limiter("100/1h", store=b, name="api")
        q = Quota("500/month", store=b, name="ai")
        lease = ConcurrencyLimit(10, b, name="up", clock=FakeClock())
        lim.allow("user:123456")
        lim.allow(123456)
        q.hit("user:123456")
        held = [lease.try_acquire("user:123456") for _ in range(10)]
        lease.try_acquire("user:1")
        one = [
            ("rate, str key 'user:123456'", b.redis_key("api", "user:123456")),
            ("rate, int key 123456", b.redis_key("api", 123456)),
            ("quota, str key", b.redis_key("ai", "user:123456", "quota")),
            ("lease set, 1 lease", b.redis_key("up", "user:1", "concurrency")),
            ("lease set, 10 leases", b.redis_key("up", "user:123456", "concurrency")),
        ]
        print("MEMORY USAGE (bytes, one key):")
        for what, key in one:
            print(f"  {what:32} {r.memory_usage(key, samples=0)}")
        assert all(h for h in held)
        n = a.keys
        for kind in ("rate", "quota"):
            r.flushdb()
            before = r.info("memory")["used_memory"]
            keys = [f"user:{i:08d}" for i in range(n)]
            if kind == "rate":
                for i in range(0, n, 1000):
                    lim.hit_many(keys[i:i + 1000])
            else:
                for k in keys:
                    q.hit(k)
            after = r.info("memory")["used_memory"]
            print(f"used_memory over {n} fresh {kind} keys ('user:NNNNNNNN'): "
                  f"{(after - before) / n:.1f} bytes per key")
        r.flushdb()
        b.close()


if __name__ == "__main__":
    main()
