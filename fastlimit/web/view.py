"""The request as fastlimit sees it, whether it came as a WSGI environ or
an ASGI scope: method, routed path, peer and client address, headers and
cookies.  ``identify`` and ``cost`` callables get one."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from fastlimit.web._serve import (
    Header,
    ViewFields,
    asgi_view,
    cookie_value,
    scope_header,
    wsgi_view,
)

__all__ = ["RequestView"]


class RequestView(ViewFields):
    """One HTTP request as fastlimit sees it, whether it came as a WSGI
    environ or an ASGI scope.  ``identify`` and ``cost`` callables get one.

    Attributes:
        method: the request method, upper case.
        path: the path the application routes on: percent-decoded,
            without the query, and without the prefix it is mounted under
            (WSGI ``PATH_INFO``, not ``SCRIPT_NAME``; ASGI ``path`` less
            its ``root_path``), after the middleware's ``mount`` if given.
        peer: the socket peer's address (WSGI ``REMOTE_ADDR``, ASGI
            ``scope["client"][0]``), or None (a Unix socket).
        client_ip: the client address the limits use: the peer, or what a
            trusted proxy reported (see :class:`TrustedProxies`).
        raw: the WSGI environ or the ASGI scope itself.

    Example:
        >>> view = RequestView.from_environ({"REQUEST_METHOD": "GET", "PATH_INFO": "/a",
        ...     "REMOTE_ADDR": "10.0.0.1", "HTTP_X_API_KEY": "k1",
        ...     "HTTP_COOKIE": "theme=dark; session=s9"})
        >>> view.method, view.path, view.peer, view.header("x-api-key"), view.cookie("session")
        ('GET', '/a', '10.0.0.1', 'k1', 's9')
    """

    # The fields live in the compiled base (fastlimit.web._serve.ViewFields).
    __slots__ = ()

    method: str
    path: str
    peer: str | None
    client_ip: str | None
    raw: Mapping[str, Any]

    @staticmethod
    def from_environ(environ: Mapping[str, Any], mount: str = "") -> RequestView:
        """The view of a WSGI request (its path after ``mount``)."""
        return _WSGIView(environ, mount)

    @staticmethod
    def from_scope(scope: Mapping[str, Any], mount: str = "") -> RequestView:
        """The view of an ASGI ``http`` request (its path after ``mount``)."""
        return _ASGIView(scope, mount)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or None; repeated
        headers are joined with ``,``."""
        raise NotImplementedError

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name``, or None."""
        header = self.header("cookie")
        found: str | None = cookie_value(header, name) if header else None
        return found

    @property
    def content_length(self) -> int | None:
        """The declared body size in bytes, or None (absent or malformed)."""
        value = self.header("content-length")
        if value is None:
            return None
        return _content_length(value)

    def __repr__(self) -> str:
        return f"<RequestView {self.method} {self.path} from {self.client_ip or self.peer}>"


# Larger than any body: what a Content-Length of more than 19 digits is taken
# as, so that it meets every byte cap (None would skip the caps).
_HUGE_LENGTH = 10**19


def _content_length(value: str) -> int | None:
    value = value.strip()
    if not (value.isdigit() and value.isascii()):
        return None
    # int() of a client's 5000 digits raises (Python caps int-from-str at 4300)
    digits = value.lstrip("0")
    return _HUGE_LENGTH if len(digits) > 19 else int(digits or "0")


# Header names are turned into environ keys or ASGI byte names once per
# name, not per request.
@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


@functools.lru_cache(maxsize=256)
def _asgi_name(name: str) -> bytes:
    return name.lower().encode("latin-1")


class _WSGIView(RequestView):
    __slots__ = ()

    def __init__(self, environ: Mapping[str, Any], mount: str = "") -> None:
        wsgi_view(self, environ, mount)

    def header(self, name: str) -> str | None:
        value: str | None = self.raw.get(_environ_key(name))
        return value

    @property
    def content_length(self) -> int | None:
        value = self.raw.get("CONTENT_LENGTH")
        if not value:  # the common case (a GET) costs one look-up
            return None
        return _content_length(value)


class _ASGIView(RequestView):
    __slots__ = ()

    def __init__(self, scope: Mapping[str, Any], mount: str = "") -> None:
        asgi_view(self, scope, mount)

    def header(self, name: str) -> str | None:
        return scope_header(self.raw.get("headers", ()), _asgi_name(name))


def header_reader(name: str) -> Header:
    """A reader of header ``name`` (any case) for every kind of view: in C,
    straight from the environ or the scope of the middlewares' views."""
    return Header(name, _environ_key(name), _asgi_name(name), _WSGIView, _ASGIView)
