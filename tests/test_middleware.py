"""The WSGI and ASGI middleware, in process.  Every test that takes the
``serve`` fixture runs twice: once through fastlimit.wsgi, once through
fastlimit.asgi, against the same plain application."""

from __future__ import annotations

import asyncio
import json
import re
from typing import NamedTuple

import pytest
from sfv import parse_list

from fastlimit import FakeClock, Identity, Policy, SharedTable, asgi, wsgi
from fastlimit.web import (
    RateLimited,
    RequestView,
    RouteLimit,
    TrustedProxies,
    api_key_header,
    bearer_token,
    first_of,
    session_cookie,
)
from fastlimit.web._serve import start_directly

S = 10**9
WALL0 = 1_775_397_600
DENIED = {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}

POLICY = {
    "policy": {"name": "mw"},
    "headers": {"reset": "delta"},
    "identities": {
        "api_key": {"rate": "tier"},
        "session": {"rate": "6/1h"},
        "token": {"rate": "4/1h"},
        "anonymous": {"rate": "2/1h"},
    },
    "tiers": {"GOLD": {"rate": "8/1h"}, "FREE": {"rate": "3/1h", "api_access": False}},
    "routes": {"POST /login": "1/1h"},
}


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name):
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(found) <= 1, f"{name} sent {len(found)} times: {self.headers}"
        return found[0] if found else None

    def json(self):
        return json.loads(self.body)


class App:
    """The application behind the middleware, in both protocols: answers
    200 with its own header, or raises for /boom, or sets its own
    X-RateLimit-Limit for /own; records what it saw."""

    def __init__(self):
        self.calls = 0
        self.seen = []  # the environ or scope of each call

    def _answer(self, path):
        self.calls += 1
        if path == "/boom":
            raise RuntimeError("boom")
        headers = [("Content-Type", "text/plain"), ("X-App", "1")]
        if path == "/own":
            headers.append(("X-RateLimit-Limit", "app"))
        return headers, b"hello"

    def wsgi(self, environ, start_response):
        self.seen.append(environ)
        headers, body = self._answer(environ["PATH_INFO"])
        start_response("200 OK", headers)
        return [body]

    async def asgi(self, scope, receive, send):
        self.seen.append(scope)
        headers, body = self._answer(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})


class Served:
    """One middleware-wrapped App, called like a client would."""

    def __init__(self, protocol, policy, **options):
        self.protocol = protocol
        self.app = App()
        self.policy = policy
        if protocol == "wsgi":
            self.middleware = wsgi.RateLimitMiddleware(self.app.wsgi, policy, **options)
        else:
            self.middleware = asgi.RateLimitMiddleware(self.app.asgi, policy, **options)

    def __call__(self, method="GET", path="/", *, headers=(), peer="10.0.0.1",
                 body=b"") -> Response:
        if self.protocol == "wsgi":
            return self._wsgi(method, path, headers, peer, body)
        return asyncio.run(self._asgi(method, path, headers, peer, body))

    def _wsgi(self, method, path, headers, peer, body):
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "",
                   "QUERY_STRING": "", "wsgi.input": None}
        if peer is not None:
            environ["REMOTE_ADDR"] = peer
        if body:
            environ["CONTENT_LENGTH"] = str(len(body))
        for name, value in headers:
            key = name.upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        started = []

        def start_response(status, response_headers, exc_info=None):
            started.append((int(status.split()[0]), response_headers))

        result = self.middleware(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return Response(started[0][0], started[0][1], content)

    async def _asgi(self, method, path, headers, peer, body):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000),
                 "client": None if peer is None else (peer, 40000),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
        if body:
            scope["headers"].append((b"content-length", str(len(body)).encode()))
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        if self.protocol == "asgi-coroutine":
            # what the middleware's __call__ attribute does when called as
            # such: the coroutine function servers see (a call of the
            # middleware itself starts the request in C)
            await self.middleware.__call__(scope, receive, send)
        else:
            await self.middleware(scope, receive, send)
        start = sent[0]
        assert start["type"] == "http.response.start"
        return Response(start["status"],
                        [(k.decode(), v.decode()) for k, v in start["headers"]],
                        b"".join(m.get("body", b"") for m in sent[1:]))

    def seen_decision(self):
        return self.app.seen[-1]["fastlimit.decision"]


