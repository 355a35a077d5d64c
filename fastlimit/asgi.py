"""The ASGI middleware, at the path the README names (it lives in
:mod:`fastlimit.web.asgi`)."""

from fastlimit.web.asgi import (
    ASGIApp,
    RateLimited,
    RateLimitMiddleware,
    Receive,
    RouteLimit,
    Scope,
    Send,
    send_denial,
)

__all__ = ["ASGIApp", "RateLimitMiddleware", "RateLimited", "Receive", "RouteLimit", "Scope",
           "Send", "send_denial"]
