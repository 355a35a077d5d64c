"""fastlimit.starlette.StarletteLimiter: FastAPI dependencies, Starlette
decorators, websocket messages; in process and under uvicorn --workers 4."""

import json
import os
import sys
import textwrap
import warnings

import pytest

fastapi = pytest.importorskip("fastapi")

from fastapi import APIRouter, Depends, FastAPI, WebSocket  # noqa: E402

with warnings.catch_warnings():  # newer Starlette asks for httpx2; httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from servers import WORK_S, WORKER_HEADER, all_workers_up, from_workers  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fastlimit import FakeClock, SharedTable  # noqa: E402
from fastlimit.cli.servers import Server, free_port, gunicorn_argv  # noqa: E402
from fastlimit.starlette import StarletteLimiter  # noqa: E402


@pytest.fixture
def limiter(table_name):
    breaches = []
    lim = StarletteLimiter(store=SharedTable.open(table_name, capacity=4096),
                           on_breach=breaches.append)
    lim.breaches = breaches
    yield lim
    lim.store.close()


def fastapi_app(limiter):
    app = FastAPI()
    limiter.install(app)

    @app.post("/login", dependencies=[Depends(limiter.limit(
        "2/minute;3/day", deduct_when=lambda r: r.status_code == 401))])
    async def login(password: str = ""):
        if password != "right":
            from fastapi.responses import JSONResponse
            return JSONResponse({"ok": False}, status_code=401)
        return {"ok": True}

    router = APIRouter(prefix="/admin",
                       dependencies=[Depends(limiter.limit("2/hour", name="admin"))])

    @router.get("/one")
    async def one():
        return "1"

    @router.get("/two")
    async def two():
        return "2"

    app.include_router(router)

    @app.get("/by-tenant", dependencies=[Depends(limiter.limit(
        "1/hour", key=lambda request: request.headers.get("x-tenant")))])
    async def by_tenant():
        return "t"

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        async for _text in websocket.iter_text():
            decision = await limiter.hit_message(websocket, "3/minute", name="chat")
            await websocket.send_text("ok" if decision.allowed
                                      else f"slow down {decision.retry_after}")
    return app


def test_deduct_when_counts_only_failed_logins(limiter):
    c = TestClient(fastapi_app(limiter))
    assert [c.post("/login?password=right").status_code for _ in range(4)] == [200] * 4
    assert [c.post("/login").status_code for _ in range(3)] == [401, 401, 429]
    denied = c.post("/login")
    assert json.loads(denied.content)["error"]["code"] == "RATE_LIMITED"
    assert int(denied.headers["retry-after"]) >= 1
    assert len(limiter.breaches) == 2


def test_a_router_limit_covers_its_routes_with_headers(limiter):
    c = TestClient(fastapi_app(limiter))
    first = c.get("/admin/one")
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert [c.get(p).status_code for p in ("/admin/two", "/admin/one")] == [200, 429]


def test_a_key_callable_gets_the_request(limiter):
    c = TestClient(fastapi_app(limiter))
    assert [c.get("/by-tenant", headers={"x-tenant": "a"}).status_code
            for _ in range(2)] == [200, 429]
    assert c.get("/by-tenant", headers={"x-tenant": "b"}).status_code == 200


def test_exempt_when_may_take_the_request_or_nothing(limiter):
    app = FastAPI()
    limiter.install(app)
    calls = []

    @app.get("/a", dependencies=[Depends(limiter.limit(
        "1/hour", exempt_when=lambda request: request.headers.get("x-admin") == "1"))])
    async def a():
        return "a"

    @app.get("/b", dependencies=[Depends(limiter.limit(
        "1/hour", exempt_when=lambda: calls.append(1) or False))])  # slowapi's, no argument
    async def b():
        return "b"

    c = TestClient(app)
    admin = {"x-admin": "1"}
    assert [c.get("/a", headers=admin).status_code for _ in range(3)] == [200] * 3
    assert [c.get("/a").status_code for _ in range(2)] == [200, 429]
    assert [c.get("/b").status_code for _ in range(2)] == [200, 429]
    assert len(calls) == 2


def test_websocket_messages_share_one_bucket_across_connections(limiter):
    c = TestClient(fastapi_app(limiter))
    replies = []
    for _ in range(2):
        with c.websocket_connect("/ws") as ws:
            for _ in range(3):
                ws.send_text("hi")
                replies.append(ws.receive_text())
    assert replies[:3] == ["ok"] * 3
    assert replies[3:] == ["slow down 20"] * 3


def test_a_starlette_endpoint_decorated(limiter):
    @limiter.limit("1/hour")
    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hello", hello)])
    limiter.install(app)
    c = TestClient(app)
    assert [c.get("/hello").status_code for _ in range(2)] == [200, 429]


def test_disabled_counts_nothing(table_name):
    lim = StarletteLimiter(store=SharedTable.open(table_name, capacity=4096), enabled=False)
    c = TestClient(fastapi_app(lim))
    assert [c.get("/admin/one").status_code for _ in range(5)] == [200] * 5
    lim.store.close()


