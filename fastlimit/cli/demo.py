"""``fastlimit demo``: a real gunicorn with several workers on 127.0.0.1,
protected by a policy (seed 000 by default), driven by a bounded load.

Each row of the report is one caller on one endpoint, from a loopback
address of its own (127.0.0.x), sending its requests at once from several
client threads on fresh connections, so every worker takes some.  What
should pass is computed first by the same middleware in this process with
the clock stopped; the server must admit exactly that, plus whatever the
clock refilled while the row ran (a 500/1m limit earns one request every
0.12 s).
"""

from __future__ import annotations

import glob
import importlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from fastlimit.cli.report import print_table_report, table_report
from fastlimit.cli.servers import Reply, Server, free_port, gunicorn_argv, request
from fastlimit.clock import FakeClock
from fastlimit.limiters.rate import NS_PER_S
from fastlimit.policy.config import load_file
from fastlimit.policy.overrides import Overrides
from fastlimit.policy.policy import Policy
from fastlimit.policy.spec import PolicySpec
from fastlimit.stores import table as table_mod
from fastlimit.stores.table import SharedTable
from fastlimit.web.wsgi import RateLimitMiddleware

__all__ = ["web_demo"]

APP = "fastlimit.examples.app"
THREADS = 8
WORK_MS = 1  # per request: a busy worker leaves the next connection to another


@dataclass
class Row:
    """One caller on one endpoint, and what happened to its requests."""

    caller: str
    method: str
    path: str
    headers: dict[str, str]
    source: str
    spoof: bool = False           # a different X-Forwarded-For on every request
    sent: int = 0
    expected: int = 0             # what passes with the clock stopped
    limit: str = "unlimited"      # the binding limit's rate
    interval_s: float = math.inf  # its emission interval: one more per this
    statuses: list[int] = field(default_factory=list)
    workers: set[str] = field(default_factory=set)
    elapsed_s: float = 0.0
    sample_ok: Reply | None = None
    sample_denied: Reply | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def admitted(self) -> int:
        return self.statuses.count(200)

    @property
    def denied(self) -> int:
        return self.statuses.count(429)

    def request_headers(self, i: int) -> dict[str, str]:
        if not self.spoof:
            return self.headers
        return {**self.headers, "X-Forwarded-For": f"198.51.100.{i % 250 + 1}"}

    def verdict(self) -> tuple[bool, str]:
        errors = len(self.statuses) - self.admitted - self.denied
        if errors:
            return False, f"{errors} requests failed"
        extra = self.admitted - self.expected
        if extra == 0:
            return True, "exact"
        refills = math.floor(self.elapsed_s / self.interval_s) + 1
        if 0 < extra <= refills:
            return True, (f"{self.expected} + {extra} refilled in {self.elapsed_s:.2f} s "
                          f"(1 per {self.interval_s:.3g} s)")
        return False, f"WRONG: expected {self.expected}"


def _concrete(pattern: str) -> tuple[str, str]:
    """A request matching a route pattern: ``* /a/{id}/**`` -> ``POST /a/demo/demo``."""
    method, _, path = pattern.partition(" ")
    segments = ["demo" if s.startswith("{") or s == "**" else s for s in path.split("/")]
    return ("POST" if method == "*" else method), "/".join(segments) or "/"


def plan(spec: PolicySpec) -> list[Row]:
    """The callers and endpoints worth showing for ``spec``."""
    rows: list[Row] = []

    def source() -> str:
        return f"127.0.0.{10 + len(rows)}"

    identities = spec.identities
    api = identities.get("api_key")
    if api is not None:
        if api.rate == "tier":
            for tier in spec.tiers.values():
                caller = f"{tier.name} key" + ("" if tier.api_access else
                                               " (no API access: as anonymous)")
                rows.append(Row(caller, "GET", "/v1/items",
                                {"X-API-Key": f"demo-{tier.name}-1"}, source()))
        else:
            tier_name = next(iter(spec.tiers), "KEY")
            rows.append(Row("API key", "GET", "/v1/items",
                            {"X-API-Key": f"demo-{tier_name}-1"}, source()))
    if "session" in identities:
        rows.append(Row("session", "GET", "/v1/items", {"Cookie": "session=demo"}, source()))
    if "token" in identities:
        rows.append(Row("token", "GET", "/v1/items",
                        {"Authorization": "Bearer tok_demo"}, source()))
    rows.append(Row("anonymous, spoofing X-Forwarded-For", "GET", "/v1/items", {}, source(),
                    spoof=True))
    # A signed-in caller, so the route's own per-IP limit is what binds.
    if "session" in identities:
        signed_in: tuple[str, dict[str, str]] = ("session", {"Cookie": "session=routes"})
    elif "token" in identities:
        signed_in = ("token", {"Authorization": "Bearer tok_routes"})
    elif api is not None:
        tiers = [t.name for t in spec.tiers.values() if t.api_access] or ["KEY"]
        signed_in = (f"{tiers[-1]} key", {"X-API-Key": f"demo-{tiers[-1]}-routes"})
    else:
        signed_in = ("anonymous", {})
    shown = [r for r in spec.routes if not r.dedicated][:1] + [
        r for r in spec.routes if r.dedicated][:1]
    for route in shown:
        method, path = _concrete(route.patterns[0])
        what = "dedicated per-IP bucket" if route.dedicated else "route limit per IP"
        rows.append(Row(f"{signed_in[0]}, {what}", method, path, signed_in[1], source()))
    return rows


