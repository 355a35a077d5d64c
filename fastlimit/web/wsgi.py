"""WSGI middleware: every request counted under a :class:`~fastlimit.Policy`.

Wrap the application once, in the module the server imports; every worker
process (gunicorn sync or gthread, with or without ``--preload``) then
shares the policy's named table, so a limit holds across all of them::

    policy = fastlimit.Policy.from_file("policy.toml")      # [store] table = "myapp"
    app = fastlimit.wsgi.RateLimitMiddleware(app, policy, identify=..., trusted_proxies=[...])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastlimit.errors import PayloadTooLarge
from fastlimit.web._serve import WSGICall, WSGIDenial
from fastlimit.web.gate import RATE_HEADERS, Middleware, merge_headers
from fastlimit.web.view import _WSGIView

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
else:
    WSGIApplication = Any  # typeshed's alias exists only for the type checker

__all__ = ["RateLimitMiddleware"]


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


class RateLimitMiddleware(Middleware[WSGIApplication], WSGICall):
    """Count each request under ``policy``; answer denials itself, add the
    rate-limit headers to every response.

    Args:
        app: the WSGI application.
        policy: the :class:`~fastlimit.Policy`.
        identify: ``identify(view) -> Identity | None`` (None: anonymous);
            see :mod:`fastlimit.web` for ready-made ones.  Default: every
            caller is anonymous, limited per client IP.
        trusted_proxies: addresses/networks (or a
            :class:`~fastlimit.web.TrustedProxies`) allowed to report the
            client address; by default the socket peer is the client.
        forwarded_header: ``"x-forwarded-for"`` or ``"forwarded"``.
        cost: what a request costs, or ``cost(view) -> int``.
        exempt_paths: paths never counted: exact (``"/healthz"``), or every
            path under a prefix (``"/static/**"``: ``/static`` and below,
            matched on the normalised path, so ``/static/../login`` is not).
        mount: a prefix to put before the path the application routes on
            (``PATH_INFO``; for ASGI, ``path`` less ``root_path``) before
            matching ``[routes]`` and ``exempt_paths``, for routes written
            with the prefix the application is mounted under (``"/api"``).
            Default: match the path as the application routes on it; the
            server's or a dispatcher's prefix, which a client may be able
            to choose, is ignored.  Without ``mount``, the first requests
            that arrive under a prefix and match no route, while the
            prefixed path would, log a warning (logger ``fastlimit``).
        files: ``files(view) -> int | None``: how many files the request
            carries (e.g. from a header the client sends), checked against
            the tiers' file-count caps (``batch_files``); None: unknown.
        enabled: False: every request passes uncounted and without the
            rate-limit headers (tests; a switch from the environment).

    Callbacks: ``identify`` must return an :class:`~fastlimit.Identity` or
    None, a credential lookup what its helper says, ``cost`` an int >= 0,
    and an API key's tier must be one of the policy's.  A request that
    meets such a mistake is answered 500 and the
    :class:`~fastlimit.CallbackError` naming the callback, what it returned
    and what it must return is logged once per distinct mistake.  Identity
    kinds the policy has no rule for are logged once as well (at
    construction for the kinds known then, always ``anonymous``).

    Size caps: a request whose declared ``Content-Length`` (or ``files``)
    is over its route's cap is answered 413 before the application runs.
    On a route with a byte cap, the body is also counted as the
    application reads it (``wsgi.input``; ASGI ``receive``), so a chunked
    body of no declared size is stopped at the cap: the read raises
    :class:`~fastlimit.errors.PayloadTooLarge`, and the application's
    response is replaced by the 413 (unless the application had already
    started its response: then the error ends it).

    A denial is answered with the policy's status (429, or 413 for a cost
    no limit admits), its headers (``Retry-After`` included) and its JSON
    body; the application is not called.  The decision is in
    ``environ["fastlimit.decision"]`` for the application (e.g. to refuse
    a key the policy treated as invalid: ``decision.rejected``).  When it
    holds something (a concurrency lease), its ``release()`` runs when the
    server closes the response, also when the application raises; the
    response of a decision that holds nothing is passed on unwrapped.

    Example:
        >>> from fastlimit import Policy
        >>> def hello(environ, start_response):
        ...     start_response("200 OK", [("Content-Type", "text/plain")])
        ...     return [b"hi"]
        >>> policy = Policy.from_dict({"identities": {"anonymous": {"rate": "1/1h"}},
        ...                            "headers": {"reset": "delta"}})
        >>> app = RateLimitMiddleware(hello, policy)
        >>> def call():
        ...     seen = []
        ...     body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"},
        ...                lambda status, headers, exc_info=None: seen.extend([status, headers]))
        ...     content = b"".join(body)
        ...     return seen[0], dict(seen[1]), content
        >>> status, headers, content = call()
        >>> status, content
        ('200 OK', b'hi')
        >>> for header in headers.items(): print(*header)
        Content-Type text/plain
        X-RateLimit-Limit 1
        X-RateLimit-Remaining 0
        X-RateLimit-Reset 3600
        >>> status, headers, content = call()
        >>> status, headers["Retry-After"]
        ('429 Too Many Requests', '3600')
        >>> content
        b'{"success":false,"error":{"code":"RATE_LIMITED","message":"Too many requests"}}'
    """

    _wiring: tuple[Any, ...] = ()  # set below: what its compiled call is wired with

    def _stream_capped(self, environ: dict[str, Any], start_response: Any, decision: Any,
                       cap: int) -> Iterable[bytes]:
        """The request of a route with a byte cap: its body counted as the
        application reads it, and a 413 in place of the application's
        response if it goes past ``cap``."""
        stream = _CappedInput(environ.get("wsgi.input"), cap)
        environ["wsgi.input"] = stream
        extra = decision.headers
        started = False

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal started
            if stream.over:   # the application answering its read's error: replaced below
                return lambda data: None
            started = True
            return start_response(status, merge_headers(headers, extra), exc_info)

        try:
            result = self.app(environ, respond)
        except PayloadTooLarge:
            if not stream.over or started:
                decision.release()
                raise
            result = None
        except BaseException:
            decision.release()
            raise
        if stream.over and not started:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            answer: Iterable[bytes] = self._wiring[1](decision.streamed_past_cap(),
                                                      start_response)
            return answer
        return _Released(result if result is not None else [], decision.release)


# Read a body of no stated size in pieces of this many bytes: the cap is
# checked after each, so at most this much past it is ever held.
_CHUNK = 65536


class _CappedInput:
    """``wsgi.input`` that counts what is read and raises
    :class:`PayloadTooLarge` once it is more than ``cap`` bytes."""

    def __init__(self, stream: Any, cap: int) -> None:
        self._stream = stream
        self._cap = cap
        self.seen = 0
        self.over = False

    def _count(self, data: bytes) -> bytes:
        self.seen += len(data)
        if self.seen > self._cap:
            self.over = True
        if self.over:
            raise PayloadTooLarge(self._cap)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if self._stream is None:
            return b""
        if size is not None and size >= 0:
            return self._count(self._stream.read(size))
        parts: list[bytes] = []
        while True:
            part = self._count(self._stream.read(_CHUNK))
            if not part:
                return b"".join(parts)
            parts.append(part)

    def readline(self, size: int = -1) -> bytes:
        if self._stream is None:
            return b""
        return self._count(self._stream.readline(size if size >= 0 else _CHUNK))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class _Released:
    """The application's response, releasing the decision when the server
    closes it (PEP 3333 guarantees close(), also after errors)."""

    __slots__ = ("_result", "_release")

    def __init__(self, result: Iterable[bytes], release: Callable[[], None]) -> None:
        self._result = result
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


RateLimitMiddleware._wiring = (_WSGIView, WSGIDenial(_status_line, _Released), _Released,
                               RATE_HEADERS, merge_headers)