@pytest.fixture
def clocks():
    return FakeClock(), FakeClock(WALL0 * S)


@pytest.fixture
def make_policy(clocks):
    made = []

    def make(data=POLICY, cls=Policy):
        table = SharedTable.anonymous(4096)
        policy = cls.from_dict(data, store=table, clock=clocks[0], wall_clock=clocks[1])
        made.append((policy, table))
        return policy

    yield make
    for policy, table in made:
        policy.close()
        table.close()


@pytest.fixture(params=["wsgi", "asgi", "asgi-coroutine"])
def serve(request, make_policy):
    """serve(policy=None, **middleware options) -> a callable client."""

    def build(policy=None, **options):
        return Served(request.param, policy or make_policy(), **options)

    return build


KEYS = {"gold-1": ("GOLD", "acct-g"), "gold-2": ("GOLD", "acct-g"), "free-1": ("FREE", None)}
IDENTIFY = first_of(
    api_key_header(KEYS.get),
    bearer_token({"tok-live": "tok-1"}.get),
    session_cookie({"s1": "user-1"}.get),
)


# -- headers, 200 and 429 ----------------------------------------------------


def test_allowed_response_keeps_the_app_answer_and_gains_the_headers(serve):
    client = serve()
    r = client()
    assert (r.status, r.body) == (200, b"hello")
    assert r.header("X-App") == "1" and r.header("Content-Type") == "text/plain"
    assert (r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining"),
            r.header("X-RateLimit-Reset")) == ("2", "1", "1800")
    assert r.header("Retry-After") is None
    assert client.app.calls == 1