def simulate(spec: PolicySpec, rows: Sequence[Row], cap: int) -> None:
    """Fill in what each row should get: the same middleware and policy in
    this process, on a private table, with the clock stopped."""
    example = importlib.import_module(APP)  # the app the server runs, not typed-checked here
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(line)

    with SharedTable.anonymous(capacity=max(4096, 8 * len(rows))) as table:
        policy = Policy(spec, store=table, clock=FakeClock(), overrides=Overrides(None))
        app = RateLimitMiddleware(example.plain_wsgi, policy,
                                  identify=example.make_identify(policy))
        for row in rows:
            passed, last = 0, None
            for i in range(cap):
                environ: dict[str, Any] = {
                    "REQUEST_METHOD": row.method, "PATH_INFO": row.path,
                    "REMOTE_ADDR": row.source, "QUERY_STRING": ""}
                for name, value in row.request_headers(i).items():
                    environ["HTTP_" + name.upper().replace("-", "_")] = value
                status.clear()
                body = app(environ, start_response)
                getattr(body, "close", lambda: None)()
                last = environ["fastlimit.decision"]
                if not status[0].startswith("200"):
                    break
                passed += 1
            checks, binding = getattr(last, "checks", ()), getattr(last, "binding", None)
            if binding is not None:
                rate = checks[binding].limiter.rate
                row.limit = str(rate)
                row.interval_s = rate.period_ns / rate.limit / NS_PER_S
            if passed == cap:  # no denial within the cap: a short row shows it
                row.sent = row.expected = min(cap, 50)
            else:
                row.expected = passed
                row.sent = min(cap, passed + max(5, math.ceil(passed / 5)))
        policy.close()


def drive(port: int, row: Row) -> None:
    """Send the row's requests, THREADS at a time, each on a new connection."""
    path = f"{row.path}?work_ms={WORK_MS}"

    def one(i: int) -> Reply:
        return request(port, row.method, path, headers=row.request_headers(i), source=row.source)

    start = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        replies = list(pool.map(one, range(row.sent)))
    row.elapsed_s = time.monotonic() - start
    for r in replies:
        row.statuses.append(r.status)
        if r.status == 200:
            row.workers.add(r.headers.get("x-worker-pid", "?"))
            row.sample_ok = row.sample_ok or r
        elif r.status == 429:
            row.sample_denied = row.sample_denied or r


_RATE_FIELDS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                "RateLimit-Policy", "RateLimit", "Retry-After")


def _show_headers(reply: Reply) -> str:
    return "  ".join(f"{name}: {reply.headers[name.lower()]}" for name in _RATE_FIELDS
                     if name.lower() in reply.headers)


def report(rows: Sequence[Row], workers: int, out: TextIO) -> bool:
    width = max(len(r.caller) for r in rows)
    ep = max(len(r.endpoint) for r in rows)
    print(f"\n{'caller':<{width}}  {'endpoint':<{ep}}  {'limit':>9}  {'sent':>5}  "
          f"{'admitted':>8}  {'429':>5}  {'workers':>7}  verdict", file=out)
    good = True
    for r in rows:
        ok, verdict = r.verdict()
        good &= ok
        print(f"{r.caller:<{width}}  {r.endpoint:<{ep}}  {r.limit:>9}  {r.sent:>5}  "
              f"{r.admitted:>8}  {r.denied:>5}  {len(r.workers):>7}  {verdict}", file=out)
    shown = [r for r in rows if r.sample_ok and r.sample_denied]
    sample = next((r for r in shown if r.caller.endswith(" key")), shown[0] if shown else None)
    if sample is not None:
        assert sample.sample_ok is not None and sample.sample_denied is not None
        print(f"\nHeaders seen by {sample.caller} on {sample.endpoint}:", file=out)
        print(f"  200  {_show_headers(sample.sample_ok)}", file=out)
        print(f"  429  {_show_headers(sample.sample_denied)}", file=out)
        print(f"       {sample.sample_denied.body.decode(errors='replace')}", file=out)
    limited = [r for r in rows if r.expected < r.sent]
    if limited:
        r = max(limited, key=lambda r: r.expected)
        print(f"\n{'Every' if good else 'Not every'} limit held across the {workers} workers.  "
              f"A limiter per process (in memory) would let {r.caller} through "
              f"{r.expected} times in each worker: up to {workers * r.expected} in all.", file=out)
    return good


