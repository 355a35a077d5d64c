"""Applications mounted under a prefix, in real servers on 127.0.0.1:
gunicorn's SCRIPT_NAME (from its environment, and from a client's
``SCRIPT_NAME`` header), Werkzeug's DispatcherMiddleware, uvicorn's
``--root-path`` and Starlette's Mount.  The routes limit what the
application routes on, so a prefix never switches a limit off."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap

import pytest
from servers import Server, free_port

from fastlimit import Policy, asgi, wsgi
from fastlimit.cli.servers import gunicorn_argv, request

APPS = '''
import os

from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

from fastlimit import Policy, asgi, wsgi

policy = Policy.from_file(os.environ["TEST_POLICY"])
mount = os.environ.get("TEST_MOUNT", "")

flask_app = Flask(__name__)


@flask_app.post("/login")
def login():
    return "logged in"


flask_limited = wsgi.RateLimitMiddleware(flask_app, policy, mount=mount)
dispatched = DispatcherMiddleware(Response("no app here", 404), {"/api": flask_limited})


async def starlette_login(request):
    return PlainTextResponse("logged in")


inner = Starlette(routes=[Route("/login", starlette_login, methods=["POST"])])
starlette_limited = asgi.RateLimitMiddleware(inner, policy, mount=mount)
outer = Starlette(routes=[Mount("/api", app=starlette_limited)])
'''

def _policy(table: str, route: str) -> str:
    return textwrap.dedent(f"""
        [policy]
        name = "mounted"
        [store]
        table = "{table}"
        capacity = 1024
        [identities.anonymous]
        rate = "1000/1h"
        [routes]
        "POST {route}" = "5/1h"
    """)


def _uvicorn(app: str, port: int, *options: str) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    return [exe, app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *options]


DEPLOYMENTS = {  # name: (command line for a port, extra environment, path the client asks for)
    "gunicorn-script-name": (lambda port: gunicorn_argv("apps:flask_limited", port, workers=2),
                             {"SCRIPT_NAME": "/api"}, "/api/login"),
    "werkzeug-dispatcher": (lambda port: gunicorn_argv("apps:dispatched", port, workers=2),
                            {}, "/api/login"),
    # a proxy in front stripped /api: uvicorn puts it back in scope path and root_path
    "uvicorn-root-path": (lambda port: _uvicorn("apps:starlette_limited", port,
                                                "--root-path", "/api"), {}, "/login"),
    "starlette-mount": (lambda port: _uvicorn("apps:outer", port), {}, "/api/login"),
}


def _serve(tmp_path, table_name, argv_of, env, route="/login", mount="", unix_socket=None):
    (tmp_path / "apps.py").write_text(APPS)
    policy = tmp_path / "policy.toml"
    policy.write_text(_policy(table_name, route))
    port = free_port()
    environ = dict(os.environ, TEST_POLICY=str(policy), TEST_MOUNT=mount, **env)
    return Server(argv_of(port), port, env=environ, cwd=str(tmp_path),
                  log=str(tmp_path / "server.log"), unix_socket=unix_socket)


def _logins(port, path, count=8, headers=None):
    return [request(port, "POST", path, headers=headers).status for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_a_mounted_app_keeps_its_route_limits(deployment, tmp_path, table_name):
    argv_of, env, path = DEPLOYMENTS[deployment]
    with _serve(tmp_path, table_name, argv_of, env) as server:
        statuses = _logins(server.port, path)
    assert statuses == [200] * 5 + [429] * 3, server.log()


@pytest.mark.slow
def test_a_client_chosen_script_name_header_does_not_lift_the_limit(tmp_path, table_name):
    # gunicorn takes SCRIPT_NAME from a request header sent by a peer in
    # --forwarded-allow-ips, and strips it from PATH_INFO; Flask still
    # routes /x/login to /login, and so must the limit
    argv_of = lambda port: gunicorn_argv(  # noqa: E731
        "apps:flask_limited", port, workers=2, options=["--forwarded-allow-ips", "127.0.0.1"])
    with _serve(tmp_path, table_name, argv_of, {}) as server:
        plain = _logins(server.port, "/login", count=3)
        prefixed = [request(server.port, "POST", f"/x{i}/login",
                            headers={"SCRIPT_NAME": f"/x{i}"}).status for i in range(5)]
    assert plain == [200] * 3
    assert prefixed == [200] * 2 + [429] * 3, server.log()


@pytest.mark.slow
def test_mount_matches_routes_written_with_the_prefix(tmp_path, table_name):
    argv_of, env, path = DEPLOYMENTS["gunicorn-script-name"]
    with _serve(tmp_path, table_name, argv_of, env, route="/api/login", mount="/api") as server:
        statuses = _logins(server.port, path)
    assert statuses == [200] * 5 + [429] * 3, server.log()


# -- the warning, in process ------------------------------------------------------


def _app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]


def _call(app, environ):
    seen = []
    b"".join(app(dict(environ), lambda status, headers, exc_info=None: seen.append(status)))
    return seen[0]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "fastlimit"]


def _routes_policy(route):
    return Policy.from_dict({"identities": {"anonymous": {"rate": "1000/1h"}},
                             "routes": {f"POST {route}": "5/1h"}})


def test_routes_written_with_the_prefix_warn_once(caplog):
    app = wsgi.RateLimitMiddleware(_app, _routes_policy("/api/login"))
    environ = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "/api", "PATH_INFO": "/login",
               "REMOTE_ADDR": "10.0.0.1"}
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        statuses = [_call(app, environ) for _ in range(8)]
    assert statuses == ["200 OK"] * 8  # as configured, the route is not this path
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "'/api'" in warnings[0] and "mount='/api'" in warnings[0]


def test_requests_under_a_prefix_that_match_no_route_warn_once(caplog):
    app = asgi.RateLimitMiddleware(_asgi_app, _routes_policy("/v2/login"))
    scope = {"type": "http", "method": "GET", "path": "/api/other", "root_path": "/api",
             "headers": [], "client": ("10.0.0.1", 1)}

    async def run(n):
        for _ in range(n):
            await app(dict(scope), _receive, _ignore)

    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        asyncio.run(run(300))
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "matched no route" in warnings[0] and "mount='/api'" in warnings[0]


def test_no_warning_when_the_routes_match_under_the_prefix(caplog):
    app = wsgi.RateLimitMiddleware(_app, _routes_policy("/login"))
    environ = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "/api", "PATH_INFO": "/login",
               "REMOTE_ADDR": "10.0.0.1"}
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        statuses = [_call(app, environ) for _ in range(7)]
    assert statuses == ["200 OK"] * 5 + ["429 Too Many Requests"] * 2
    assert not [r for r in caplog.records if r.name == "fastlimit"]


async def _asgi_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _ignore(message):
    pass


# -- a local proxy whose clients all share its bucket -------------------------------


def _environ(peer, **headers):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    if peer is not None:
        environ["REMOTE_ADDR"] = peer
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return environ


@pytest.mark.parametrize(("peer", "header"), [(None, "x_forwarded_for"),
                                              ("127.0.0.1", "x_forwarded_for"),
                                              ("::1", "forwarded")])
def test_a_local_proxy_that_is_not_trusted_is_warned_of_once(caplog, peer, header):
    app = wsgi.RateLimitMiddleware(_app, _routes_policy("/login"))
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        for i in range(5):
            _call(app, _environ(peer, **{header: f"203.0.113.{i}"}))
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "no proxy is trusted" in warnings[0]
    assert ("trusted_proxies=['unix']" if peer is None else f"trusted_proxies=['{peer}']") \
        in warnings[0]


@pytest.mark.parametrize(("peer", "trusted", "headers"), [
    ("192.0.2.7", (), {"x_forwarded_for": "203.0.113.1"}),  # a remote client's own header
    (None, ("unix",), {"x_forwarded_for": "203.0.113.1"}),   # the proxy is trusted
    ("127.0.0.1", (), {}),                                   # a local client, no proxy
])
def test_no_proxy_warning_where_nothing_is_wrong(caplog, peer, trusted, headers):
    app = wsgi.RateLimitMiddleware(_app, _routes_policy("/login"), trusted_proxies=trusted)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        for _ in range(5):
            _call(app, _environ(peer, **headers))
    assert not [r for r in caplog.records if r.name == "fastlimit"]


@pytest.mark.slow
def test_gunicorn_on_a_unix_socket_behind_a_proxy_warns_in_its_log(tmp_path, table_name):
    import http.client
    import socket

    sock_path = str(tmp_path / "app.sock")

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(sock_path)

    def argv_of(port):
        argv = gunicorn_argv("apps:flask_limited", port, workers=1)
        at = argv.index("--bind")
        return [*argv[:at + 1], f"unix:{sock_path}", *argv[at + 2:]]

    server = _serve(tmp_path, table_name, argv_of, {}, unix_socket=sock_path)
    with server:
        statuses = []
        for i in range(6):
            conn = UnixConnection("localhost")
            conn.request("POST", "/login", headers={"X-Forwarded-For": f"198.51.100.{i}"})
            statuses.append(conn.getresponse().status)
            conn.close()
    # six different clients, all in the bucket "unix": what the warning is about
    assert statuses == [200] * 5 + [429]
    log = server.log()
    assert log.count("no proxy is trusted") == 1, log
    assert "trusted_proxies=['unix']" in log
