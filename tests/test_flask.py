"""fastlimit.flask.FlaskLimiter: limits next to the views, as flask-limiter
users write them; in process (Flask's test client) and under gunicorn -w 4."""

import json
import logging
import os
import textwrap

import pytest

flask = pytest.importorskip("flask")

from servers import WORK_S, WORKER_HEADER, all_workers_up, from_workers  # noqa: E402

from fastlimit import ConfigurationError, FakeClock, Identity  # noqa: E402
from fastlimit.cli.servers import Server, free_port, gunicorn_argv  # noqa: E402
from fastlimit.flask import FlaskLimiter  # noqa: E402


def make_app(table_name, **config):
    app = flask.Flask("fltest")
    app.config.update(FASTLIMIT_TABLE=table_name, **config)
    breaches = []
    limiter = FlaskLimiter(identify=lambda v: (Identity.session(v.header("x-user"))
                                               if v.header("x-user") else None),
                           default_limits=["3/hour"], on_breach=breaches.append)

    @app.post("/login")
    @limiter.limit("2/minute;3/day", deduct_when=lambda r: r.status_code == 401)
    def login():
        ok = flask.request.headers.get("x-password") == "right"
        return ("welcome", 200) if ok else ("wrong", 401)

    @app.get("/a")
    @limiter.limit("2/hour", name="shared", key="identity")
    def a():
        return "a"

    @app.get("/b")
    @limiter.limit("2/hour", name="shared", key="identity")
    def b():
        return "b"

    @app.get("/free")
    @limiter.exempt
    def free():
        return "free"

    @app.get("/plain")
    def plain():
        return "plain"

    @app.get("/byhdr")
    @limiter.limit("1/hour", key=lambda: flask.request.headers.get("x-tenant"))
    def byhdr():
        return "t"

    @app.get("/admin-only")
    @limiter.limit("1/hour", exempt_when=lambda: flask.request.headers.get("x-admin") == "1")
    def admin():
        return "x"

    bp = flask.Blueprint("bp", __name__, url_prefix="/bp")

    @bp.get("/one")
    def one():
        return "1"

    @bp.get("/two")
    def two():
        return "2"

    limiter.limit("2/hour")(bp)
    app.register_blueprint(bp)
    limiter.init_app(app)
    return app, limiter, breaches


@pytest.fixture
def client(table_name):
    app, limiter, breaches = make_app(table_name)
    yield app.test_client(), breaches
    limiter.store.close()


def statuses(client, method, path, n, **headers):
    return [client.open(path, method=method, headers=headers).status_code for _ in range(n)]


def test_deduct_when_counts_only_failed_logins(client):
    c, _ = client
    assert statuses(c, "POST", "/login", 5, x_password="right") == [200] * 5
    assert statuses(c, "POST", "/login", 3) == [401, 401, 429]


def test_a_429_has_the_body_headers_and_on_breach(client):
    c, breaches = client
    statuses(c, "GET", "/plain", 3)
    denied = c.get("/plain")
    assert denied.status_code == 429
    assert json.loads(denied.data)["error"]["code"] == "RATE_LIMITED"
    assert denied.headers["Retry-After"] == "1200"
    assert len(breaches) == 1


def test_headers_on_every_response(client):
    c, _ = client
    reply = c.get("/plain")
    assert reply.headers["X-RateLimit-Limit"] == "3"
    assert reply.headers["X-RateLimit-Remaining"] == "2"


def test_a_named_limit_is_shared_and_counted_per_identity(client):
    c, _ = client
    assert [c.get(p, headers={"x-user": "u1"}).status_code for p in ("/a", "/b", "/a")] == [
        200, 200, 429]
    assert c.get("/b", headers={"x-user": "u2"}).status_code == 200


def test_exempt_views_are_never_counted(client):
    c, _ = client
    assert statuses(c, "GET", "/free", 10) == [200] * 10


def test_key_callable_and_exempt_when(client):
    c, _ = client
    assert statuses(c, "GET", "/byhdr", 2, x_tenant="t1") == [200, 429]
    assert statuses(c, "GET", "/byhdr", 1, x_tenant="t2") == [200]
    assert statuses(c, "GET", "/admin-only", 3, x_admin="1") == [200] * 3
    assert statuses(c, "GET", "/admin-only", 2) == [200, 429]


