"""What the middleware costs in a real server: requests per second of the
same application with and without fastlimit's middleware, in one run.

The application is ``fastlimit.examples.app`` (``plain_wsgi`` / ``wsgi``,
``plain_asgi`` / ``asgi``: a 200 with a tiny JSON body), served on 127.0.0.1
by each server configuration below, with and without the middleware
alternately, for several rounds; the load is ``wrk`` when installed (else a
Python client on threads, which then is the bottleneck).  Every request
carries an API key of a tier whose limit is never reached, under seed 000's
policy (its routes, tiers and headers), so each one runs the whole path:
identity from a header, route lookup, one GCRA hit in the shared table,
three headers added.  Reported: median requests/s of each, the overhead in
percent; the server's CPU time per request (its processes' user + system
time over the requests served), which other load on the machine disturbs
far less than requests/s; and the middleware's own cost per request
measured in process.

A third variant, the plain application sending the same three headers
itself (``bench/_floor_app.py``), separates what the server charges for
three more headers (gunicorn and h11 check each one) from what fastlimit
costs: "over +headers" is the middleware against that floor.

Usage: python bench/middleware_bench.py [--rounds 5] [--duration 3] [--connections 32]
       [--servers gunicorn-sync,gunicorn-uvicorn-worker,uvicorn] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib.resources import files

from fastlimit.cli.servers import Server, free_port, gunicorn_argv, request
from fastlimit.stores import table as table_mod

APP = "fastlimit.examples.app"
KEY = "demo-BENCH-1"
# Seed 000 with one more tier, whose limit no run comes near.
POLICY = (files("fastlimit.examples") / "seed000.toml").read_text() + """
[tiers.BENCH]
requests_per_minute = 100000000
"""


def _uvicorn(app: str, port: int, workers: int) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    return [exe, app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--no-access-log", "--log-level", "warning"]


# The applications compared, as (module, WSGI name, ASGI name).
VARIANTS = {
    "plain": (APP, "plain_wsgi", "plain_asgi"),
    # the plain app adding the same three headers itself: the floor
    "headers": ("_floor_app", "headers_wsgi", "headers_asgi"),
    "middleware": (APP, "wsgi", "asgi"),
    # the same, its credentials looked up in dicts (bench/_keyed_app.py)
    "keyed": ("_keyed_app", "wsgi", "asgi"),
}
COMPARED = ("plain", "headers", "middleware")  # what this benchmark runs


def _app(variant: str, asgi: bool) -> str:
    module, wsgi_name, asgi_name = VARIANTS[variant]
    return f"{module}:{asgi_name if asgi else wsgi_name}"


SERVERS = {
    "gunicorn-sync": lambda variant, port, n: gunicorn_argv(
        _app(variant, False), port, workers=n),
    "gunicorn-gthread": lambda variant, port, n: gunicorn_argv(
        _app(variant, False), port, workers=n, options=["-k", "gthread", "--threads", "4"]),
    # uvicorn's own --workers supervisor answers every request on loopback
    # ~40 ms late here (even a hello-world app), so only its single-process
    # mode is measured; gunicorn with the uvicorn worker runs several.
    "uvicorn": lambda variant, port, n: _uvicorn(_app(variant, True), port, 1),
    "gunicorn-uvicorn-worker": lambda variant, port, n: gunicorn_argv(
        _app(variant, True), port, workers=n, options=["-k", "uvicorn_worker.UvicornWorker"]),
}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server and its workers so far."""
    total = 0
    for pid in [server.pid, *server.children()]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


class Run:
    """One load run: requests/s, and the server's CPU time per request
    (which other processes on the machine disturb much less)."""

    def __init__(self, rps: float, requests: int, cpu_s: float) -> None:
        self.rps, self.requests, self.cpu_s = rps, requests, cpu_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(1, self.requests) * 1e6


PATH = "/v1/items"


def wrk(port: int, duration: float, connections: int) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx responses) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "-H", f"X-API-Key: {KEY}",
         f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if errors:
        print(f"    wrk: {errors.group(0)}", file=sys.stderr)
    return rps, total, int(bad.group(1)) if bad else 0


def python_client(port: int, duration: float, connections: int) -> tuple[float, int, int]:
    """The fallback load: `connections` threads, a new connection per request."""
    counts = [0] * connections
    bad = [0] * connections
    stop = time.monotonic() + duration

    def run(i: int) -> None:
        while time.monotonic() < stop:
            r = request(port, "GET", PATH, headers={"X-API-Key": KEY})
            counts[i] += 1
            bad[i] += r.status != 200

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start), sum(counts), sum(bad)


def in_process(policy_path: str, n: int = 20000) -> dict[str, float]:
    """µs per request the middleware adds, called directly (no server)."""
    os.environ["FASTLIMIT_POLICY"] = policy_path
    os.environ["FASTLIMIT_TABLE"] = f"bench-mw-{uuid.uuid4().hex[:8]}"
    import importlib

    app = importlib.import_module(APP)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/items", "QUERY_STRING": "",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_X_API_KEY": KEY}
    scope = {"type": "http", "method": "GET", "path": "/v1/items", "query_string": b"",
             "client": ("127.0.0.1", 5000), "headers": [(b"x-api-key", KEY.encode())]}

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        pass

    def wsgi_us(handler: object) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                body = handler(dict(environ), start_response)  # type: ignore[operator]
                for _chunk in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            runs.append((time.perf_counter() - t0) / n * 1e6)
        return statistics.median(runs)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        pass

    def asgi_us(handler: object) -> float:
        async def loop() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                await handler(dict(scope), receive, send)  # type: ignore[operator]
            return (time.perf_counter() - t0) / n * 1e6

        return statistics.median(asyncio.run(loop()) for _ in range(5))

    from fastlimit.web import RequestView

    gate = app.wsgi.gate

    def loop_us(fn: object) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()  # type: ignore[operator]
            runs.append((time.perf_counter() - t0) / n * 1e6)
        return statistics.median(runs)

    try:
        return {
            "wsgi": wsgi_us(app.wsgi) - wsgi_us(app.plain_wsgi),
            "asgi": asgi_us(app.asgi) - asgi_us(app.plain_asgi),
            "identify": loop_us(lambda: gate.identify(RequestView.from_environ(environ))),
            "check": loop_us(lambda: gate.check(RequestView.from_environ(environ)).headers),
        }
    finally:
        _remove_table(os.environ["FASTLIMIT_TABLE"])


