"""The ``fastlimit`` command: ``demo`` runs a real multi-worker gunicorn
behind a policy and shows every limit holding exactly across the workers
(``demo --processes``: bare processes sharing one limit); ``stats`` and
``unlink`` inspect and remove named tables."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from fastlimit.limiter import Limiter
from fastlimit.table import SharedTable

__all__ = ["main"]


def _worker(table_name: str, rate: str, checks: int, barrier: Any, results: Any) -> None:
    lim = Limiter(rate, store=SharedTable.attach(table_name), name="demo")
    allow = lim.allow
    barrier.wait()
    start = time.perf_counter()
    admitted = sum(allow("shared-key") for _ in range(checks))
    elapsed = time.perf_counter() - start
    results.put((os.getpid(), admitted, checks, elapsed))


def demo(workers: int, limit: int, checks: int, out: TextIO | None = None) -> int:
    """Run the demo; returns 0 when the workers admitted exactly ``limit``."""
    out = out or sys.stdout
    rate = f"{limit}/1d"
    name = f"demo-{os.getpid()}"
    table = SharedTable.create(name, capacity=1024)
    try:
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(name, rate, checks, barrier, results))
                 for _ in range(workers)]
        print(f"{workers} worker processes share the limit {rate} on one key through the "
              f"table {table.path}; each makes {checks:,} checks.", file=out)
        for p in procs:
            p.start()
        rows = sorted(results.get(timeout=300) for _ in procs)
        for p in procs:
            p.join()
        total = sum(r[1] for r in rows)
        print(f"\n{'worker pid':>10}  {'admitted':>9}  {'checks':>9}  {'checks/s':>12}", file=out)
        for pid, admitted, n, elapsed in rows:
            print(f"{pid:>10}  {admitted:>9,}  {n:>9,}  {n / elapsed:>12,.0f}", file=out)
        wall = max(r[3] for r in rows)
        print(f"\n{'total':>10}  {total:>9,}  {workers * checks:>9,}  "
              f"{workers * checks / wall:>12,.0f}", file=out)
        verdict = "exactly the limit" if total == limit else f"NOT the limit of {limit:,}"
        print(f"\nAdmitted {total:,} in all: {verdict}.  Per-process in-memory limiters "
              f"would have admitted up to {workers * limit:,}.", file=out)
        return 0 if total == limit else 1
    finally:
        table.unlink()
        table.close()


def stats(name: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    table = SharedTable.attach(name)
    s = table.stats()
    for field in ("capacity", "slots", "live_keys", "locked_slots", "full_events",
                  "lock_breaks", "lock_timeouts", "nbytes"):
        print(f"{field:>14}: {getattr(s, field):,}", file=out)
    print(f"{'bytes_per_key':>14}: {s.bytes_per_key:.2f}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastlimit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="a multi-worker gunicorn behind a policy: limits hold exactly")
    d.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    d.add_argument("--policy", metavar="FILE",
                   help="a policy TOML file (default: the seed 000 example)")
    d.add_argument("--max-requests", type=int, default=600, metavar="N",
                   help="at most N requests per caller and endpoint (default 600)")
    d.add_argument("--processes", action="store_true",
                   help="instead: bare processes hitting one limit, no HTTP")
    d.add_argument("--limit", type=int, default=10_000,
                   help="--processes: the shared limit (default 10000)")
    d.add_argument("--checks", type=int, default=200_000,
                   help="--processes: checks per worker (default 200000)")
    s = sub.add_parser("stats", help="print a named table's statistics")
    s.add_argument("name")
    u = sub.add_parser("unlink", help="remove a named table")
    u.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if min(args.workers, args.limit, args.checks, args.max_requests) < 1:
            parser.error("--workers, --max-requests, --limit and --checks must be >= 1")
        if args.processes:
            return demo(args.workers, args.limit, args.checks)
        from fastlimit._demo import web_demo
        return web_demo(args.policy, workers=args.workers, max_requests=args.max_requests)
    if args.command == "stats":
        return stats(args.name)
    table = SharedTable.attach(args.name)
    table.unlink()
    table.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