def test_denial_is_answered_by_the_middleware_with_retry_after_and_json(serve, clocks):
    client = serve()
    assert [client().status for _ in range(2)] == [200, 200]
    r = client()
    assert r.status == 429
    assert r.json() == DENIED
    assert r.header("Content-Type") == "application/json"
    assert r.header("Content-Length") == str(len(r.body))
    assert r.header("Retry-After") == "1800"  # 2/1h: one more every 30 min
    assert (r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining")) == ("2", "0")
    assert r.header("X-App") is None
    assert client.app.calls == 2
    clocks[0].advance(1800)
    assert client().status == 200


def test_ietf_fields_and_configured_body(serve, make_policy):
    data = dict(POLICY, headers={"reset": "delta", "ietf": True, "legacy": False},
                response={"status": 503, "body": {"error": "wait {retry_after}s"}})
    client = serve(make_policy(data))
    ok = client()
    assert parse_list(ok.header("RateLimit-Policy")) == [("anonymous", {"q": 2, "w": 3600})]
    assert parse_list(ok.header("RateLimit")) == [("anonymous", {"r": 1, "t": 1800})]
    assert ok.header("X-RateLimit-Limit") is None
    client()
    denied = client()
    assert denied.status == 503
    assert denied.json() == {"error": "wait 1800s"}
    assert parse_list(denied.header("RateLimit")) == [("anonymous", {"r": 0, "t": 1800})]
    assert denied.header("Retry-After") == "1800"


def test_the_apps_own_rate_limit_fields_win_and_are_sent_once(serve):
    r = serve()(path="/own")
    assert r.header("X-RateLimit-Limit") == "app"
    assert r.header("X-RateLimit-Remaining") == "1"


def test_route_limits_apply_to_the_path_as_routed(serve):
    client = serve(identify=IDENTIFY)
    gold = [("X-API-Key", "gold-1")]
    assert client("POST", "/login", headers=gold).status == 200
    r = client("POST", "/login/", headers=gold)  # respelt: the same route
    assert r.status == 429 and r.header("Retry-After") == "3600"
    assert client("GET", "/login", headers=gold).status == 200  # GET is not limited


def test_exempt_paths_are_not_counted(serve):
    client = serve(exempt_paths={"/healthz"})
    for _ in range(5):
        r = client(path="/healthz")
        assert r.status == 200 and r.header("X-RateLimit-Limit") is None
    assert client().header("X-RateLimit-Remaining") == "1"


def test_exempt_prefixes_cover_the_paths_under_them_and_no_others(serve):
    client = serve(exempt_paths=["/healthz", "/static/**"])
    for path in ("/static", "/static/app.js", "/static//img/a.png", "/healthz"):
        r = client(path=path)
        assert r.status == 200 and r.header("X-RateLimit-Limit") is None, path
    # a respelled path leaves the prefix once normalised: it counts
    assert client(path="/static/../login").header("X-RateLimit-Remaining") == "1"
    assert client(path="/staticfiles").header("X-RateLimit-Remaining") == "0"


@pytest.mark.parametrize("bad, message", [
    ("/healthz", "must be a collection of paths, got the str '/healthz'"),
    (["/static/*"], "expected an exact path ('/healthz') or a prefix ending in '/**'"),
    (["healthz"], "expected a path starting with '/'"),
])
def test_exempt_paths_that_cannot_work_are_refused(serve, bad, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        serve(exempt_paths=bad)


def test_the_decision_is_handed_to_the_application(serve):
    client = serve(identify=IDENTIFY)
    client(headers=[("X-API-Key", "free-1")])
    decision = client.seen_decision()
    assert decision.allowed and decision.rejected == "tier FREE has no API access"


# -- statuses the policy chooses ---------------------------------------------


class TooLarge:
    """What a policy answers for a size cap: denied with 413."""

    allowed = False
    status = 413
    headers = [("X-RateLimit-Limit", "10")]
    body = b'{"error":"too large"}'
    content_type = "application/json"

    def __init__(self, log):
        self.log = log

    def release(self):
        self.log.append("release")


class CapPolicy(Policy):
    """Denies bodies over 100 bytes with 413, as a policy with caps does."""

    def hit(self, method, path, identity=None, client_ip=None, *, cost=1,
            content_length=None, files=None):
        self.lengths = getattr(self, "lengths", []) + [content_length]
        self.released = getattr(self, "released", [])
        if content_length is not None and content_length > 100:
            return TooLarge(self.released)
        return super().hit(method, path, identity, client_ip, cost=cost,
                           content_length=content_length, files=files)


def test_a_413_from_the_policy_passes_through_with_the_content_length(serve, make_policy):
    policy = make_policy(cls=CapPolicy)
    client = serve(policy)
    assert client("POST", "/up", body=b"x" * 10).status == 200
    r = client("POST", "/up", body=b"x" * 101)
    assert (r.status, r.body) == (413, b'{"error":"too large"}')
    assert r.header("X-RateLimit-Limit") == "10" and r.header("Content-Length") == "21"
    assert policy.lengths == [10, 101]
    assert policy.released == ["release"]
    assert client.app.calls == 1


def test_a_cost_above_every_burst_is_answered_413(serve):
    client = serve(cost=lambda view: 50 if view.path == "/batch" else 1)
    r = client("POST", "/batch")
    assert r.status == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert client().header("X-RateLimit-Remaining") == "1"  # nothing was consumed


# -- release() ---------------------------------------------------------------


class Counted:
    """A PolicyDecision whose release() calls are counted."""

    def __init__(self, decision, log):
        self._d, self._log = decision, log

    def __getattr__(self, name):
        return getattr(self._d, name)

    # as if it held a lease: the middleware skips release() on decisions
    # that hold nothing
    holding = True

    def release(self):
        self._log.append(self._d.allowed)
        self._d.release()


class CountingPolicy(Policy):
    def hit(self, *args, **kwargs):
        self.released = getattr(self, "released", [])
        return Counted(super().hit(*args, **kwargs), self.released)


def test_release_once_on_success_on_denial_and_on_app_errors(serve, make_policy):
    policy = make_policy(cls=CountingPolicy)
    client = serve(policy)
    assert client().status == 200
    assert policy.released == [True]
    with pytest.raises(RuntimeError, match="boom"):
        client(path="/boom")
    assert policy.released == [True, True]
    assert client().status == 429
    assert policy.released == [True, True, False]


def test_wsgi_releases_when_the_server_closes_the_response(make_policy):
    policy = make_policy(cls=CountingPolicy)
    app = wsgi.RateLimitMiddleware(App().wsgi, policy)
    result = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"},
                 lambda *a: None)
    assert list(result) == [b"hello"]
    assert policy.released == []  # still streaming: the lease is held
    result.close()
    assert policy.released == [True]


def test_wsgi_releases_and_closes_the_apps_iterable_when_iteration_fails(make_policy):
    policy = make_policy(cls=CountingPolicy)
    closed = []

    class Body:
        def __iter__(self):
            yield b"part"
            raise OSError("client went away")

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    result = wsgi.RateLimitMiddleware(app, policy)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"}, lambda *a: None)
    with pytest.raises(OSError):
        list(result)
    result.close()  # what the server does, whatever happened
    assert closed == [True] and policy.released == [True]


# -- ASGI: what is not HTTP --------------------------------------------------


def test_the_asgi_middleware_is_seen_as_an_asgi3_application(make_policy):
    # servers (uvicorn's "auto" interface) tell ASGI 3 from ASGI 2 by
    # whether the app's __call__ is a coroutine function
    import inspect

    middleware = asgi.RateLimitMiddleware(App().asgi, make_policy())
    assert inspect.iscoroutinefunction(middleware.__call__)
    assert asyncio.iscoroutinefunction(middleware.__call__)


def test_asgi_middleware_subclasses_and_keyword_calls(make_policy, clocks):
    calls = []

    class Logged(asgi.RateLimitMiddleware):
        async def __call__(self, scope, receive, send):
            calls.append(scope["path"])
            await super().__call__(scope, receive, send)

    class Plain(asgi.RateLimitMiddleware):
        pass

    async def drive(middleware, **as_keywords):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/p", "headers": [],
                 "client": ("10.0.0.9", 1)}
        if as_keywords:
            await middleware(scope=scope, receive=receive, send=send)
        else:
            await middleware(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]).get(b"x-ratelimit-remaining")

    policy = make_policy()  # anonymous: 2/1h per address
    app = App().asgi
    assert asyncio.run(drive(Logged(app, policy))) == (200, b"1")
    assert calls == ["/p"]  # the subclass's __call__ ran, not the base's C call
    assert asyncio.run(drive(Plain(app, policy), as_keywords=True)) == (200, b"0")
    assert asyncio.run(drive(Plain(app, policy))) == (429, b"0")
    with pytest.raises(TypeError, match="ASGICall"):
        start_directly(Logged)  # its __call__ is its own


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_asgi_non_http_scopes_pass_through_untouched(make_policy, kind):
    got = []

    async def app(scope, receive, send):
        got.append((scope, receive, send))

    async def receive():
        return {}

    async def send(message):
        pass

    scope = {"type": kind, "path": "/ws", "headers": [], "client": ("10.0.0.1", 1)}
    before = dict(scope)
    policy = make_policy(cls=CountingPolicy)
    asyncio.run(asgi.RateLimitMiddleware(app, policy)(scope, receive, send))
    assert got == [(scope, receive, send)]
    assert got[0][0] is scope and scope == before
    assert getattr(policy, "released", []) == []  # nothing was counted


