"""The middleware in real multi-worker servers on 127.0.0.1: gunicorn (sync,
gthread, with and without --preload), gunicorn with the uvicorn worker, and
``uvicorn --workers``, all serving fastlimit.examples.app over one named
table.  Limits are per hour, so nothing refills while a test runs."""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import Server, free_port
from sfv import parse_list

from fastlimit.cli.servers import gunicorn_argv, request
from fastlimit.stores import table as table_mod

pytestmark = pytest.mark.slow

POLICY = """
[policy]
name = "e2e"
[store]
capacity = 4096
[headers]
reset = "delta"
ietf = true
[identities.api_key]
name = "api"
rate = "tier"
[identities.anonymous]
rate = "10/1h"
[tiers.GOLD]
rate = "25/1h"
"""
GOLD_LIMIT, ANONYMOUS_LIMIT = 25, 10
DENIED = {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}}
APP = "fastlimit.examples.app"


def _uvicorn(port, workers):
    exe = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    # uvicorn itself rewrites the client address from X-Forwarded-For for
    # peers in --forwarded-allow-ips (default 127.0.0.1): off, so the
    # middleware's own trusted_proxies decide.
    return [exe, f"{APP}:asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--no-proxy-headers", "--no-access-log"]


SERVERS = {  # kind: (workers, command line for a port)
    "gunicorn-sync": (3, lambda port: gunicorn_argv(f"{APP}:wsgi", port, workers=3)),
    "gunicorn-sync-preload": (3, lambda port: gunicorn_argv(
        f"{APP}:wsgi", port, workers=3, options=["--preload"])),
    "gunicorn-gthread": (3, lambda port: gunicorn_argv(
        f"{APP}:wsgi", port, workers=3, options=["-k", "gthread", "--threads", "4"])),
    "gunicorn-uvicorn-worker": (2, lambda port: gunicorn_argv(
        f"{APP}:asgi", port, workers=2,
        options=["-k", "uvicorn_worker.UvicornWorker", "--forwarded-allow-ips", ""])),
    "uvicorn-workers": (2, lambda port: _uvicorn(port, workers=2)),
}


class Deployment:
    """A server of one kind with its own table, policy file and log."""

    def __init__(self, kind, tmp_path, argv_of=None, workers=3):
        if argv_of is None:
            workers, argv_of = SERVERS[kind]
        self.workers = workers
        self.table = f"test-e2e-{uuid.uuid4().hex[:10]}"
        policy = tmp_path / "policy.toml"
        policy.write_text(POLICY)
        env = dict(os.environ, FASTLIMIT_POLICY=str(policy), FASTLIMIT_TABLE=self.table,
                   FASTLIMIT_TRUSTED_PROXIES="127.0.0.2")
        self.port = free_port()
        argv = argv_of(self.port)
        self.server = Server(argv, self.port, env=env, cwd=str(tmp_path),
                             log=str(tmp_path / f"{kind}.log"))

    def __enter__(self):
        self.server.start()
        try:
            self.wait_for_workers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_for_workers(self, besides=()):
        self.server.wait_for_children(self.workers, besides=besides)

    def __exit__(self, *exc):
        self.server.stop()
        base = os.path.join(table_mod.shm_dir(), f"fastlimit.{self.table}")
        for path in (base, f"{base}.overrides.json", f"{base}.overrides.json.gen",
                     f"{base}.anonymous"):
            if os.path.exists(path):
                os.unlink(path)

    def get(self, path="/v1/items", headers=None, source="127.0.0.1"):
        return request(self.port, "GET", path, headers=headers, source=source)

    def many(self, n, path="/v1/items", headers=None, source="127.0.0.1", threads=8):
        """n requests from `threads` concurrent clients, each on a new connection."""
        def one(i):
            h = headers(i) if callable(headers) else headers
            return self.get(path, h, source)

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(n)))


@pytest.fixture(scope="module", params=list(SERVERS))
def deployment(request, tmp_path_factory):
    with Deployment(request.param, tmp_path_factory.mktemp(request.param)) as d:
        yield d


def _admitted(replies):
    return [r for r in replies if r.status == 200]


def test_a_key_gets_exactly_its_limit_across_workers(deployment):
    # Which worker takes a connection is the kernel's choice: 5 ms of work
    # per request keeps a worker busy so the others take part, and a round
    # that one worker happened to serve alone is repeated with a new key.
    served_by: set[str] = set()
    for round_ in range(12):  # the kernel may hand one worker a few rounds in a row
        replies = deployment.many(GOLD_LIMIT + 15, "/v1/items?work_ms=5",
                                  headers={"X-API-Key": f"demo-GOLD-r{round_}"})
        admitted = _admitted(replies)
        assert sorted(r.status for r in replies) == [200] * GOLD_LIMIT + [429] * 15
        # (exactly GOLD_LIMIT admitted above: no two workers spent one unit.
        # The remaining counts need not all differ: each worker reads its
        # clock before its CAS, so two racing hits can see one count.)
        assert all(0 <= int(r.headers["x-ratelimit-remaining"]) < GOLD_LIMIT for r in admitted)
        served_by = {r.headers["x-worker-pid"] for r in admitted}
        if len(served_by) >= 2:
            break
    assert len(served_by) >= 2, f"one worker answered every round: {served_by}"


