"""No silent misconfiguration: callbacks that return what they must not,
identity kinds a policy has no rule for, state files two policies could
share by accident, a table of a worker's own, and the switches tests use
(``enabled=False``, ``Policy.reset()``).  Each mistake's message is shown:
what was wrong, where, and what would be accepted."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
from servers import WORK_S, WORKER_HEADER, all_workers_up, from_workers

from fastlimit import (
    CallbackError,
    ConfigurationError,
    FakeClock,
    Identity,
    Limiter,
    Policy,
    RedisBackend,
    SharedTable,
    asgi,
    wsgi,
)
from fastlimit.cli.servers import Server, free_port, gunicorn_argv
from fastlimit.web import RouteLimit, api_key_header, bearer_token, session_cookie

POLICY = {"policy": {"name": "app"},
          "identities": {"anonymous": {"rate": "2/1h"}, "session": {"rate": "3/1h"},
                         "token": {"rate": "3/1h"}, "api_key": {"rate": "tier"}},
          "tiers": {"FREE": {"requests_per_minute": 10}, "PRO": {"requests_per_minute": 100}}}


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


async def hello_asgi(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def call(middleware, headers=(), path="/"):
    """(status, headers, body) of one GET through a WSGI or ASGI middleware."""
    if isinstance(middleware, wsgi.RateLimitMiddleware):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "10.0.0.1"}
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers})
        started = []
        body = b"".join(middleware(environ, lambda s, h, e=None: started.append((s, h))))
        return int(started[0][0].split()[0]), dict(started[0][1]), body

    async def run():
        sent = []
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
                 "query_string": b"", "client": ("10.0.0.1", 4000),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)
        await middleware(scope, receive, send)
        return (sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]},
                b"".join(m.get("body", b"") for m in sent[1:]))
    return asyncio.run(run())


@pytest.fixture
def policy():
    table = SharedTable.anonymous(1024)
    with Policy.from_dict(POLICY, store=table, clock=FakeClock()) as made:
        yield made
    table.close()


@pytest.fixture(params=["wsgi", "asgi"])
def middleware(request, policy):
    def make(**options):
        if request.param == "wsgi":
            return wsgi.RateLimitMiddleware(hello, policy, **options)
        return asgi.RateLimitMiddleware(hello_asgi, policy, **options)
    return make


def logged(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- callbacks -----------------------------------------------------------------------


def test_identify_returning_a_str_is_a_500_logged_once(middleware, caplog):
    def identify(view):
        return "alice"  # the user's name, not an Identity
    app = middleware(identify=identify)
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        answers = [call(app) for _ in range(3)]
    assert [status for status, _, _ in answers] == [500, 500, 500]
    assert json.loads(answers[0][2])["error"]["code"] == "INTERNAL_ERROR"
    assert "alice" not in answers[0][2].decode(), "the client learns nothing of the mistake"
    [message] = logged(caplog, "returned 'alice'")
    assert message.startswith("fastlimit: identify "
                              "test_identify_returning_a_str_is_a_500_logged_once.<locals>"
                              ".identify returned 'alice'; it must return a fastlimit.Identity, "
                              "or None for a caller without a credential")


@pytest.mark.parametrize("row, shown", [
    ({"tier": "PRO", "account": "a1"}, "returned {'tier': 'PRO', 'account': 'a1'}"),
    (("PRO", "a1", "extra"), "returned ('PRO', 'a1', 'extra')"),
    (("PRO", 7), "returned ('PRO', 7)"),
])
def test_an_api_key_lookup_returning_a_row_is_named(middleware, caplog, row, shown):
    app = middleware(identify=api_key_header(lambda key: row))
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        assert [call(app, [("X-API-Key", "k1")])[0] for _ in range(2)] == [500, 500]
    [message] = logged(caplog, shown)
    assert "the lookup of api_key_header" in message
    assert ("it must return a (tier, account) tuple of str (account may be None) for a valid "
            "key, else None") in message


def test_a_token_lookup_returning_true_would_put_everyone_in_one_bucket(middleware, caplog):
    tokens = {"t1", "t2"}
    app = middleware(identify=bearer_token(tokens.__contains__))
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        assert call(app, [("Authorization", "Bearer t1")])[0] == 500
    [message] = logged(caplog, "returned True")
    assert "it must return the subject (a str, e.g. the user or token id), else None" in message


def test_a_session_lookup_may_return_an_int_user_id(middleware):
    app = middleware(identify=session_cookie({"s1": 42, "s2": 42}.get))
    answers = [call(app, [("Cookie", f"session=s{1 + i % 2}")])[0] for i in range(4)]
    assert answers == [200, 200, 200, 429], "both sessions are user 42: one bucket of 3"


def test_a_cost_callable_returning_a_float_is_named(middleware, caplog):
    app = middleware(cost=lambda view: 1.5)
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        assert call(app)[0] == 500
    assert logged(caplog, "returned 1.5; it must return an int >= 0")


def test_an_unknown_tier_is_a_500_logged_once_per_tier(middleware, policy, caplog):
    keys = {"g1": ("GOLD", None), "g2": ("GOLD", None), "p1": ("PLATINUM", None)}
    app = middleware(identify=api_key_header(keys.get))
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        statuses = [call(app, [("X-API-Key", k)])[0] for k in ("g1", "g2", "p1", "g1")]
    assert statuses == [500] * 4
    assert len(logged(caplog, "unknown tier 'GOLD'")) == 1
    assert len(logged(caplog, "unknown tier 'PLATINUM'")) == 1
    [message] = logged(caplog, "unknown tier 'GOLD'")
    assert "policy 'app' does not have (it has: FREE, PRO)" in message
    # called directly, the policy raises it (a ValueError, as before)
    with pytest.raises(CallbackError, match="unknown tier 'GOLD'") as raised:
        policy.hit("GET", "/", Identity.api_key("g1", "GOLD"), "10.0.0.1")
    assert isinstance(raised.value, ValueError)


def test_a_route_limit_answers_a_callback_mistake_500(policy, caplog):
    login = RouteLimit(policy, identify=lambda view: {"user": 1})
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "REMOTE_ADDR": "10.0.0.1"}
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        with pytest.raises(Exception) as raised:
            login.check(environ)
    assert raised.value.status == 500
    assert logged(caplog, "returned {'user': 1}")


# -- identity kinds without a rule ---------------------------------------------------------


def test_a_policy_without_an_anonymous_rule_is_named_at_construction(caplog):
    table = SharedTable.anonymous(1024)
    policy = Policy.from_dict({"policy": {"name": "ocr"},
                               "identities": {"token": {"rate": "100/1h"}}}, store=table)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        wsgi.RateLimitMiddleware(hello, policy, identify=bearer_token(str))
    [message] = logged(caplog, "no [identities.anonymous] rule")
    assert message == (
        "fastlimit: policy 'ocr' (<dict>) has no [identities.anonymous] rule, so callers "
        "without a credential (or with one that fails) are limited by no identity limit. "
        "Add [identities.anonymous] with a rate, or rate = \"unlimited\" to say so.")
    policy.close()
    table.close()


def test_a_kind_the_identify_helper_gives_without_a_rule_is_named(caplog):
    table = SharedTable.anonymous(1024)
    login = Policy.from_dict({"policy": {"name": "login"},
                              "identities": {"anonymous": {"rate": "5/1m"}}}, store=table)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        RouteLimit(login, identify=session_cookie(str))
    assert logged(caplog, "policy 'login' (<dict>) has no [identities.session] rule, so "
                          "session callers (identify gives them) are limited by no identity "
                          "limit")
    assert not logged(caplog, "[identities.anonymous]")
    login.close()
    table.close()


def test_a_kind_an_application_identify_gives_is_named_at_its_first_request(caplog):
    table = SharedTable.anonymous(1024)
    policy = Policy.from_dict({"identities": {"anonymous": {"rate": "5/1m"}}}, store=table)
    app = wsgi.RateLimitMiddleware(hello, policy,
                                   identify=lambda view: Identity.token("t1"))
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        assert not logged(caplog, "[identities.token]")
        assert [call(app)[0] for _ in range(10)] == [200] * 10
    assert len(logged(caplog, "no [identities.token] rule")) == 1
    policy.close()
    table.close()


def test_unlimited_is_a_rule_that_says_so(caplog):
    table = SharedTable.anonymous(1024)
    policy = Policy.from_dict({"identities": {"anonymous": {"rate": "unlimited"},
                                              "token": {"rate": "100/1h"}}}, store=table)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        wsgi.RateLimitMiddleware(hello, policy, identify=bearer_token(str))
        policy.hit("GET", "/", None, "10.0.0.1")
    assert not logged(caplog, "rule")
    assert sorted(policy.missing_identities()) == ["api_key", "session"]
    policy.close()
    table.close()


# -- state files --------------------------------------------------------------------------


def test_two_policies_of_one_name_on_two_tables_share_no_file(table_name, tmp_path):
    other_name = table_name + "-b"
    data = {"policy": {"name": "api"}, "identities": {"token": {"rate": "1/1h"},
                                                      "anonymous": {"rate": "unlimited"}}}
    a = Policy.from_dict({**data, "store": {"table": table_name}})
    b = Policy.from_dict({**data, "store": {"table": other_name}})
    a.overrides.set("token", "t1", "50/1h")
    b.overrides.refresh()
    assert a.overrides.path != b.overrides.path
    assert b.overrides.rate_for("token", "t1") is None
    assert [b.hit("GET", "/", Identity.token("t1")).allowed for _ in range(2)] == [True, False]
    for policy in (a, b):
        policy.store.unlink()
        policy.close()


def test_unlink_removes_the_overrides_a_new_table_would_inherit(table_name):
    data = {"policy": {"name": "ocr"}, "store": {"table": table_name},
            "identities": {"token": {"rate": "1/1h"}, "anonymous": {"rate": "unlimited"}}}
    with Policy.from_dict(data) as first:
        first.overrides.set("token", "t1", "100/1h")
        paths = [first.store.path, first.anonymous_store.path, first.overrides.path]
        assert all(os.path.exists(p) for p in paths)
        first.store.unlink()
    assert not any(os.path.exists(p) for p in paths)
    with Policy.from_dict(data) as again:
        assert again.overrides.rate_for("token", "t1") is None
        hits = [again.hit("GET", "/", Identity.token("t1")).allowed for _ in range(2)]
        assert hits == [True, False]
        again.store.unlink()


def test_an_unwritable_overrides_directory_fails_at_start_up(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigurationError, match=r"store\.overrides: .*expected a file in a "
                                                 r"directory that exists"):
        Policy.from_dict({"identities": {"anonymous": {"rate": "1/1m"}},
                          "store": {"overrides": str(blocked / "o.json")}},
                         store=SharedTable.anonymous(64))


# -- the switches tests use ----------------------------------------------------------------


def test_enabled_false_lets_everything_through_uncounted(middleware, policy):
    off = middleware(enabled=False)
    assert [call(off)[0] for _ in range(5)] == [200] * 5
    assert "X-RateLimit-Limit" not in call(off)[1]
    on = middleware()
    assert [call(on)[0] for _ in range(3)] == [200, 200, 429], "nothing was counted"
    route = RouteLimit(policy, enabled=False)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "10.0.0.1"}
    assert route.check(environ).allowed and route.check(environ).headers == []


def test_reset_forgets_rates_and_quotas_in_every_process(table_name, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(tmp_path / "state"))
    data = {"policy": {"name": "q"}, "store": {"table": table_name},
            "identities": {"api_key": {"rate": "tier"}, "anonymous": {"rate": "1/1h"}},
            "tiers": {"PRO": {"requests_per_minute": 100, "quotas": {"chat": "1/month"}}},
            "quotas": {"chat": "POST /chat"}}
    key = Identity.api_key("k", "PRO", account="a")
    with Policy.from_dict(data) as policy:
        assert policy.hit("POST", "/chat", key, "10.0.0.1").allowed
        assert policy.hit("GET", "/", None, "10.0.0.1").allowed
        assert not policy.hit("POST", "/chat", key, "10.0.0.1").allowed   # the quota
        assert not policy.hit("GET", "/", None, "10.0.0.1").allowed       # the rate
        pid = os.fork()
        if pid == 0:  # another worker resets: this one sees it
            with Policy.from_dict(data) as theirs:
                theirs.reset()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert policy.hit("POST", "/chat", key, "10.0.0.1").allowed
        assert policy.hit("GET", "/", None, "10.0.0.1").allowed
        policy.store.unlink()


def test_reset_on_a_store_that_is_not_a_table_says_so(redis_server):
    backend = RedisBackend(redis_server.url, prefix="reset-test")
    policy = Policy.from_dict({"identities": {"anonymous": {"rate": "1/1h"}}}, store=backend)
    with pytest.raises(ConfigurationError, match="not a shared table: reset"):
        policy.reset()
    backend.close()


# -- a table of a worker's own -------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _in_sibling_workers(make, count=2):
    """Run ``make()`` in ``count`` forked children of this process (siblings
    running one program, as a server's workers), once all are up, and keep
    them up until all are done (as a server's workers stay); what each
    logged to logger ``fastlimit``."""
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    readers = []
    for _ in range(count):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            handler = _Collect()
            logging.getLogger("fastlimit").addHandler(handler)
            try:
                os.read(go_r, 1)
                make()
            finally:
                os.write(w, json.dumps(handler.messages).encode() + b"\n")
                os.read(done_r, 1)
                os._exit(0)
        os.close(w)
        readers.append((pid, os.fdopen(r, "rb")))
    os.write(go_w, b"x" * count)
    out = [json.loads(f.readline() or b"[]") for _, f in readers]
    os.write(done_w, b"x" * count)
    for pid, f in readers:
        os.waitpid(pid, 0)
        f.close()
    for fd in (go_r, go_w, done_r, done_w):
        os.close(fd)
    return out


def test_a_limiter_without_a_store_in_sibling_workers_is_named():
    seen = _in_sibling_workers(lambda: Limiter("10/1m", name="api"))
    for logs in seen:
        [message] = [m for m in logs if "Limiter 'api'" in m]
        assert message.startswith(
            f"fastlimit: Limiter 'api' counts in a table of this process only, while 1 other "
            f"workers of this server (children of pid {os.getpid()} running the same program) "
            f"each count in their own: together they let up to 2 times its limits through. "
            f"Pass store=SharedTable.open(\"myapp\")")


def test_a_policy_without_a_table_in_sibling_workers_is_named_at_the_first_request():
    data = {"policy": {"name": "w"}, "identities": {"anonymous": {"rate": "5/1m"}}}

    def worker():
        call(wsgi.RateLimitMiddleware(hello, Policy.from_dict(data)))
    for logs in _in_sibling_workers(worker):
        assert [m for m in logs if "policy 'w' (no [store] table) counts in a table of this "
                                   "process only" in m], logs


def test_a_route_limit_on_a_table_of_its_worker_is_named_too():
    data = {"policy": {"name": "rl"}, "identities": {"anonymous": {"rate": "5/1m"}}}
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "REMOTE_ADDR": "10.0.0.1"}

    def worker():
        RouteLimit(Policy.from_dict(data)).check(environ)
    for logs in _in_sibling_workers(worker):
        assert [m for m in logs if "policy 'rl' (no [store] table)" in m], logs


def test_a_policy_made_before_the_fork_is_shared_and_not_named():
    shared = wsgi.RateLimitMiddleware(hello, Policy.from_dict(
        {"policy": {"name": "pre"}, "identities": {"anonymous": {"rate": "3/1h"}}}))
    seen = _in_sibling_workers(lambda: call(shared), count=3)
    assert not any(m for logs in seen for m in logs if "process only" in m)
    assert call(shared)[0] == 429, "the 3 workers used the 3 allowed: one table"
    shared.policy.close()


def test_a_single_process_is_not_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        Limiter("10/1m", name="alone")
    assert not logged(caplog, "process only")


SPLIT_APP = f"""
import logging, os, time
from fastlimit import Policy, wsgi
logging.basicConfig(level=logging.WARNING)


def hello(environ, start_response):
    time.sleep({WORK_S})  # busy: the next requests go to the other worker
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("{WORKER_HEADER}", str(os.getpid()))])
    return [b"hi"]


