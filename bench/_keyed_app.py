"""The example application behind the middleware, with its credentials
looked up in dicts, as a real application's are (in memory, or in a
cache): ``server_instructions`` sends a new key on most requests, and the
example's own look-up (it parses made-up keys, behind an LRU of 4096)
would then count the application's work as fastlimit's.

``BENCH_CALLERS``: how many callers of each kind have credentials
(``demo-BENCH-<n>`` and ``demo-FREE-<n>`` keys, ``u<n>`` sessions).
"""

from __future__ import annotations

import os

from fastlimit import asgi as _asgi
from fastlimit import wsgi as _wsgi
from fastlimit.examples.app import load_policy, plain_asgi, plain_wsgi
from fastlimit.web import api_key_header, bearer_token, first_of, session_cookie

_N = int(os.environ.get("BENCH_CALLERS", "1"))
_KEYS = {f"demo-{tier}-{i}": (tier, f"acct-{tier}-{i}")
         for tier in ("BENCH", "FREE") for i in range(_N + 1)}
_SESSIONS = {f"u{i}": f"user-{i}" for i in range(_N + 1)}

policy = load_policy()
identify = first_of(api_key_header(_KEYS.get), bearer_token({}.get),
                    session_cookie(_SESSIONS.get))
proxies = os.environ.get("FASTLIMIT_TRUSTED_PROXIES", "").replace(",", " ").split()
options = {"identify": identify, "trusted_proxies": proxies, "exempt_paths": {"/healthz"}}
wsgi = _wsgi.RateLimitMiddleware(plain_wsgi, policy, **options)
asgi = _asgi.RateLimitMiddleware(plain_asgi, policy, **options)