# -- identities --------------------------------------------------------------


def test_identity_helpers_pick_the_limit(serve):
    client = serve(identify=IDENTIFY)

    def limit(headers):
        return client(headers=headers).header("X-RateLimit-Limit")

    assert limit([("X-API-Key", "gold-1")]) == "8"
    assert limit([("Authorization", "Bearer tok-live")]) == "4"
    assert limit([("Cookie", "theme=dark; session=s1")]) == "6"
    assert limit([]) == "2"                                       # anonymous, per IP
    assert limit([("X-API-Key", "stolen")]) == "2"                # invalid: as anonymous
    assert limit([("Authorization", "Bearer nope")]) == "2"
    assert limit([("Cookie", "session=expired")]) == "2"
    # an API key wins over a session sent alongside it
    assert limit([("Cookie", "session=s1"), ("X-API-Key", "gold-1")]) == "8"


def test_keys_of_one_account_share_its_limit_and_invalid_keys_share_the_ips(serve):
    client = serve(identify=IDENTIFY)
    remaining = [client(headers=[("X-API-Key", k)]).header("X-RateLimit-Remaining")
                 for k in ("gold-1", "gold-2", "gold-1")]
    assert remaining == ["7", "6", "5"]
    statuses = [client(headers=[("X-API-Key", f"bad-{i}")]).status for i in range(3)]
    assert statuses == [200, 200, 429]  # made-up keys do not buy fresh buckets
    assert client(headers=[("X-API-Key", "bad-9")], peer="10.0.0.2").status == 200