def test_a_blueprint_limit_covers_its_views(client):
    c, _ = client
    assert [c.get(p).status_code for p in ("/bp/one", "/bp/two", "/bp/one")] == [200, 200, 429]


def test_disabled_counts_nothing(table_name):
    app, limiter, _ = make_app(table_name, FASTLIMIT_ENABLED=False)
    assert statuses(app.test_client(), "GET", "/plain", 10) == [200] * 10
    limiter.store.close()


def test_one_name_with_two_rates_is_refused(table_name):
    app = flask.Flask("fltest2")
    app.testing = True  # the error reaches the test, not a 500
    app.config["FASTLIMIT_TABLE"] = table_name
    limiter = FlaskLimiter(app)
    app.get("/x")(limiter.limit("1/hour", name="n")(lambda: "x"))
    app.get("/y", endpoint="y")(limiter.limit("2/hour", name="n")(lambda: "y"))
    c = app.test_client()
    assert c.get("/x").status_code == 200
    with pytest.raises(ConfigurationError, match="limit 'n' is given as 1/1h and as 2/1h"):
        c.get("/y")
    limiter.store.close()


def test_a_key_callable_returning_a_non_str_is_named(table_name, caplog):
    app = flask.Flask("fltest3")
    app.testing = True
    app.config["FASTLIMIT_TABLE"] = table_name
    limiter = FlaskLimiter(app)
    app.get("/x")(limiter.limit("1/hour", key=lambda: 42)(lambda: "x"))
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        answers = [client.get("/x") for _ in range(3)]
    # every such request is answered 500, without a traceback each time:
    # the mistake is logged once, naming the callable and what it returned
    assert [r.status_code for r in answers] == [500, 500, 500]
    assert answers[0].json["error"]["code"] == "INTERNAL_ERROR"
    logged = [r for r in caplog.records if "returned 42" in r.getMessage()]
    assert len(logged) == 1
    assert "the key callable" in logged[0].getMessage()
    assert "it must return a non-empty str" in logged[0].getMessage()
    limiter.store.close()


APP = textwrap.dedent(f"""
    import os, time, flask
    from fastlimit.flask import FlaskLimiter
    app = flask.Flask("served")
    app.config["FASTLIMIT_TABLE"] = os.environ["TEST_TABLE"]
    limiter = FlaskLimiter(app)

    @app.post("/login")
    @limiter.limit("5/hour;7/day")
    def login():
        time.sleep({WORK_S})  # busy: the next requests go to other workers
        return "ok"

    @app.get("/healthz")
    def healthz():
        time.sleep({WORK_S})
        return "ok"

    @app.after_request
    def worker(response):
        response.headers["{WORKER_HEADER}"] = str(os.getpid())
        return response
""")


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_exact_across_four_gunicorn_workers(tmp_path, table_name, worker):
    (tmp_path / "flapp.py").write_text(APP)
    port = free_port()
    env = dict(os.environ, TEST_TABLE=table_name)
    options = ["--worker-class", worker] + (["--threads", "4"] if worker == "gthread" else [])
    with Server(gunicorn_argv("flapp:app", port, workers=4, options=options), port, env=env,
                cwd=str(tmp_path), log=str(tmp_path / "server.log")) as server:
        server.wait_for_children(4)
        all_workers_up(port, 4)
        replies, workers = from_workers(port, "POST", "/login", 12)
    assert len(workers) >= 2, "several workers answered"
    assert sorted(r.status for r in replies) == [200] * 5 + [429] * 7, server.log()
    # the binding rate's fields: 5/hour, or 7/day when requests interleaved
    # between a request's two counts left it fewer
    assert {r.headers["x-ratelimit-limit"] for r in replies} <= {"5", "7"}


def test_a_fake_clock_drives_the_view_limits(table_name):
    clock = FakeClock()
    app = flask.Flask("fltest-clock")
    app.config["FASTLIMIT_TABLE"] = table_name
    limiter = FlaskLimiter(app, clock=clock)
    app.get("/x")(limiter.limit("2/hour")(lambda: "x"))
    client = app.test_client()
    assert [client.get("/x").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/x").headers["Retry-After"] == "1800"
    clock.advance(1800)  # half an hour: one more
    assert [client.get("/x").status_code for _ in range(2)] == [200, 429]
    limiter.store.close()