app = wsgi.RateLimitMiddleware(hello, Policy.from_dict(
    {{"policy": {{"name": "split"}}, "identities": {{"anonymous": {{"rate": "100/1h"}}}}}}),
    exempt_paths={{"/healthz"}})
"""


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_gunicorn_workers_with_a_table_each_are_warned_of(tmp_path, preload):
    (tmp_path / "splitapp.py").write_text(SPLIT_APP)
    port = free_port()
    options = ["--preload"] if preload else []
    log = tmp_path / "server.log"
    with Server(gunicorn_argv("splitapp:app", port, workers=2, options=options), port,
                cwd=str(tmp_path), log=str(log)) as server:
        server.wait_for_children(2)
        all_workers_up(port, 2)
        replies, workers = from_workers(port, "GET", "/", 20, concurrency=4)
        remaining = {r.headers["x-ratelimit-remaining"] for r in replies}
    assert len(workers) == 2, "both workers answered"
    warned = "policy 'split' (no [store] table) counts in a table of this process only"
    if preload:
        # made in the arbiter before the fork: one table every worker shares
        assert warned not in server.log()
        assert remaining == {str(99 - i) for i in range(20)}, "one count across both"
    else:
        assert warned in server.log(), server.log()
        assert "1 other workers of this server" in server.log()