def test_headers_on_200_and_429(deployment):
    key = {"X-API-Key": "demo-GOLD-2"}
    first = deployment.get(headers=key)
    assert first.status == 200 and json.loads(first.body) == {"ok": True}
    assert first.headers["x-ratelimit-limit"] == str(GOLD_LIMIT)
    assert first.headers["x-ratelimit-remaining"] == str(GOLD_LIMIT - 1)
    assert 0 < int(first.headers["x-ratelimit-reset"]) <= 144  # one unit: 3600/25 s
    assert parse_list(first.headers["ratelimit-policy"]) == [("api", {"q": 25, "w": 3600})]
    assert "retry-after" not in first.headers
    replies = deployment.many(GOLD_LIMIT, headers=key)
    denied = [r for r in replies if r.status == 429]
    assert len(denied) == 1
    r = denied[0]
    assert json.loads(r.body) == DENIED
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(r.headers["x-ratelimit-reset"]) <= 3600
    [(name, params)] = parse_list(r.headers["ratelimit"])
    assert name == "api" and params["r"] == 0
    retry_after = int(r.headers["retry-after"])
    assert params["t"] <= retry_after <= math.ceil(3600 / GOLD_LIMIT)
    assert "x-worker-pid" not in r.headers  # answered by the middleware, not the app


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(deployment):
    spoofed = deployment.many(ANONYMOUS_LIMIT + 5,
                              headers=lambda i: {"X-Forwarded-For": f"198.51.100.{i}"})
    assert len(_admitted(spoofed)) == ANONYMOUS_LIMIT  # all counted against 127.0.0.1
    # 127.0.0.2 is a trusted proxy: the client it names gets a bucket of its own
    proxied = deployment.many(ANONYMOUS_LIMIT + 5, headers={"X-Forwarded-For": "203.0.113.9"},
                              source="127.0.0.2")
    assert len(_admitted(proxied)) == ANONYMOUS_LIMIT
    other = deployment.get(headers={"X-Forwarded-For": "203.0.113.10"}, source="127.0.0.2")
    assert other.status == 200


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4(deployment):
    # what a trusted proxy reports: 30 addresses of one /64 are one client
    one_64 = deployment.many(ANONYMOUS_LIMIT + 20, headers=lambda i: {
        "X-Forwarded-For": f"2001:db8:15:1:{i:x}::{i + 1:x}"}, source="127.0.0.2")
    assert len(_admitted(one_64)) == ANONYMOUS_LIMIT
    assert deployment.get(headers={"X-Forwarded-For": "2001:db8:15:2::1"},
                          source="127.0.0.2").status == 200
    mapped = [deployment.get(headers={"X-Forwarded-For": ip}, source="127.0.0.2").status
              for ip in ["::ffff:192.0.2.44", "192.0.2.44"] * 8]
    assert mapped == [200] * ANONYMOUS_LIMIT + [429] * 6


def test_worker_restarts_by_max_requests_keep_the_state(tmp_path):
    argv_of = lambda port: gunicorn_argv(  # noqa: E731
        f"{APP}:wsgi", port, workers=3,
        options=["--max-requests", "4", "--max-requests-jitter", "0"])
    with Deployment("max-requests", tmp_path, argv_of) as d:
        replies = d.many(GOLD_LIMIT + 10, headers={"X-API-Key": "demo-GOLD-3"}, threads=4)
        admitted = _admitted(replies)
        assert len(admitted) == GOLD_LIMIT
        # 25 answers at 4 per worker life: at least 7 worker processes took part
        assert len({r.headers["x-worker-pid"] for r in admitted}) >= 7


def test_killed_workers_are_replaced_and_the_state_stays(tmp_path):
    argv_of = lambda port: gunicorn_argv(  # noqa: E731
        f"{APP}:wsgi", port, workers=3, options=["--preload"])
    key = {"X-API-Key": "demo-GOLD-4"}
    with Deployment("preload-kill", tmp_path, argv_of) as d:
        before = d.many(10, headers=key)
        assert len(_admitted(before)) == 10
        old = set(d.server.children())
        assert len(old) == 3
        for pid in old:
            os.kill(pid, 9)  # the server's own workers, started by this test
        d.wait_for_workers(besides=old)  # the arbiter forks replacements
        after = d.many(GOLD_LIMIT, headers=key)
        assert not {r.headers.get("x-worker-pid") for r in after} & {str(p) for p in old}
        assert len(_admitted(after)) == GOLD_LIMIT - 10
        assert int(_admitted(after)[0].headers["x-ratelimit-limit"]) == GOLD_LIMIT