def test_identity_helpers_on_both_request_views():
    environ = {"HTTP_X_API_KEY": "gold-1", "HTTP_AUTHORIZATION": "bearer  tok-live ",
               "HTTP_COOKIE": 'a=1; session="s1"'}
    scope = {"type": "http", "headers": [(b"x-api-key", b"gold-1"),
                                         (b"authorization", b"bearer  tok-live "),
                                         (b"cookie", b"a=1"), (b"cookie", b'session="s1"')]}
    for view in (RequestView.from_environ(environ), RequestView.from_scope(scope)):
        assert api_key_header(KEYS.get)(view) == Identity.api_key("gold-1", "GOLD",
                                                                  account="acct-g")
        assert bearer_token({"tok-live": "t1"}.get)(view) == Identity.token("t1")
        assert session_cookie({"s1": "u1"}.get)(view) == Identity.session("u1")
        assert session_cookie({}.get, cookie="a")(view) == Identity.invalid()
        assert session_cookie({}.get, cookie="missing")(view) is None
        assert api_key_header(KEYS.get, header="X-Other")(view) is None
    basic = RequestView.from_environ({"HTTP_AUTHORIZATION": "Basic dTpw"})
    assert bearer_token(str)(basic) is None
    assert first_of()(basic) is None


def test_identities_follow_what_lookup_answers_now():
    # the identity helpers remember nothing per credential: each request
    # sees the lookup's answer then
    keys = {"k": ("GOLD", "acct-1")}
    subjects = {"t": "user-1"}
    by_key = api_key_header(keys.get)
    by_token = bearer_token(subjects.get)
    view = RequestView.from_environ({"HTTP_X_API_KEY": "k", "HTTP_AUTHORIZATION": "Bearer t"})
    assert by_key(view) == Identity.api_key("k", "GOLD", account="acct-1")
    keys["k"] = ("FREE", "acct-1")
    assert by_key(view) == Identity.api_key("k", "FREE", account="acct-1")
    del keys["k"]
    assert by_key(view) == Identity.invalid()
    assert by_token(view) == Identity.token("user-1")
    subjects["t"] = "user-2"
    assert by_token(view) == Identity.token("user-2")
    subjects.clear()
    assert by_token(view) == Identity.invalid()


