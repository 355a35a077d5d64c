"""Instructions per request in a real server, under callgrind: what the
middleware costs, counted rather than timed, for a host too noisy for
requests/s (bench/MIDDLEWARE.md).

Each server of ``middleware_bench`` runs under ``valgrind --tool=callgrind``
with one worker, serving in turn the three variants of ``middleware_bench``:
the plain application, the plain application sending the same three
headers itself (the floor: what the server charges for three more headers),
and the application behind the middleware.  After a warm-up the counters
are zeroed, N keep-alive requests (gunicorn sync: a connection each) are
sent one at a time, and the counters dumped: the instructions the serving
process executed, divided by N.  Instructions are not time (cache misses
and branch mispredictions are not in them), but they vary far less from
run to run: ~2% here, mostly gunicorn's idle loop running while the
counters are zeroed and dumped, a fixed cost that 1000 requests spread
thin (100 do not).

Usage: python bench/server_instructions.py [--requests 1000]
       [--servers gunicorn-sync,gunicorn-uvicorn-worker,uvicorn]
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
import time

from middleware_bench import KEY, SERVERS, VARIANTS, _remove_table, server_env

from fastlimit.cli.servers import Server, free_port


def _requests(port: int, n: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        conn.request("GET", path, headers={"X-API-Key": KEY})
        reply = conn.getresponse()
        reply.read()
        if reply.status != 200:
            raise SystemExit(f"port {port}: answered {reply.status}, not 200")


def measure(server_name: str, variant: str, n: int, env: dict[str, str], tmp: str,
            path: str) -> int:
    """Instructions per request of one server serving one variant."""
    out = os.path.join(tmp, f"cg-{server_name}-{variant}")
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={out}.%p", *SERVERS[server_name](variant, port, 1)]
    server = Server(argv, port, env=env, cwd=tmp, log=os.path.join(tmp, f"{out}.log"))
    try:
        server.start(timeout=600)
        _requests(port, 200, path)  # warm up: imports, caches, the first table slots
        subprocess.run(["callgrind_control", "-z"], capture_output=True, check=True)
        _requests(port, n, path)
        subprocess.run(["callgrind_control", "-d"], capture_output=True, check=True)
        time.sleep(1)
    finally:
        server.stop(timeout=120)
    # One dump per process under valgrind: the serving one is the busiest
    # (gunicorn's master only wakes once a second).
    counts = []
    for dump in glob.glob(f"{out}.*"):
        if dump.endswith(".log"):
            continue
        with open(dump, errors="replace") as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if found:
            counts.append(int(found.group(1)))
    if not counts:
        raise SystemExit(f"{server_name} {variant}: no callgrind dump")
    return max(counts) // n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--servers", default="gunicorn-sync,gunicorn-uvicorn-worker,uvicorn")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    path = "/v1/items"
    with tempfile.TemporaryDirectory(prefix="fastlimit-ins-") as tmp:
        _, table, env = server_env(tmp, OPENBLAS_NUM_THREADS="1")
        print(f"instructions per request ({args.requests} requests, 1 worker)")
        print(f"{'server':<24} {'plain':>9} {'+headers':>9} {'middleware':>11} "
              f"{'headers cost':>13} {'middleware cost':>16} {'over +headers':>14}")
        try:
            for name in args.servers.split(","):
                n = {v: measure(name, v, args.requests, env, tmp, path) for v in VARIANTS}
                plain, floor, mw = n["plain"], n["headers"], n["middleware"]
                print(f"{name:<24} {plain:>9,} {floor:>9,} {mw:>11,} "
                      f"{(floor - plain) / plain * 100:>12.1f}% "
                      f"{(mw - plain) / plain * 100:>15.1f}% "
                      f"{(mw - floor) / floor * 100:>13.1f}%", flush=True)
        finally:
            _remove_table(table)


if __name__ == "__main__":
    sys.exit(main())
