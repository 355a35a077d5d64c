"""Starlette and FastAPI: limits as dependencies and decorators, as slowapi's
users write them, and per-message limits on websockets.

::

    limiter = StarletteLimiter(store=fastlimit.SharedTable.open("myapp"))
    app = FastAPI()
    limiter.install(app)          # the headers, deduct_when and the 429 answer

    @app.post("/login", dependencies=[Depends(limiter.limit("5/minute"))])
    async def login(): ...

    router = APIRouter(dependencies=[Depends(limiter.limit("100/hour", key="identity"))])

    @app.websocket("/ws")
    async def ws(websocket):
        await websocket.accept()
        async for text in websocket.iter_text():
            if not (await limiter.hit_message(websocket, "10/second")).allowed:
                await websocket.send_text("slow down")

On a plain Starlette endpoint, ``@limiter.limit("5/minute")`` decorates it
(an ``async def endpoint(request)``).  ``key`` and ``cost`` callables take
the request.  The checks count in shared memory, with no I/O, so they run
on the event loop; on a Redis store each is one round trip.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from fastlimit.errors import RateLimited
from fastlimit.frameworks.rules import (
    Counted,
    KeyKind,
    Rule,
    RuleSet,
    app_table,
    name_of,
    release,
)
from fastlimit.policy.policy import Policy
from fastlimit.stores.table import SharedTable
from fastlimit.web.gate import Exemptions, Outcome, RouteLimit
from fastlimit.web.identify import Identify
from fastlimit.web.view import RequestView

__all__ = ["StarletteLimiter"]

log = logging.getLogger("fastlimit")
_REQUEST: contextvars.ContextVar[HTTPConnection] = contextvars.ContextVar("fastlimit_request")
_COUNTED = "fastlimit.counted"


class StarletteLimiter:
    """Rate limits for a Starlette or FastAPI application.

    Args:
        policy: a :class:`~fastlimit.Policy` enforced on every request by
            :meth:`install`'s middleware.
        identify: ``identify(view) -> Identity | None``, for the policy and
            ``key="identity"`` limits.
        default_limits: rates counted per IP on every HTTP request, by
            :meth:`install`'s middleware (before routing: on every route).
        store: the store of the view limits (default: the policy's, else
            the named table ``starlette-<module>``, after the module that
            makes the limiter: shared by every worker of the application).
        on_breach: called with the denying decision before the 429 is sent.
        trusted_proxies: proxies allowed to report the client address.
        enabled: False: nothing is counted (tests).
        exempt_paths: paths :meth:`install`'s middleware never counts (the
            policy, the default limits): exact (``"/healthz"``) or a prefix
            (``"/static/**"``); a route's own limits still count.
        headers: the ``[headers]`` style of the view limits' fields
            (``{"reset": "delta"}``), as a policy's.
        clock: the view limits' monotonic int-ns clock; tests: a
            :class:`~fastlimit.FakeClock` (on a table of their own: a table
            keeps the clock it was first used on).
    """

    def __init__(self, policy: Policy | None = None, *, identify: Identify | None = None,
                 default_limits: Iterable[str] = (), store: Any = None,
                 on_breach: Callable[[Outcome], None] | None = None,
                 trusted_proxies: Iterable[str] = (), enabled: bool = True,
                 exempt_paths: Collection[str] = (), headers: Mapping[str, Any] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.policy = policy
        self.exempt = Exemptions(exempt_paths)
        if store is None and policy is not None:
            store = policy.store
        if store is None:  # one table per application module, shared by its workers
            module = str(sys._getframe(1).f_globals.get("__name__", "app"))
            store = SharedTable.open(app_table("starlette", module))
        self.store = store
        self.on_breach = on_breach
        self.enabled = enabled
        defaults = list(default_limits)
        self._defaults = (Rule(defaults, name="default"),) if defaults else ()
        self._gate = None if policy is None else RouteLimit(
            policy, identify=identify, trusted_proxies=trusted_proxies)
        self._rules = RuleSet(self.store, identify=identify,
                              key_args=lambda: (_REQUEST.get(),), headers=headers,
                              trusted_proxies=trusted_proxies, clock=clock)
        self._message_rules: dict[tuple[Any, ...], Rule] = {}

    def limit(self, rate: str | Iterable[str], *,
              key: KeyKind | Callable[[Request], Any] = "ip",
              cost: int | Callable[[Request], int] = 1, name: str | None = None,
              exempt_when: Callable[[], bool] | Callable[[Request], bool] | None = None,
              deduct_when: Callable[[Any], bool] | None = None,
              methods: Iterable[str] | None = None) -> _Limit:
        """A limit, as a FastAPI dependency (``Depends(limiter.limit(...))``
        on a route or an ``APIRouter``) or a decorator of a Starlette
        endpoint; the arguments as for
        :meth:`fastlimit.flask.FlaskLimiter.limit`, with ``key(request)``,
        ``cost(request)`` and ``exempt_when(request)`` (or
        ``exempt_when()``, as slowapi's may be).  Limits without a ``name`` are named by
        their place in the code that made them."""
        rule = Rule(rate, key=key, cost=cost, name=name, exempt_when=exempt_when,
                    deduct_when=deduct_when, methods=methods)
        if rule.name is None:  # a dependency has no view to be named after
            caller = sys._getframe(1)
            rule.name = f"{caller.f_globals.get('__name__', 'app')}.line{caller.f_lineno}"
            rule.named_by_caller = True
        return _Limit(self, rule)

    def install(self, app: Any) -> None:
        """Add the middleware (the policy, default limits, headers on every
        response, ``deduct_when``) and the handler that answers
        :class:`~fastlimit.RateLimited` with the 429."""
        app.add_middleware(_Middleware, limiter=self)
        app.add_exception_handler(RateLimited, self._answer)

    async def hit_message(self, websocket: HTTPConnection, rate: str | Iterable[str], *,
                          key: KeyKind | Callable[[HTTPConnection], Any] = "ip",
                          cost: int = 1, name: str | None = None) -> Outcome:
        """Count one websocket message under ``rate`` (per the connection's
        client IP, identity or ``key(websocket)``); every connection of a
        client shares the bucket.  Returns the decision: ``allowed``,
        ``retry_after``, ``headers``."""
        rule = self._message_rules.get((name, str(rate), key, cost))
        if rule is None:
            rule = Rule(rate, key=key, cost=cost, name=name or f"ws{websocket.url.path}")
            self._message_rules[(name, str(rate), key, cost)] = rule
        token = _REQUEST.set(websocket)
        try:
            assert rule.name is not None
            return self._rules.limit_of(rule, rule.name).check(websocket.scope)
        except RateLimited as denied:
            denied_outcome: Outcome = denied.outcome
            return denied_outcome
        finally:
            _REQUEST.reset(token)

    def _count(self, request: HTTPConnection, rules: Iterable[Rule]) -> None:
        counted: Counted = request.scope.setdefault(_COUNTED, [])
        token = _REQUEST.set(request)
        try:
            self._rules.count(request.scope, request.scope.get("method", "GET"), None,
                              rules, counted)
        finally:
            _REQUEST.reset(token)

    async def _answer(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, RateLimited)
        outcome = error.outcome
        if outcome.status != 500:  # a 500 (a callback's mistake) is logged where it is met
            log.info("rate limited: %s %s (%s)", request.method, request.url.path,
                     getattr(outcome, "limit", None))
            if self.on_breach is not None:
                self.on_breach(outcome)
        return Response(outcome.body or b"", outcome.status or 429,
                        headers=dict(outcome.headers), media_type=outcome.content_type)


class _Limit:
    """``limiter.limit(...)``: a FastAPI dependency, or a decorator."""

    def __init__(self, limiter: StarletteLimiter, rule: Rule) -> None:
        self.limiter = limiter
        self.rule = rule

    def __call__(self, request: Request) -> Any:
        if isinstance(request, HTTPConnection):  # FastAPI calls the dependency
            if self.limiter.enabled:
                self.limiter._count(request, (self.rule,))
            return None
        endpoint: Callable[[Request], Awaitable[Response]] = request

        @functools.wraps(endpoint)
        async def limited(req: Request) -> Response:
            self(req)
            return await endpoint(req)
        if self.rule.named_by_caller:
            self.rule.name = name_of(endpoint)
        return limited


class _Middleware:
    """The application's policy and default limits on every HTTP request,
    then the headers and ``deduct_when`` once the response starts."""

    def __init__(self, app: Any, limiter: StarletteLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limiter = self.limiter
        if scope["type"] != "http" or not limiter.enabled or (
                limiter.exempt and limiter.exempt.covers(RequestView.from_scope(scope).path)):
            await self.app(scope, receive, send)
            return
        counted: Counted = scope.setdefault(_COUNTED, [])
        request = Request(scope)
        token = _REQUEST.set(request)  # for key and cost callables, to the last byte sent
        try:
            try:
                limiter._rules.count(scope, scope["method"], limiter._gate, limiter._defaults,
                                     counted)
            except RateLimited as denied:
                response = await limiter._answer(request, denied)
                await response(scope, receive, send)
                return

            async def sending(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    shown = limiter._rules.settle(counted, _Started(message))
                    if shown is not None:
                        present = {name.lower() for name, _ in message.get("headers", [])}
                        extra = [(n.lower().encode(), v.encode()) for n, v in shown.headers
                                 if n.lower().encode() not in present]
                        message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            await self.app(scope, receive, sending)
        finally:
            release(counted)
            _REQUEST.reset(token)


class _Started:
    """What ``deduct_when`` gets: the response's status and headers."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.status_code: int = message["status"]
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                        for k, v in message.get("headers", [])}
