"""The ASGI application tests/test_async_policy.py serves with uvicorn: the
middleware over a Policy on an AsyncRedisBackend (``FASTLIMIT_TEST_REDIS``,
keys under ``FASTLIMIT_TEST_PREFIX``), so every worker counts in one Redis.
Each request takes 20 ms (so concurrent ones spread over the workers:
what tests/servers.all_workers_up needs), ``/healthz`` is exempt, and
every answer, a denial too, names its worker."""

from __future__ import annotations

import asyncio
import os

import fastlimit
from fastlimit import asgi

POLICY = {"policy": {"name": "aio-e2e"}, "identities": {"anonymous": {"rate": "5/1h"}}}
WORKER = str(os.getpid()).encode()


async def plain(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.02)  # keeps this worker busy, so the next goes elsewhere
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


backend = fastlimit.AsyncRedisBackend(os.environ["FASTLIMIT_TEST_REDIS"],
                                      prefix=os.environ["FASTLIMIT_TEST_PREFIX"])
limited = asgi.RateLimitMiddleware(plain, fastlimit.Policy.from_dict(POLICY, store=backend),
                                   exempt_paths=["/healthz"])


async def app(scope, receive, send):
    async def named(message):
        if message["type"] == "http.response.start":
            message = dict(message, headers=[*message.get("headers", ()),
                                             (b"x-worker-pid", WORKER)])
        await send(message)

    await limited(scope, receive, named)
