"""Instructions per request in a real server, under callgrind: what the
middleware costs, counted rather than timed, for a host too noisy for
requests/s (bench/MIDDLEWARE.md).

Each server of ``middleware_bench`` runs under ``valgrind --tool=callgrind``
with one worker, serving in turn three variants of ``middleware_bench``:
the plain application, the plain application sending the same three
headers itself (the floor: what the server charges for three more headers),
and the application behind the middleware, its credentials looked up in
dicts as a real application's are (``bench/_keyed_app.py``: the example's
own look-up parses made-up keys, which would count the application's work
as fastlimit's).  After a warm-up the counters
of the server's own processes (its PID and its workers', never another
callgrind run on the machine) are zeroed, N requests are sent one at a
time (keep-alive; gunicorn sync: a connection each), and those counters
dumped: the instructions the serving process executed, divided by N.
Instructions are not time (cache misses and branch mispredictions are not
in them), but they vary far less from run to run: ~2% here, mostly the
server's idle loop running while the counters are zeroed and dumped, a
fixed cost that 1000 requests spread thin (100 do not).

Two kinds of traffic (``--traffic``):

- ``one-key``: every request ``GET /v1/items`` with one API key, from one
  address: every per-request memory of the server, the application and
  fastlimit hits.
- ``realistic``: what a public API sees, each request a caller never seen
  before: half of them API keys (``demo-BENCH-<n>``, a new n each time) on
  ``/v1/items/<n>``, a fifth sessions on ``/v1/projects/<n>/files``, a tenth
  anonymous callers from new addresses, a tenth logins from a few
  addresses (denied after 5 a minute: 429s) and a tenth keys of a tier
  without API access (answered as anonymous, per address: denials too).
  Addresses come in ``X-Forwarded-For`` from 127.0.0.1, a trusted proxy,
  as behind a load balancer; every variant gets the same requests.

Usage: python bench/server_instructions.py [--requests 1000]
       [--servers gunicorn-sync,gunicorn-uvicorn-worker,uvicorn]
       [--traffic one-key,realistic]
Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile

from middleware_bench import KEY, SERVERS, _remove_table, server_env

from fastlimit.cli.servers import Server, free_port

Request = tuple[str, str, dict[str, str]]  # method, path, headers


def one_key(i: int) -> Request:
    return "GET", "/v1/items", {"X-API-Key": KEY}


def realistic(i: int) -> Request:
    """Request ``i`` of the realistic traffic (see the module docs)."""
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    kind = i % 10
    if kind < 5:
        return "GET", f"/v1/items/{i}", {"X-API-Key": f"demo-BENCH-{i}", "X-Forwarded-For": ip}
    if kind < 7:
        return "GET", f"/v1/projects/{i}/files", {"Cookie": f"session=u{i}",
                                                   "X-Forwarded-For": ip}
    if kind == 7:
        return "GET", "/v1/items", {"X-Forwarded-For": ip}
    few = f"10.255.0.{i % 4}"
    if kind == 8:
        return "POST", "/auth/session/login", {"Content-Length": "0", "X-Forwarded-For": few}
    return "GET", "/v1/items", {"X-API-Key": f"demo-FREE-{i}", "X-Forwarded-For": few}


TRAFFIC = {"one-key": one_key, "realistic": realistic}
# the plain app, the floor, and the app behind the middleware with its
# credentials in dicts (bench/_keyed_app.py)
VARIANTS = ("plain", "headers", "keyed")


def _requests(port: int, traffic: str, first: int, n: int) -> dict[int, int]:
    """Send requests ``first`` to ``first + n`` of ``traffic``; the count of each status."""
    make = TRAFFIC[traffic]
    statuses: dict[int, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(first, first + n):
        method, path, headers = make(i)
        conn.request(method, path, headers=headers)
        reply = conn.getresponse()
        reply.read()
        if reply.status not in (200, 429):
            raise SystemExit(f"port {port}: answered {reply.status} to {method} {path}")
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
    return statuses


WARM_UP = 200


def _callgrind(command: str, pids: list[int]) -> None:
    """``callgrind_control -z`` / ``-d`` for these processes only: without a
    PID it would zero or dump every callgrind run on the machine."""
    for pid in pids:
        subprocess.run(["callgrind_control", command, str(pid)], capture_output=True,
                       check=False)


def measure(server_name: str, variant: str, traffic: str, n: int, env: dict[str, str],
            tmp: str) -> tuple[int, dict[int, int]]:
    """Instructions per request of one server serving one variant, and the
    statuses it answered."""
    out = os.path.join(tmp, f"cg-{server_name}-{variant}-{traffic}")
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={out}.%p", *SERVERS[server_name](variant, port, 1)]
    server = Server(argv, port, env=env, cwd=tmp, log=os.path.join(tmp, f"{out}.log"))
    try:
        server.start(timeout=600)
        # warm up (imports, the first table slots) on requests the run does not repeat
        _requests(port, traffic, n, WARM_UP)
        pids = [server.pid, *server.children()]
        _callgrind("-z", pids)
        statuses = _requests(port, traffic, 0, n)
        _callgrind("-d", pids)
    finally:
        server.stop(timeout=120)
    # One dump per process dumped (out.<pid>.<n>): the serving one is the
    # busiest (gunicorn's master only wakes once a second).
    counts = []
    for dump in glob.glob(f"{out}.*.*"):
        if dump.endswith(".log"):
            continue
        with open(dump, errors="replace") as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if found:
            counts.append(int(found.group(1)))
    if not counts:
        raise SystemExit(f"{server_name} {variant}: no callgrind dump")
    return max(counts) // n, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--servers", default="gunicorn-sync,gunicorn-uvicorn-worker,uvicorn")
    parser.add_argument("--traffic", default="one-key,realistic",
                        help=f"comma-separated, of: {', '.join(TRAFFIC)}")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="fastlimit-ins-") as tmp:
        _, table, env = server_env(tmp, OPENBLAS_NUM_THREADS="1",
                                   FASTLIMIT_TRUSTED_PROXIES="127.0.0.1",
                                   BENCH_CALLERS=str(args.requests + WARM_UP))
        print(f"instructions per request ({args.requests} requests, 1 worker)")
        print(f"{'server':<24} {'traffic':<10} {'plain':>9} {'+headers':>9} {'middleware':>11} "
              f"{'headers cost':>13} {'middleware cost':>16} {'over +headers':>14}  statuses")
        try:
            for name in args.servers.split(","):
                for traffic in args.traffic.split(","):
                    runs = {v: measure(name, v, traffic, args.requests, env, tmp)
                            for v in VARIANTS}
                    plain, floor, mw = (runs[v][0] for v in VARIANTS)
                    answered = sorted(runs["keyed"][1].items())
                    statuses = " ".join(f"{k}: {v}" for k, v in answered)
                    print(f"{name:<24} {traffic:<10} {plain:>9,} {floor:>9,} {mw:>11,} "
                          f"{(floor - plain) / plain * 100:>12.1f}% "
                          f"{(mw - plain) / plain * 100:>15.1f}% "
                          f"{(mw - floor) / floor * 100:>13.1f}%  {statuses}", flush=True)
        finally:
            _remove_table(table)


if __name__ == "__main__":
    sys.exit(main())