def _wait_until_all_answer(port: int, workers: int, timeout: float = 30.0) -> None:
    """Poll the (unlimited) health check until every worker has answered:
    then none is still importing when the rows start."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(workers) as pool:
        while len(seen) < workers and time.monotonic() < deadline:
            replies = pool.map(lambda _: request(port, "GET", "/healthz?work_ms=5"),
                               range(2 * workers))
            seen.update(r.headers.get("x-worker-pid", "?") for r in replies)


def _cleanup(table: str) -> None:
    base = os.path.join(table_mod.shm_dir(), f"fastlimit.{table}")
    # and the quota files its policies counted in (one per policy)
    quotas = glob.glob(os.path.join(glob.escape(table_mod.state_dir()),
                                    f"{glob.escape(os.path.basename(base))}.*.quotas.tbl"))
    for path in (base, *table_mod.beside(base), *quotas):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def web_demo(policy_path: str | None = None, *, workers: int = 4, max_requests: int = 600,
             out: TextIO | None = None, keep_table: bool = False) -> int:
    """Run the demo; 0 when every row got exactly what the policy allows.
    The table's statistics are printed at the end; ``keep_table`` keeps it."""
    out = out or sys.stdout
    if policy_path is None:
        policy_path = str(importlib.import_module(APP).SEED000)
    policy_path = os.path.abspath(policy_path)
    spec = load_file(policy_path)
    rows = plan(spec)
    simulate(spec, rows, max_requests)
    table = f"demo-{os.getpid()}"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastlimit-demo-") as tmp:
        env = dict(os.environ, FASTLIMIT_POLICY=policy_path, FASTLIMIT_TABLE=table,
                   FASTLIMIT_TRUSTED_PROXIES="")
        # Started from an empty directory: gunicorn puts its working
        # directory first on sys.path, and a source checkout there would
        # shadow the installed package.
        server = Server(gunicorn_argv(f"{APP}:wsgi", port, workers=workers),
                        port, env=env, cwd=tmp, log=os.path.join(tmp, "gunicorn.log"))
        pid = 0
        try:
            server.start()
            pid = server.pid
            pids = server.wait_for_children(workers)
            _wait_until_all_answer(port, workers)
            print(f"gunicorn (pid {server.pid}) serves {APP}:wsgi with {workers} sync workers "
                  f"(pids {', '.join(map(str, pids))}) on 127.0.0.1:{port}.\n"
                  f"Policy {os.path.basename(policy_path)} ({spec.name!r}); every worker shares "
                  f"the table {table_mod.shm_dir()}/fastlimit.{table}.\n"
                  f"Each row: one caller from its own 127.0.0.x address, {THREADS} client "
                  f"threads at once, a new connection per request.", file=out)
            for row in rows:
                drive(port, row)
        except BaseException:
            log = server.log()
            if log:
                print(f"\ngunicorn's log:\n{log}", file=sys.stderr)
            raise
        finally:
            server.stop()
            try:
                reports = []
                for name in (table, f"{table}.anonymous"):  # the per-IP keys' table too
                    with SharedTable.attach(name) as t:
                        reports.append((name, table_report(t)))
            finally:
                if not keep_table:
                    _cleanup(table)
    good = report(rows, workers, out)
    for name, stats in reports:
        print(f"\nThe workers' checks, as `fastlimit stats {name}` reports them:", file=out)
        print_table_report(stats, out)
    if keep_table:
        print(f"\nStopped gunicorn (pid {pid}); the table is kept: `fastlimit stats {table}`, "
              f"then `fastlimit rm {table}`.", file=out)
    else:
        print(f"\nStopped gunicorn (pid {pid}) and removed the table {table}.", file=out)
    return 0 if good else 1
