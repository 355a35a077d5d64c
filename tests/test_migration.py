"""docs/migration.md's fastlimit applications, run as written: each
``<!-- migration: NAME -->`` block is executed and the application it builds
is driven through the framework's own test client (Flask's, Starlette's,
Django's), checking the counts, 429s and headers the guide describes."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastlimit import FakeClock, SharedTable
from fastlimit.testing import isolated

GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "migration.md"
TESTED = {"flask", "flask-application-limits", "fastapi", "django"}
DENIED = {"error": "rate limited"}  # the body each guide app answers a 429 with
DEFAULT_BODY = {"success": False,
                "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}
WRONG = {"X-Password": "wrong"}


def block(name: str) -> str:
    match = re.search(rf"<!-- migration: {re.escape(name)} -->\n```python\n(.*?)```",
                      GUIDE.read_text(), re.S)
    assert match, f"docs/migration.md has no block {name!r}"
    return match.group(1)


def test_every_fastlimit_block_of_the_guide_is_run_here():
    text = GUIDE.read_text()
    assert set(re.findall(r"<!-- migration: ([\w.-]+) -->\n```python\n", text)) == TESTED
    assert text.count("<!-- migration:") == len(TESTED)  # none misplaced, none twice


class OnClock:
    """A table whose limiters run on ``clock``: the integrations take a
    store, not a clock, so the fake time comes with the store."""

    def __init__(self, table: SharedTable, clock: FakeClock) -> None:
        self.table = table
        self.clock = clock

    @property
    def kinds(self) -> frozenset[str]:
        return self.table.kinds

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None, on_full: Any = None) -> Any:
        return self.table.rate_state(name, emission_interval_ns, burst,
                                     clock=clock or self.clock, on_full=on_full)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


@pytest.fixture
def store(clock: FakeClock) -> Iterator[OnClock]:
    with isolated():
        table = SharedTable.open(f"migration-{uuid.uuid4().hex[:12]}", capacity=4096,
                                 clock="injected")
        try:
            yield OnClock(table, clock)
        finally:
            table.close()


def run(name: str, monkeypatch: pytest.MonkeyPatch, module: Any, attribute: str,
        store: OnClock) -> dict[str, Any]:
    """Exec the guide's block ``name`` with ``module.attribute`` (the
    integration's limiter class, as the block imports it) counting on
    ``store`` unless the block gives a store itself."""
    base = getattr(module, attribute)

    class OnStore(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("store", store)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(module, attribute, OnStore)
    namespace: dict[str, Any] = {"__name__": f"migration_{name.replace('-', '_')}"}
    exec(compile(block(name), f"docs/migration.md <{name}>", "exec"), namespace)
    return namespace


def statuses(replies: list[Any]) -> list[int]:
    return [r.status_code for r in replies]


# -- Flask -------------------------------------------------------------------


@pytest.fixture
def flask_client(monkeypatch: pytest.MonkeyPatch, store: OnClock) -> Any:
    pytest.importorskip("flask")
    import fastlimit.flask

    return run("flask", monkeypatch, fastlimit.flask, "FlaskLimiter", store)["app"].test_client()


def test_flask_login_counts_failed_logins_and_says_when_to_retry(flask_client, clock):
    c = flask_client
    replies = [c.post("/login", headers=WRONG) for _ in range(6)]
    assert statuses(replies) == [401] * 5 + [429]
    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["4", "3", "2", "1", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in replies} == {"5"}
    assert "Retry-After" not in replies[0].headers  # only a 429 carries it
    denied = replies[5]
    assert denied.json == DENIED
    assert denied.content_type == "application/json"
    assert denied.headers["Content-Length"] == str(len(denied.data))
    assert denied.headers["Retry-After"] == "12"  # one more request in 60 s / 5
    assert int(denied.headers["X-RateLimit-Reset"]) > 0

    clock.advance(12)
    assert statuses([c.post("/login", headers=WRONG) for _ in range(2)]) == [401, 429]
    clock.advance(12)
    right = c.post("/login", headers={"X-Password": "secret"})
    assert right.status_code == 200 and right.json == {"ok": True}
    # deduct_when gave the successful login back: the next failure still gets in
    assert statuses([c.post("/login", headers=WRONG) for _ in range(2)]) == [401, 429]


def test_flask_gcra_refills_one_at_a_time_and_a_quiet_minute_refills_all(flask_client, clock):
    c = flask_client
    assert statuses([c.post("/login", headers=WRONG) for _ in range(6)]) == [401] * 5 + [429]
    for _ in range(4):  # then one every 12 s: 9 within 48 s, never more than 5 at once
        clock.advance(12)
        assert statuses([c.post("/login", headers=WRONG) for _ in range(2)]) == [401, 429]
    clock.advance(60)
    assert statuses([c.post("/login", headers=WRONG) for _ in range(6)]) == [401] * 5 + [429]


def test_flask_day_limit_counts_no_denied_request(flask_client, clock):
    c = flask_client
    for _ in range(4):  # 8 tries a minute: 5 let through, 3 denied by the 5/minute
        assert statuses([c.post("/login", headers=WRONG) for _ in range(8)]) == (
            [401] * 5 + [429] * 3)
        clock.advance(60)
    # 20 failures, 12 denials: the day's 20 are spent by the failures alone
    denied = c.post("/login", headers=WRONG)
    assert denied.status_code == 429 and denied.json == DENIED
    assert denied.headers["X-RateLimit-Limit"] == "20"
    assert denied.headers["X-RateLimit-Remaining"] == "0"
    assert denied.headers["Retry-After"] == str(86400 // 20 - 240)


def test_flask_keys_shared_limits_exempt_and_defaults(flask_client):
    c = flask_client
    keyed = [c.get("/search", headers={"X-Api-Key": "a"}) for _ in range(11)]
    assert statuses(keyed) == [200] * 10 + [429]
    assert keyed[10].headers["Retry-After"] == "6"
    assert c.get("/search", headers={"X-Api-Key": "b"}).status_code == 200
    assert c.get("/search").status_code == 200  # no key: per IP, a bucket of its own

    reports = [c.get(p) for p in ("/reports/daily", "/reports/weekly") * 2]
    assert statuses(reports) == [200, 200, 200, 429]
    assert reports[3].json == DENIED and reports[3].headers["Retry-After"] == "1200"

    health = [c.get("/healthz") for _ in range(60)]
    assert statuses(health) == [200] * 60
    assert "X-RateLimit-Limit" not in health[-1].headers

    # the default limit, per route as flask-limiter counts it: 50 an hour
    # per IP on /items, and 50 more on /items/<id> (whatever the id)
    plain = [c.get("/items") for _ in range(50)]
    assert statuses(plain) == [200] * 50
    assert plain[-1].headers["X-RateLimit-Limit"] == "50"
    assert plain[-1].headers["X-RateLimit-Remaining"] == "0"
    over = c.get("/items")
    assert over.status_code == 429 and over.json == DENIED
    assert over.headers["Retry-After"] == "72"
    by_id = [c.get(f"/items/{i}") for i in range(51)]
    assert statuses(by_id) == [200] * 50 + [429], "one budget for the route, not per id"


def test_flask_application_limits_are_a_policy_on_every_request(monkeypatch, store, clock):
    pytest.importorskip("flask")
    import fastlimit.flask

    base = fastlimit.Policy

    class PolicyOnClock(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("clock", clock)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(fastlimit, "Policy", PolicyOnClock)
    with isolated():  # the block's own named table
        ns = run("flask-application-limits", monkeypatch, fastlimit.flask, "FlaskLimiter", store)
        try:
            c = ns["app"].test_client()
            uploads = [c.post("/upload") for _ in range(11)]
            assert statuses(uploads) == [200] * 10 + [429]
            assert uploads[0].headers["X-RateLimit-Limit"] == "10"  # the one that binds
            assert uploads[10].json == DEFAULT_BODY
            assert uploads[10].headers["Retry-After"] == "360"
            # the uploads spent 10 of the 100/1h, the denied one nothing
            items = [c.get("/items") for _ in range(91)]
            assert statuses(items) == [200] * 90 + [429]
            assert items[0].headers["X-RateLimit-Limit"] == "100"
            assert items[0].headers["X-RateLimit-Remaining"] == "89"
            assert items[90].json == DEFAULT_BODY
            assert items[90].headers["Retry-After"] == "36"
        finally:
            ns["policy"].close()


# -- FastAPI -----------------------------------------------------------------


@pytest.fixture
def fastapi_client(monkeypatch: pytest.MonkeyPatch, store: OnClock) -> Any:
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():  # newer Starlette asks for httpx2; httpx still works
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    import fastlimit.starlette

    ns = run("fastapi", monkeypatch, fastlimit.starlette, "StarletteLimiter", store)
    return TestClient(ns["app"])


def test_fastapi_login_limit_and_retry_after(fastapi_client, clock):
    c = fastapi_client
    replies = [c.post("/login") for _ in range(6)]
    assert statuses(replies) == [401] * 5 + [429]
    assert [r.headers["x-ratelimit-remaining"] for r in replies] == ["4", "3", "2", "1", "0", "0"]
    assert {r.headers["x-ratelimit-limit"] for r in replies} == {"5"}
    assert "retry-after" not in replies[0].headers
    denied = replies[5]
    assert denied.json() == DENIED
    assert denied.headers["content-type"] == "application/json"
    assert denied.headers["retry-after"] == "12"
    clock.advance(12)
    assert statuses([c.post("/login?password=secret") for _ in range(2)]) == [200, 429]


def test_fastapi_keys_shared_limits_unlimited_route_and_default_router(fastapi_client):
    c = fastapi_client
    keyed = [c.get("/search", headers={"x-api-key": "a"}) for _ in range(11)]
    assert statuses(keyed) == [200] * 10 + [429]
    assert keyed[10].headers["retry-after"] == "6"
    assert c.get("/search", headers={"x-api-key": "b"}).status_code == 200
    assert c.get("/search").status_code == 200

    reports = [c.get(p) for p in ("/reports/daily", "/reports/weekly") * 2]
    assert statuses(reports) == [200, 200, 200, 429]
    assert reports[3].json() == DENIED and reports[3].headers["retry-after"] == "1200"

    health = [c.get("/healthz") for _ in range(60)]
    assert statuses(health) == [200] * 60
    assert "x-ratelimit-limit" not in health[-1].headers

    plain = [c.get("/items") for _ in range(25)] + [c.get("/items/7") for _ in range(25)]
    assert statuses(plain) == [200] * 50
    assert plain[-1].headers["x-ratelimit-limit"] == "50"
    assert plain[-1].headers["x-ratelimit-remaining"] == "0"
    over = c.get("/items/8")
    assert over.status_code == 429 and over.json() == DENIED
    assert over.headers["retry-after"] == "72"


# -- Django --------------------------------------------------------------------

# Django's settings are configured once per process and the integration
# keeps its state per process, so the app runs in a process of its own.
DJANGO_CLIENT = textwrap.dedent("""
    import json
    import django
    from django.test import Client
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()
    c = Client()

    def reply(r):
        return [r.status_code, r.content.decode(), {k.lower(): v for k, v in r.headers.items()}]

    out = {
        "login": [reply(c.post("/login")) for _ in range(6)],
        "login_get": reply(c.get("/login")),
        "search": [reply(c.get("/search", headers={"x-api-key": "a"})) for _ in range(11)],
        "search_b": reply(c.get("/search", headers={"x-api-key": "b"})),
        "reports": [reply(c.get(p)) for p in ["/reports/daily", "/reports/weekly"] * 2],
        "healthz": [reply(c.get("/healthz")) for _ in range(60)],
        "items": [reply(c.get(p)) for p in ["/items"] * 25 + ["/items/7"] * 25 + ["/items/8"]],
    }
    print(json.dumps(out))
