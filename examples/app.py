"""A plain WSGI and ASGI application behind fastlimit's middleware: what
``fastlimit demo``, the end-to-end tests and the benchmark serve.

Run it in any server; every worker shares the policy's named table::

    gunicorn -w 4 fastlimit.examples.app:wsgi                        # sync workers
    gunicorn -w 4 -k gthread --threads 4 fastlimit.examples.app:wsgi
    gunicorn -w 2 -k uvicorn_worker.UvicornWorker fastlimit.examples.app:asgi
    uvicorn --workers 2 fastlimit.examples.app:asgi

Every response says which worker process answered (``X-Worker-Pid``).  A
query ``?work_ms=N`` makes the request take N ms (at most 100), as real
work would: while a worker is busy the others take the next connections,
which shows the limit holding across all of them.
``plain_wsgi`` and ``plain_asgi`` are the same application unprotected.

Settings, from the environment:

- ``FASTLIMIT_POLICY``: the policy file (default: seed 000, shipped in this
  package);
- ``FASTLIMIT_TABLE``: a table name to use instead of the policy's
  ``[store] table``;
- ``FASTLIMIT_TRUSTED_PROXIES``: addresses/networks allowed to report the
  client address in ``X-Forwarded-For``.

Credentials are made up, for demonstration only: ``X-API-Key:
demo-<TIER>-<n>`` is a key of tier TIER (account ``acct-<TIER>-<n>``);
``Authorization: Bearer tok_<id>`` a valid token; ``Cookie:
session=<user>`` a valid session of that user.  Anything else is invalid.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastlimit import Policy, SharedTable
from fastlimit import asgi as _asgi
from fastlimit import wsgi as _wsgi
from fastlimit.policy.config import load_file
from fastlimit.web import Identify, api_key_header, bearer_token, first_of, session_cookie

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# and, made on first use: policy, wsgi, asgi (see __getattr__ below)
__all__ = ["load_policy", "make_identify", "plain_asgi", "plain_wsgi"]

SEED000 = files(__package__ or "fastlimit.examples") / "seed000.toml"


def load_policy() -> Policy:
    """The policy the environment names (see the module docs)."""
    path = os.environ.get("FASTLIMIT_POLICY") or str(SEED000)
    table = os.environ.get("FASTLIMIT_TABLE")
    if not table:
        return Policy.from_file(path)
    spec = load_file(path)
    return Policy(spec, store=SharedTable.open(table, capacity=spec.store.capacity or 65_536))


def make_identify(policy: Policy) -> Identify:
    """The made-up credentials of the module docs, for ``policy``'s tiers."""

    tiers = frozenset(policy.tiers)

    # A real application looks keys up in memory too (a dict, a cache), not
    # in its database on every request.
    @functools.lru_cache(maxsize=4096)
    def key(value: str) -> tuple[str, str | None] | None:
        prefix, _, rest = value.partition("-")
        tier, _, n = rest.rpartition("-")
        if prefix != "demo" or not tier or not n or (tiers and tier not in tiers):
            return None
        return tier, f"acct-{tier}-{n}"

    def token(value: str) -> str | None:
        return value if value.startswith("tok_") and len(value) > 4 else None

    def session(value: str) -> str | None:
        return f"user-{value}"

    return first_of(api_key_header(key), bearer_token(token), session_cookie(session))


_BODY = b'{"ok":true}'


def _headers() -> list[tuple[str, str]]:
    # The pid of the process answering: a preloaded app's import-time pid
    # would be the master's.
    return [("Content-Type", "application/json"), ("Content-Length", str(len(_BODY))),
            ("X-Worker-Pid", str(os.getpid()))]


def _work_ms(query: str) -> float:
    if "work_ms=" not in query:
        return 0.0
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "work_ms" and value.isdigit():
            return min(int(value), 100) / 1000
    return 0.0


def plain_wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The application, unprotected (WSGI)."""
    work = _work_ms(environ.get("QUERY_STRING", ""))
    if work:
        time.sleep(work)
    start_response("200 OK", _headers())
    return [_BODY]


async def plain_asgi(scope: _asgi.Scope, receive: _asgi.Receive, send: _asgi.Send) -> None:
    """The application, unprotected (ASGI, with lifespan)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    work = _work_ms(scope.get("query_string", b"").decode("latin-1"))
    if work:
        time.sleep(work)  # CPU-bound work holds the event loop; so does this
    await send({"type": "http.response.start", "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in _headers()]})
    await send({"type": "http.response.body", "body": _BODY})


def _build() -> dict[str, Any]:
    policy = load_policy()
    identify = make_identify(policy)
    proxies = os.environ.get("FASTLIMIT_TRUSTED_PROXIES", "").replace(",", " ").split()
    options: dict[str, Any] = {"identify": identify, "trusted_proxies": proxies,
                               "exempt_paths": {"/healthz"}}
    return {"policy": policy,
            "wsgi": _wsgi.RateLimitMiddleware(plain_wsgi, policy, **options),
            "asgi": _asgi.RateLimitMiddleware(plain_asgi, policy, **options)}


_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # policy, wsgi and asgi are made on first use, so importing this module
    # (fastlimit demo does, for make_identify) opens no table.
    if name in ("policy", "wsgi", "asgi"):
        if not _built:
            _built.update(_build())
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
