"""Size caps enforced by the middlewares: a declared size over the cap is
answered 413 before the application runs; a body of no declared size
(chunked) is counted as the application reads it and stopped at the cap;
the ``files=`` hook feeds the file-count caps.  Real servers for the
chunked bodies: gunicorn with Flask, uvicorn with Starlette."""

from __future__ import annotations

import http.client
import json
import os
import sys
import textwrap

import pytest
from servers import Server, free_port

from fastlimit import Policy, wsgi
from fastlimit.cli.servers import gunicorn_argv
from fastlimit.web import api_key_header

CAP = 1000
POLICY = textwrap.dedent(f"""
    [policy]
    name = "caps"
    [store]
    table = "TABLE"
    capacity = 1024
    [identities.api_key]
    rate = "tier"
    [identities.anonymous]
    rate = "100/1h"
    [tiers.GOLD]
    rate = "1000/1h"
    caps = {{ batch_payload_bytes = {CAP}, batch_files = 3 }}
    [caps]
    batch_payload_bytes = ["POST /upload"]
    batch_files = ["POST /upload"]
""")

APPS = '''
import os

from flask import Flask, request
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastlimit import Policy, asgi, wsgi
from fastlimit.web import api_key_header

policy = Policy.from_file(os.environ["TEST_POLICY"])
identify = api_key_header(lambda key: ("GOLD", key))

flask_app = Flask(__name__)


@flask_app.post("/upload")
def upload():
    return {"received": len(request.get_data())}


flask_limited = wsgi.RateLimitMiddleware(flask_app, policy, identify=identify)


async def starlette_upload(request):
    return JSONResponse({"received": len(await request.body())})


starlette_limited = asgi.RateLimitMiddleware(
    Starlette(routes=[Route("/upload", starlette_upload, methods=["POST"])]), policy,
    identify=identify)
'''


def _chunked(port, size, *, declared=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = (b"x" * 100 for _ in range(size // 100))
    headers = {"X-API-Key": "k1"}
    if declared:
        headers["Content-Length"] = str(size)
    try:
        conn.request("POST", "/upload", body=body, headers=headers,
                     encode_chunked=not declared)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


SERVERS = {
    "gunicorn-flask": lambda port: gunicorn_argv("apps:flask_limited", port, workers=1),
    "uvicorn-starlette": lambda port: [
        os.path.join(os.path.dirname(sys.executable), "uvicorn"), "apps:starlette_limited",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SERVERS))
def test_a_chunked_body_past_the_cap_is_413_and_one_within_reaches_the_app(
        kind, tmp_path, table_name):
    (tmp_path / "apps.py").write_text(APPS)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.replace("TABLE", table_name))
    port = free_port()
    env = dict(os.environ, TEST_POLICY=str(policy))
    with Server(SERVERS[kind](port), port, env=env, cwd=str(tmp_path),
                log=str(tmp_path / "server.log")) as server:
        within = _chunked(port, CAP)
        past = _chunked(port, 100 * CAP)
        declared = _chunked(port, 2 * CAP, declared=True)
    assert within == (200, {"received": CAP}), server.log()
    assert past[0] == 413, server.log()
    assert past[1]["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert declared[0] == 413


# -- in process ------------------------------------------------------------------------


def _app(environ, start_response):
    data = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(data)).encode()]


def _call(app, body, **headers):
    import io
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/upload", "REMOTE_ADDR": "10.0.0.1",
               "wsgi.input": io.BytesIO(body), "HTTP_X_API_KEY": "k1"}
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    seen = []
    result = app(environ, lambda status, headers, exc_info=None: seen.append(status))
    try:
        return seen[-1], b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()


def _policy(table_name):
    return Policy.from_dict(__import__("tomllib").loads(POLICY.replace("TABLE", table_name)))


def test_files_hook_feeds_the_file_count_cap(table_name):
    app = wsgi.RateLimitMiddleware(
        _app, _policy(table_name), identify=api_key_header(lambda key: ("GOLD", key)),
        files=lambda view: int(view.header("x-files") or 0))
    assert _call(app, b"abc", x_files="3") == ("200 OK", b"3")
    status, body = _call(app, b"abc", x_files="4")
    assert status.startswith("413") and b"PAYLOAD_TOO_LARGE" in body


def test_without_a_files_hook_the_count_is_unknown_and_not_checked(table_name):
    app = wsgi.RateLimitMiddleware(_app, _policy(table_name),
                                   identify=api_key_header(lambda key: ("GOLD", key)))
    assert _call(app, b"abc", x_files="400")[0] == "200 OK"


def test_a_body_read_past_the_cap_is_413_even_if_the_app_catches_the_error(table_name):
    def careless(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except Exception:
            start_response("500 Internal Server Error", [])
            return [b"oops"]
        start_response("200 OK", [])
        return [b"fine"]

    app = wsgi.RateLimitMiddleware(careless, _policy(table_name),
                                   identify=api_key_header(lambda key: ("GOLD", key)))
    assert _call(app, b"x" * CAP) == ("200 OK", b"fine")
    status, body = _call(app, b"x" * (CAP + 1))
    assert status.startswith("413") and b"PAYLOAD_TOO_LARGE" in body


def test_files_must_be_callable(table_name):
    with pytest.raises(TypeError, match="files must be a callable"):
        wsgi.RateLimitMiddleware(_app, _policy(table_name), files=3)