def test_content_length_is_read_from_either_protocol():
    assert RequestView.from_environ({"CONTENT_LENGTH": "12"}).content_length == 12
    assert RequestView.from_scope({"headers": [(b"content-length", b"7")]}).content_length == 7
    for bad in ("", "-1", "1e3", "١٢"):
        assert RequestView.from_environ({"CONTENT_LENGTH": bad}).content_length is None


def test_wsgi_path_is_path_info_in_utf8_without_script_name():
    # what the application routes on: SCRIPT_NAME is where it is mounted
    view = RequestView.from_environ({"SCRIPT_NAME": "/api", "PATH_INFO": "/caf\xc3\xa9"})
    assert view.path == "/café"
    mounted = RequestView.from_environ({"SCRIPT_NAME": "/x", "PATH_INFO": "/caf\xc3\xa9"},
                                       mount="/api")
    assert mounted.path == "/api/café"


@pytest.mark.parametrize(("path", "root_path", "routed"), [
    ("/api/login", "/api", "/login"),       # uvicorn --root-path, Starlette Mount
    ("/api", "/api", "/"),
    ("/apiary/login", "/api", "/apiary/login"),  # not a whole segment: as Starlette
    ("/login", "/api", "/login"),           # a server that leaves root_path out of path
    ("/login", "", "/login"),
])
def test_asgi_path_is_the_path_without_its_root_path(path, root_path, routed):
    scope = {"type": "http", "path": path, "root_path": root_path}
    assert RequestView.from_scope(scope).path == routed
    assert RequestView.from_scope(scope, mount="/v1").path == "/v1" + routed


def test_mount_must_be_a_prefix_path():
    from fastlimit.web.gate import Gate
    policy = Policy.from_dict({"identities": {"anonymous": {"rate": "5/1m"}}})
    for bad in ("api", "/api/", "/"):
        with pytest.raises(ValueError, match=f"mount must be .*got {bad!r}"):
            Gate(policy, mount=bad)
    with pytest.raises(TypeError, match="mount must be a str"):
        Gate(policy, mount=b"/api")


# -- the client address --------------------------------------------------------


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(serve):
    client = serve(trusted_proxies=["10.9.0.0/16"])
    statuses = [client(headers=[("X-Forwarded-For", f"198.51.100.{i}")]).status
                for i in range(3)]
    assert statuses == [200, 200, 429]  # every request counted against 10.0.0.1


def test_forwarded_for_from_a_trusted_proxy_is_used(serve):
    client = serve(trusted_proxies=["10.9.0.0/16", "10.8.0.1"])

    def via_proxy(xff):
        return client(headers=[("X-Forwarded-For", xff)], peer="10.9.0.5")

    assert [via_proxy("198.51.100.1").status for _ in range(3)] == [200, 200, 429]
    assert via_proxy("198.51.100.2").status == 200       # another client, another bucket
    # what the client wrote left of the real hop changes nothing
    assert via_proxy("203.0.113.1, 198.51.100.1").status == 429
    # two trusted proxies in a row: the first untrusted hop from the right
    assert via_proxy("198.51.100.1, 10.8.0.1").status == 429
    assert via_proxy("198.51.100.3, 10.8.0.1").status == 200
    assert client.seen_decision().checks[0].key == "198.51.100.3"


def test_forwarded_header_rfc7239(serve):
    client = serve(trusted_proxies=["10.9.0.5"], forwarded_header="forwarded")
    r = client(headers=[("Forwarded", 'for=1.1.1.1, For="[2001:db8::1]:4711";proto=https'),
                        ("X-Forwarded-For", "203.0.113.7")], peer="10.9.0.5")
    assert r.status == 200
    assert client.seen_decision().checks[0].key == "2001:db8::/64"  # an IPv6 client's /64


