"""The code blocks of the README and of the documentation site (docs/*.md),
run as written.  A block marked ``<!-- recipe: NAME -->`` runs here, in a
namespace with ``policy``, ``login_policy``, ``identify``, ``table`` and a
few stand-ins defined: the framework recipes drive the application they
build through the framework's own requests, the others must run without an
error, and tests/test_client.py drives the ``batch`` one.  Every other
Python block says why it is not run (``<!-- not run: REASON -->``): a
server to connect to, a fragment of a recipe.  docs/migration.md has its own
runner (tests/test_migration.py)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re

import pytest

import fastlimit
from fastlimit import FakeClock, Policy, SharedTable
from fastlimit.testing import isolated

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SOURCES = [README, *sorted((ROOT / "docs").glob("*.md"))]
OWN_RUNNER = {ROOT / "docs" / "migration.md"}
DENIED = {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}
RECIPE = re.compile(r"<!-- recipe: ([\w.-]+) -->\n```python\n(.*?)```", re.S)
# recipes driven by tests of their own (the framework recipes below, batch in test_client.py)
DRIVEN = {"flask", "starlette", "batch", "gunicorn"}


def recipes() -> dict[str, str]:
    found: dict[str, str] = {}
    for source in SOURCES:
        for name, code in RECIPE.findall(source.read_text()):
            assert name not in found, f"recipe {name!r} twice (in {source.name})"
            found[name] = code
    return found


def recipe(name: str) -> str:
    code = recipes().get(name)
    assert code is not None, f"no recipe {name!r} in the README or docs/"
    return code


def test_every_python_block_is_run_or_says_why() -> None:
    unmarked = []
    for source in SOURCES:
        if source in OWN_RUNNER:
            continue
        lines = source.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != "```python":
                continue
            before = next((lines[k].strip() for k in range(number - 1, -1, -1)
                           if lines[k].strip()), "")
            if not re.fullmatch(r"<!-- (recipe: [\w.-]+|not run: .+) -->", before):
                unmarked.append(f"{source.relative_to(ROOT)}:{number + 1}")
    assert unmarked == [], "python blocks neither run nor marked <!-- not run: why -->"


@pytest.fixture
def namespace():
    tables = [SharedTable.anonymous(1024), SharedTable.anonymous(1024)]
    clock = FakeClock()
    ns = {
        "fastlimit": fastlimit,
        "policy": Policy.from_dict({"identities": {"anonymous": {"rate": "3/1h"}}},
                                   store=tables[0], clock=clock),
        "login_policy": Policy.from_dict(
            {"policy": {"name": "login"}, "identities": {"anonymous": {"rate": "2/1h"}}},
            store=tables[1], clock=clock),
        "identify": None,  # everyone anonymous: limited per client IP
        "table": tables[0],
        "handle_upload": lambda: None,
        "__name__": "readme_recipe",
    }
    yield ns
    for table in tables:
        table.close()


@pytest.mark.parametrize("name", sorted(set(recipes()) - DRIVEN))
def test_the_recipe_runs(name, namespace, monkeypatch):
    if name.startswith("flask"):
        flask = pytest.importorskip("flask")
        namespace["admin_blueprint"] = flask.Blueprint("admin", "admin")
    monkeypatch.chdir(ROOT)  # the recipes name examples/ by their path in the repository
    given = {id(value) for value in namespace.values()}
    with isolated():  # the named tables and quota files they open land in a temporary dir
        exec(compile(recipe(name), f"<recipe {name}>", "exec"), namespace)
        for value in namespace.values():
            if isinstance(value, SharedTable | Policy) and id(value) not in given:
                value.close()


def test_flask_recipe(namespace):
    exec(recipe("flask"), namespace)
    client = namespace["app"].test_client()
    ok = [client.post("/login") for _ in range(2)]
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].json == {"ok": True}
    # the route's own headers (limit 2) win over the middleware's (limit 3)
    assert ok[1].headers.getlist("X-RateLimit-Limit") == ["2"]
    assert ok[1].headers["X-RateLimit-Remaining"] == "0"
    denied = client.post("/login")
    assert denied.status_code == 429 and denied.json == DENIED
    assert denied.headers["Retry-After"] == "1800"
    # the middleware counted all three: its own limit of 3 is spent now
    last = client.post("/login")
    assert last.status_code == 429 and last.headers["Retry-After"] == "1200"
    assert last.headers["X-RateLimit-Limit"] == "3"


class Reply:
    def __init__(self, messages):
        start = messages[0]
        self.status_code = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.content = b"".join(m.get("body", b"") for m in messages[1:])


def call_asgi(app, method, path):
    """One request straight into the ASGI app, as a server would send it."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "scheme": "http", "headers": [(b"host", b"test")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return Reply(sent)


def test_starlette_recipe(namespace):
    exec(recipe("starlette"), namespace)
    app = namespace["app"]
    logins = [call_asgi(app, "POST", "/login") for _ in range(3)]
    assert [r.status_code for r in logins] == [200, 200, 429]
    assert json.loads(logins[0].content) == {"ok": True}
    assert logins[0].headers["x-ratelimit-limit"] == "2"
    assert logins[0].headers["x-ratelimit-remaining"] == "1"
    assert json.loads(logins[2].content) == DENIED
    assert logins[2].headers["retry-after"] == "1800"
    items = [call_asgi(app, "GET", "/items") for _ in range(4)]
    assert [r.status_code for r in items] == [200, 200, 200, 429]
    assert items[0].headers["x-ratelimit-limit"] == "3"
    assert items[3].headers["retry-after"] == "1200"
    assert items[3].headers["content-type"] == "application/json"


def test_the_gunicorn_recipe_limits_per_client_ip(monkeypatch):
    clock = FakeClock()

    class PolicyOnClock(Policy):  # the recipe's policy, on a clock the test moves
        @classmethod
        def from_dict(cls, *args, **kwargs):
            return Policy.from_dict(*args, clock=clock, **kwargs)

    monkeypatch.setattr(fastlimit, "Policy", PolicyOnClock)
    namespace = {"__name__": "myapp"}
    with isolated():
        exec(compile(recipe("gunicorn"), "<recipe gunicorn>", "exec"), namespace)
        try:
            def get(ip):
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": ip,
                           "SERVER_NAME": "test", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
                sent = {}

                def start_response(status, headers, exc_info=None):
                    sent["status"], sent["headers"] = status, dict(headers)

                body = b"".join(namespace["app"](environ, start_response))
                return sent["status"], sent["headers"], body

            replies = [get("192.0.2.1") for _ in range(6)]
            assert [r[0] for r in replies] == ["200 OK"] * 5 + ["429 Too Many Requests"]
            assert replies[0][2] == b"hello\n"
            status, headers, body = replies[5]
            assert headers["Retry-After"] == "12"
            assert json.loads(body)["error"]["code"] == "RATE_LIMITED"
            assert get("192.0.2.2")[0] == "200 OK"  # another client, its own 5
            clock.advance(12)
            assert get("192.0.2.1")[0] == "200 OK"
        finally:
            namespace["policy"].close()