APP = textwrap.dedent(f"""
    import os, time
    from fastapi import Depends, FastAPI, Response
    from fastlimit import SharedTable
    from fastlimit.starlette import StarletteLimiter
    limiter = StarletteLimiter(store=SharedTable.open(os.environ["TEST_TABLE"]))
    app = FastAPI()
    limiter.install(app)

    @app.middleware("http")
    async def worker(request, call_next):
        response = await call_next(request)
        response.headers["{WORKER_HEADER}"] = str(os.getpid())
        return response

    @app.post("/login", dependencies=[Depends(limiter.limit("5/hour;7/day", name="login"))])
    async def login():
        # the worker's loop is blocked: the next connections go to other workers
        time.sleep({WORK_S})
        return "ok"

    @app.get("/healthz")
    async def healthz():
        time.sleep({WORK_S})
        return "ok"
""")


@pytest.mark.slow
def test_exact_across_four_uvicorn_workers(tmp_path, table_name):
    (tmp_path / "faapp.py").write_text(APP)
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    argv = [exe, "faapp:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "4",
            "--no-access-log"]
    with Server(argv, port, env=dict(os.environ, TEST_TABLE=table_name), cwd=str(tmp_path),
                log=str(tmp_path / "server.log")) as server:
        server.wait_for_children(4)
        all_workers_up(port, 4)
        replies, workers = from_workers(port, "POST", "/login", 12)
    assert len(workers) >= 2, "several workers answered"
    assert sorted(r.status for r in replies) == [200] * 5 + [429] * 7, server.log()
    assert {r.headers["x-ratelimit-limit"] for r in replies} <= {"5", "7"}  # the binding one


@pytest.mark.slow
def test_exact_across_four_gunicorn_uvicorn_workers(tmp_path, table_name):
    pytest.importorskip("uvicorn_worker")
    (tmp_path / "faapp.py").write_text(APP)
    port = free_port()
    argv = gunicorn_argv("faapp:app", port, workers=4,
                         options=["-k", "uvicorn_worker.UvicornWorker"])
    with Server(argv, port, env=dict(os.environ, TEST_TABLE=table_name), cwd=str(tmp_path),
                log=str(tmp_path / "server.log")) as server:
        server.wait_for_children(4)
        all_workers_up(port, 4)
        replies, workers = from_workers(port, "POST", "/login", 15)  # 3 x the 5/hour
    assert len(workers) >= 2, "several workers answered"
    assert sorted(r.status for r in replies) == [200] * 5 + [429] * 10, server.log()
    # the binding rate's fields: 5/hour, or 7/day when requests interleaved
    # between a request's two counts left it fewer; every denial shows 0 left
    assert {r.headers["x-ratelimit-limit"] for r in replies} <= {"5", "7"}
    assert {r.headers["x-ratelimit-remaining"] for r in replies if r.status == 429} == {"0"}
    assert not any("retry-after" in r.headers for r in replies if r.status == 200)
    denied = next(r for r in replies if r.status == 429)
    assert json.loads(denied.body) == {
        "success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}
    assert denied.headers["content-type"] == "application/json"
    assert 1 <= int(denied.headers["retry-after"]) <= 720  # a real server: the real clock


def test_the_default_table_is_named_after_the_application_module():
    lim = StarletteLimiter()
    try:
        assert lim.store.name == "starlette-test_starlette"
    finally:
        lim.store.unlink()
        lim.store.close()


def test_a_fake_clock_drives_the_view_limits(table_name):
    clock = FakeClock()
    lim = StarletteLimiter(store=SharedTable.open(table_name, capacity=4096), clock=clock)

    @lim.limit("2/hour")
    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hello", hello)])
    lim.install(app)
    c = TestClient(app)
    assert [c.get("/hello").status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(1800)  # half an hour: one more
    assert [c.get("/hello").status_code for _ in range(2)] == [200, 429]
    lim.store.close()


def test_exempt_paths_and_the_view_limits_header_style(table_name):
    lim = StarletteLimiter(store=SharedTable.open(table_name, capacity=4096),
                           default_limits=["1/hour"], exempt_paths=["/healthz", "/static/**"],
                           headers={"reset": "delta", "ietf": True})

    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/healthz", ok), Route("/static/{name}", ok),
                            Route("/login", ok)])
    lim.install(app)
    c = TestClient(app)
    assert [c.get("/healthz").status_code for _ in range(3)] == [200] * 3
    assert [c.get("/static/app.js").status_code for _ in range(3)] == [200] * 3
    first = c.get("/login")
    assert first.status_code == 200 and first.headers["x-ratelimit-reset"] == "3600"
    assert "ratelimit-policy" in first.headers, "the style asked for: IETF fields too"
    assert c.get("/static/../login").status_code == 429, "a respelled path is not exempt"
    lim.store.close()
