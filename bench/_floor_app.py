"""The benchmark's floor: the plain application sending, by itself, the
three rate-limit headers the middleware adds (values of the same length).
What a server costs to send three more headers is no middleware's doing;
the middleware's overhead over this app is what fastlimit itself costs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from fastlimit.examples.app import _BODY, _headers, _work_ms, plain_asgi

_EXTRA = [("X-RateLimit-Limit", "100000000"), ("X-RateLimit-Remaining", "99999999"),
          ("X-RateLimit-Reset", "1795000000")]
_EXTRA_RAW = [(name.lower().encode(), value.encode()) for name, value in _EXTRA]


def headers_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    work = _work_ms(environ.get("QUERY_STRING", ""))
    if work:
        time.sleep(work)
    start_response("200 OK", _headers() + _EXTRA)
    return [_BODY]


async def headers_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await plain_asgi(scope, receive, send)  # lifespan
        return
    work = _work_ms(scope.get("query_string", b"").decode("latin-1"))
    if work:
        time.sleep(work)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in _headers()]
                + _EXTRA_RAW})
    await send({"type": "http.response.body", "body": _BODY})
