"""The README's framework recipes, run as written: each ``<!-- recipe: NAME -->``
block is executed with ``policy``, ``login_policy`` and ``identify`` defined,
then the application it builds is driven through the framework's own test
client."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re

import pytest

import fastlimit
from fastlimit import FakeClock, Policy, SharedTable

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
DENIED = {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}


def recipe(name):
    text = README.read_text()
    match = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no recipe {name!r}"
    return match.group(1)


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
        "__name__": "readme_recipe",
    }
    yield ns
    for table in tables:
        table.close()


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