""")


@pytest.fixture
def django_replies(tmp_path: pathlib.Path) -> dict[str, Any]:
    pytest.importorskip("django")
    where = tmp_path
    (where / "migration_django.py").write_text(block("django"))
    (where / "client.py").write_text(DJANGO_CLIENT)
    with isolated():  # the process's table in a directory of its own
        done = subprocess.run(
            [sys.executable, "client.py"], cwd=str(where), capture_output=True, text=True,
            timeout=120, env=dict(os.environ, DJANGO_SETTINGS_MODULE="migration_django",
                                  PYTHONPATH=str(where)))
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_django_login_several_rates_and_method(django_replies):
    login = django_replies["login"]
    assert [r[0] for r in login] == [200] * 5 + [429]
    assert [r[2]["x-ratelimit-remaining"] for r in login[:5]] == ["4", "3", "2", "1", "0"]
    assert {r[2]["x-ratelimit-limit"] for r in login} == {"5"}
    assert "retry-after" not in login[0][2]
    status, body, headers = login[5]
    assert json.loads(body) == DENIED
    assert headers["content-type"] == "application/json"
    # Django takes no store: the real clock, so the wait is bounded, not exact
    assert 1 <= int(headers["retry-after"]) <= 12
    assert django_replies["login_get"][0] == 200  # method="POST": a GET is not counted


def test_django_block_false_shared_names_and_undecorated_views(django_replies):
    search = django_replies["search"]
    assert [r[0] for r in search] == [200] * 11  # block=False: the view decides
    assert [json.loads(r[1]) for r in search[-2:]] == [
        {"results": []}, {"results": [], "limited": True}]
    assert json.loads(django_replies["search_b"][1]) == {"results": []}

    reports = django_replies["reports"]
    assert [r[0] for r in reports] == [200, 200, 200, 429]
    assert json.loads(reports[3][1]) == DENIED
    assert 1 <= int(reports[3][2]["retry-after"]) <= 1200

    health = django_replies["healthz"]
    assert [r[0] for r in health] == [200] * 60
    assert "x-ratelimit-limit" not in health[-1][2]

    items = django_replies["items"]  # one view, so one budget for both URLs
    assert [r[0] for r in items] == [200] * 50 + [429]
    assert items[49][2]["x-ratelimit-limit"] == "50"
    assert items[49][2]["x-ratelimit-remaining"] == "0"
    assert json.loads(items[50][1]) == DENIED
