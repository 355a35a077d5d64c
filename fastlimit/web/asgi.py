"""ASGI 3 middleware: every HTTP request counted under a
:class:`~fastlimit.Policy`.

A plain ASGI class, so it wraps any ASGI application (Starlette, FastAPI,
Django, Quart...) and runs in any server (uvicorn, gunicorn with the uvicorn
worker, hypercorn)::

    policy = fastlimit.Policy.from_file("policy.toml")      # [store] table = "myapp"
    app = fastlimit.asgi.RateLimitMiddleware(app, policy, identify=..., trusted_proxies=[...])

Starlette and FastAPI: ``app.add_middleware(RateLimitMiddleware, policy=policy, ...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastlimit.web._serve import ASGICall, encode_headers, start_directly
from fastlimit.web.gate import (
    RATE_HEADERS,
    Middleware,
    Outcome,
    RateLimited,
    RouteLimit,
    denial_headers,
)
from fastlimit.web.view import _ASGIView

__all__ = ["ASGIApp", "RateLimitMiddleware", "RateLimited", "Receive", "RouteLimit", "Scope",
           "Send", "send_denial"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

class RateLimitMiddleware(Middleware[ASGIApp], ASGICall):
    """Count each HTTP request under ``policy``; answer denials itself, add
    the rate-limit headers to every response.

    Args: as for :class:`fastlimit.wsgi.RateLimitMiddleware`.  ``identify``
    runs in the event loop: keep it to memory look-ups (a dict, a cache).

    Lifespan and websocket scopes pass through untouched.  A denial is
    answered with the policy's status (429, or 413), headers (with
    ``Retry-After``) and JSON body, without calling the application.  The
    headers are added by wrapping ``send``; the application's own
    rate-limit fields, if it sets any, win.  The decision is in
    ``scope["fastlimit.decision"]``; its ``release()`` runs once the
    application returns or raises.

    Example:
        >>> import asyncio
        >>> from fastlimit import Policy
        >>> async def hello(scope, receive, send):
        ...     await send({"type": "http.response.start", "status": 200, "headers": []})
        ...     await send({"type": "http.response.body", "body": b"hi"})
        >>> policy = Policy.from_dict({"identities": {"anonymous": {"rate": "1/1h"}},
        ...                            "headers": {"reset": "delta"}})
        >>> app = RateLimitMiddleware(hello, policy)
        >>> async def call():
        ...     sent = []
        ...     async def send(message): sent.append(message)
        ...     async def receive(): return {"type": "http.request", "body": b""}
        ...     await app({"type": "http", "method": "GET", "path": "/", "headers": [],
        ...                "client": ("10.0.0.1", 5000)}, receive, send)
        ...     return sent[0]["status"], sent[0]["headers"], sent[1]["body"]
        >>> status, headers, body = asyncio.run(call())
        >>> status, body
        (200, b'hi')
        >>> for header in headers: print(*header)
        b'x-ratelimit-limit' b'1'
        b'x-ratelimit-remaining' b'0'
        b'x-ratelimit-reset' b'3600'
        >>> status, headers, body = asyncio.run(call())
        >>> status, dict(headers)[b"retry-after"]
        (429, b'3600')
    """

    _wiring: tuple[Any, ...] = ()  # set below: what its compiled call is wired with

    __call__ = ASGICall.handle
    _awaits = True

    async def _stream_capped(self, scope: Scope, receive: Receive, send: Send, decision: Any,
                             cap: int) -> None:
        """The request of a route with a byte cap: its body counted as the
        application receives it; past ``cap`` the 413 is sent in place of
        the application's response and the application is told the client
        left (``http.disconnect``)."""
        seen = 0
        over = started = False
        extra = decision.raw_headers()

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    over = True
                    if not started:
                        await send_denial(decision.streamed_past_cap(), send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and message.get("type", "").startswith("http.response"):
                return  # the 413 went out instead
            if message.get("type") == "http.response.start":
                started = True
                if extra:
                    message = dict(message)
                    message["headers"] = _merge_raw(message.get("headers", ()), extra)
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
            # the application's error at the disconnect it was told of: answered already
        finally:
            given = decision.release()
            if given is not None:  # an asyncio store's releases
                await given





def _merge_raw(app_headers: Iterable[tuple[bytes, bytes]],
               extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The application's raw headers plus ``extra``, except the rate-limit
    fields the application set itself (a check inside it knows more)."""
    app_headers = list(app_headers)
    present = {name.lower() for name, _ in app_headers}
    return [*app_headers, *(h for h in extra if h[0] not in present)]


_RAW_RATE_HEADERS = frozenset(name.encode() for name in RATE_HEADERS)


async def send_denial(outcome: Outcome, send: Send) -> None:
    """Answer a denied request: the policy's status, headers and body."""
    body = outcome.body or b""
    await send({"type": "http.response.start", "status": outcome.status,
                "headers": encode_headers(denial_headers(outcome, body))})
    await send({"type": "http.response.body", "body": body})


RateLimitMiddleware._wiring = (_ASGIView, send_denial, encode_headers, _RAW_RATE_HEADERS,
                               _merge_raw)
# the call without a coroutine of ours (see fastlimit.web._serve)
start_directly(RateLimitMiddleware)