@pytest.mark.parametrize(("header", "value", "peer", "expected"), [
    ("x-forwarded-for", "1.2.3.4", "192.0.2.1", "192.0.2.1"),            # untrusted peer
    ("x-forwarded-for", "1.2.3.4", "10.0.0.1", "1.2.3.4"),
    ("x-forwarded-for", " 1.2.3.4:8080 ", "10.0.0.1", "1.2.3.4"),
    ("x-forwarded-for", "[2001:DB8::1]:80", "10.0.0.1", "2001:db8::1"),
    ("x-forwarded-for", "2001:db8::1", "10.0.0.1", "2001:db8::1"),
    ("x-forwarded-for", "1.2.3.4, 10.0.0.7", "10.0.0.1", "1.2.3.4"),
    ("x-forwarded-for", "10.0.0.8, 10.0.0.7", "10.0.0.1", "10.0.0.8"),   # all trusted
    ("x-forwarded-for", "1.2.3.4, unknown", "10.0.0.1", "10.0.0.1"),     # not an address
    ("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.7", "10.0.0.1", "10.0.0.7"),
    ("x-forwarded-for", "", "10.0.0.1", "10.0.0.1"),
    ("x-forwarded-for", "1.2.3.4", "::ffff:10.0.0.1", "1.2.3.4"),        # v4-mapped peer
    ("forwarded", "for=_hidden", "10.0.0.1", "10.0.0.1"),
    ("forwarded", "for=1.2.3.4;by=10.0.0.1, proto=http", "10.0.0.1", "10.0.0.1"),
    ("forwarded", 'for="1.2.3.4:99"', "10.0.0.1", "1.2.3.4"),
])
def test_client_ip_rules(header, value, peer, expected):
    proxies = TrustedProxies("10.0.0.0/8", header=header)
    environ = {"REMOTE_ADDR": peer, f"HTTP_{header.upper().replace('-', '_')}": value}
    scope = {"client": (peer, 1), "headers": [(header.encode(), value.encode())]}
    assert proxies.client_ip(RequestView.from_environ(environ)) == expected
    assert proxies.client_ip(RequestView.from_scope(scope)) == expected


def test_unix_socket_peers_are_trusted_only_when_listed():
    scope = {"client": None, "headers": [(b"x-forwarded-for", b"1.2.3.4")]}
    assert TrustedProxies(["10.0.0.1"]).client_ip(RequestView.from_scope(scope)) is None
    assert TrustedProxies(["unix"]).client_ip(RequestView.from_scope(scope)) == "1.2.3.4"
    environ = {"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "1.2.3.4"}
    assert TrustedProxies(["unix"]).client_ip(RequestView.from_environ(environ)) == "1.2.3.4"


def test_bad_configuration_is_refused(make_policy):
    from fastlimit import ConfigurationError

    with pytest.raises(ConfigurationError, match="not-an-ip"):
        TrustedProxies(["not-an-ip"])
    with pytest.raises(ConfigurationError, match="forwarded header"):
        TrustedProxies(["10.0.0.1"], header="x-real-ip")
    with pytest.raises(TypeError, match="Policy"):
        wsgi.RateLimitMiddleware(App().wsgi, {"identities": {}})
    with pytest.raises(TypeError, match="cost"):
        asgi.RateLimitMiddleware(App().asgi, make_policy(), cost="1")


# -- per-route checks ----------------------------------------------------------


def test_route_limit_raises_rate_limited_with_the_answer(make_policy):
    login = RouteLimit(make_policy(), identify=IDENTIFY)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "REMOTE_ADDR": "10.0.0.1"}
    scope = {"type": "http", "method": "POST", "path": "/login", "headers": [],
             "client": ("10.0.0.1", 1)}
    decision = login.check(environ)
    assert dict(decision.headers)["X-RateLimit-Limit"] == "1"
    decision.release()
    with pytest.raises(RateLimited) as denied:
        login.check(scope)  # the same client through ASGI: the same bucket
    e = denied.value
    assert e.status == 429 and json.loads(e.body) == DENIED
    assert dict(e.headers)["Retry-After"] == "3600" and e.content_type == "application/json"