def _remove_table(name: str) -> None:
    """The table and the overrides files a Policy keeps beside it."""
    base = os.path.join(table_mod.shm_dir(), f"fastlimit.{name}")
    for path in (base, f"{base}.overrides.json", f"{base}.overrides.json.gen"):
        if os.path.exists(path):
            os.unlink(path)


def server_env(tmp: str, **extra: str) -> tuple[str, str, dict[str, str]]:
    """(policy file, table name, environment) for servers of the example
    app: the policy written in ``tmp``, a fresh table, this directory on
    the path (for ``_floor_app``)."""
    policy_path = os.path.join(tmp, "policy.toml")
    with open(policy_path, "w") as f:
        f.write(POLICY)
    table = f"bench-{uuid.uuid4().hex[:8]}"
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, FASTLIMIT_POLICY=policy_path, FASTLIMIT_TABLE=table, **extra,
               PYTHONPATH=os.pathsep.join(filter(None, [bench_dir, os.environ.get("PYTHONPATH")])))
    return policy_path, table, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-ms", type=int, default=0,
                        help="make each request take N ms in the application (blocking, as "
                             "CPU-bound work would): the overhead for a less trivial app")
    parser.add_argument("--servers", default="gunicorn-sync,gunicorn-uvicorn-worker,uvicorn",
                        help=f"comma-separated, of: {', '.join(SERVERS)}")
    args = parser.parse_args()
    global PATH
    if args.work_ms:
        PATH = f"/v1/items?work_ms={args.work_ms}"
    load = wrk if shutil.which("wrk") else python_client
    client = f"wrk -t2 -c{args.connections}" if load is wrk else "Python threads"
    print(f"{datetime.date.today()}  {platform.python_implementation()} "
          f"{platform.python_version()}  {os.cpu_count()} cores  load: {client}  "
          f"{args.rounds} rounds x {args.duration:g} s, alternating  "
          f"{args.workers} workers  app work per request: {args.work_ms} ms")
    with tempfile.TemporaryDirectory(prefix="fastlimit-bench-") as tmp:
        policy_path, table, env = server_env(tmp)
        print(f"\n{'server':<24} {'req/s: plain':>12} {'+headers':>9} {'middleware':>11}"
              f" {'overhead':>9} {'over +headers':>14}   {'server CPU/request: plain':>25}"
              f" {'+headers':>9} {'middleware':>11}")
        try:
            for name in args.servers.split(","):
                servers = {}
                for variant in COMPARED:
                    port = free_port()
                    argv = SERVERS[name](variant, port, args.workers)
                    servers[variant] = Server(argv, port, env=env, cwd=tmp,
                                              log=os.path.join(tmp, f"{name}-{variant}.log"))
                try:
                    for server in servers.values():
                        server.start()
                        if name != "uvicorn":
                            server.wait_for_children(args.workers)
                        load(server.port, 1.0, args.connections)  # warm up every worker
                    results: dict[str, list[Run]] = {variant: [] for variant in COMPARED}
                    for _ in range(args.rounds):
                        for variant, server in servers.items():
                            cpu0 = cpu_seconds(server)
                            rps, total, bad = load(server.port, args.duration, args.connections)
                            cpu = cpu_seconds(server) - cpu0
                            if bad:
                                raise SystemExit(f"{name} {variant}: {bad} responses were not 200")
                            results[variant].append(Run(rps, total, cpu))
                finally:
                    for server in servers.values():
                        server.stop()
                rps = {k: statistics.median(r.rps for r in v) for k, v in results.items()}
                cpu = {k: statistics.median(r.cpu_us for r in v) for k, v in results.items()}
                print(f"{name:<24} {rps['plain']:>12,.0f} {rps['headers']:>9,.0f}"
                      f" {rps['middleware']:>11,.0f}"
                      f" {(1 - rps['middleware'] / rps['plain']) * 100:>8.1f}%"
                      f" {(1 - rps['middleware'] / rps['headers']) * 100:>13.1f}%"
                      f"   {cpu['plain']:>22.1f} µs {cpu['headers']:>6.1f} µs"
                      f" {cpu['middleware']:>8.1f} µs")
                for variant in COMPARED:
                    print(f"    {variant} rounds: "
                          + ", ".join(f"{r.rps:,.0f}/s {r.cpu_us:.0f} µs"
                                      for r in results[variant]))
        finally:
            _remove_table(table)
        costs = in_process(policy_path)
        print(f"\nin process (hot caches), per request: the middleware adds {costs['wsgi']:.1f} µs "
              f"(WSGI), {costs['asgi']:.1f} µs (ASGI).  Of the request check "
              f"({costs['check']:.1f} µs with its headers), the request view and identify "
              f"take {costs['identify']:.1f} µs")


if __name__ == "__main__":
    main()
