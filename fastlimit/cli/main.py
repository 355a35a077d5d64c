"""The ``fastlimit`` command.

``demo`` runs a real multi-worker gunicorn behind a policy and shows every
limit holding exactly across the workers (``demo --processes``: bare
processes sharing one limit).  ``stats``, ``inspect``, ``reset``, ``rm`` and
``metrics`` look after named tables; ``bench`` measures this machine."""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from fastlimit._core import QUOTA_MAX_COUNT
from fastlimit.cli.report import _rate_text, print_table_report, table_report
from fastlimit.errors import ConfigurationError, TableError
from fastlimit.limiters.limiter import Key, Limiter
from fastlimit.limiters.rate import Rate
from fastlimit.stores.metrics import prometheus_text
from fastlimit.stores.table import (
    LimiterStats,
    SharedTable,
    anonymous_path,
    beside,
    check_removable,
    mapped_by,
    table_path,
)

QUOTA_COUNT_BITS = QUOTA_MAX_COUNT.bit_length()
QUOTA_COUNT_MASK = QUOTA_MAX_COUNT

__all__ = ["inspect", "main", "remove", "reset", "stats"]


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


def _open(name: str) -> SharedTable:
    """A table by name, or by path when ``name`` holds a '/'."""
    if "/" in name:
        return SharedTable.attach(path=name)
    return SharedTable.attach(name)


def _path(name: str) -> str:
    """The file of the table ``name`` (a path when it holds a '/')."""
    return name if "/" in name else table_path(name)


def stats(name: str, out: TextIO | None = None, as_json: bool = False) -> int:
    out = out or sys.stdout
    with _open(name) as table:
        report = table_report(table)
    if as_json:
        print(json.dumps(report), file=out)
    else:
        print_table_report(report, out)
    return 0


def _pick(table: SharedTable, limiter: str | None) -> LimiterStats:
    """The rate limit or quota named ``limiter``, or the table's only one."""
    known = [lim for lim in table.limiter_stats() if lim.kind in ("rate", "quota")]
    names = ", ".join(repr(lim.name) for lim in known) or "none yet"
    if limiter is None:
        if len(known) == 1:
            return known[0]
        raise CLIError(f"table {table.name} holds several limiters: pick one with "
                       f"--limiter (one of {names})")
    for lim in known:
        if lim.name == limiter:
            return lim
    raise CLIError(f"table {table.name} has no rate limit or quota {limiter!r} (it has {names})")


def _keyed(table: SharedTable, lim: LimiterStats) -> Any:
    if lim.kind == "rate":
        return table.rate_state(lim.name, lim.emission_interval_ns, lim.burst, register=False)
    return table.quota_counts(lim.name, lim.limit, register=False)


def inspect(name: str, key: Key, limiter: str | None = None, rate: str | None = None,
            out: TextIO | None = None, as_json: bool = False) -> int:
    """Show one key's state and the Decision a hit would get now (at
    ``rate`` if given, else at the limiter's last stated rate)."""
    out = out or sys.stdout
    with _open(name) as table:
        lim = _pick(table, limiter)
        if rate is not None:
            if lim.kind != "rate":
                raise CLIError(f"--rate applies to rate limits; {lim.name!r} is a {lim.kind}")
            r = Rate.parse(rate)
            lim = dataclasses.replace(lim, emission_interval_ns=r.emission_interval_ns,
                                      burst=r.limit, mixed=False)
        keyed = _keyed(table, lim)
        report: dict[str, Any] = {"table": table.name, "limiter": lim.name, "kind": lim.kind,
                                  "key": key if isinstance(key, (str, int)) else repr(key)}
        if lim.kind == "rate":
            d = keyed.peek(key)
            report.update(rate=_rate_text(lim.emission_interval_ns, lim.burst),
                          allowed=bool(d.allowed), limit=d.limit, remaining=d.remaining,
                          reset_after=d.reset_after, retry_after=d.retry_after)
        else:
            word = table._word(keyed.fingerprint(key))
            tag, count = (word >> QUOTA_COUNT_BITS, word & QUOTA_COUNT_MASK) if word else (0, 0)
            report.update(limit=lim.limit, count=count, period_tag=tag)
    if as_json:
        print(json.dumps(report), file=out)
    elif lim.kind == "rate":
        verdict = "would be allowed" if report["allowed"] else (
            f"would be denied: retry after {report['retry_after']:g} s")
        print(f"{report['limiter']} ({report['rate']}) key {key!r}: {report['remaining']} of "
              f"{report['limit']} left, full again in {report['reset_after']:g} s; a hit now "
              f"{verdict}", file=out)
        if lim.mixed:
            print("(the name is used at several rates; that was the last one stated: "
                  "pass --rate for another)", file=out)
    else:
        print(f"{report['limiter']} (quota of {report['limit']:,}) key {key!r}: "
              f"{report['count']:,} counted in its latest period (tag {report['period_tag']})",
              file=out)
    return 0


def reset(name: str, key: Key, limiter: str | None = None, out: TextIO | None = None,
          as_json: bool = False) -> int:
    out = out or sys.stdout
    with _open(name) as table:
        lim = _pick(table, limiter)
        _keyed(table, lim).reset(key)
        if as_json:
            print(json.dumps({"table": table.name, "limiter": lim.name, "key": key,
                              "reset": True}), file=out)
            return 0
    print(f"reset key {key!r} of {lim.name} in table {name}", file=out)
    return 0


def remove(name: str, out: TextIO | None = None, as_json: bool = False,
           force: bool = False) -> int:
    out = out or sys.stdout
    # Not attached: a table that no longer opens (a corrupt header, a
    # truncated file, another namespace's) is what rm is for.
    path = _path(name)
    check_removable(path)
    users = mapped_by(path)
    if users and not force:
        raise CLIError(
            f"table {name} is in use by process{'es' if len(users) > 1 else ''} "
            f"{', '.join(map(str, users))}: removing it now would leave them on the old "
            f"state while new processes start a new table (the limits split in two). "
            f"Stop them first, or pass --force")
    # the policies' run-time overrides and their per-IP keys' table live
    # beside the table: they go with it
    extras = beside(path)
    sibling = anonymous_path(path)
    if sibling in extras and not name.endswith(".anonymous"):
        check_removable(sibling)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    removed = [path]
    for extra in extras:
        try:
            os.unlink(extra)
            removed.append(extra)
        except FileNotFoundError:
            pass
    if as_json:
        print(json.dumps({"removed": removed}), file=out)
    else:
        print(f"removed {', '.join(removed)}", file=out)
    return 0


class CLIError(Exception):
    """A command cannot run as asked; the message says why."""


def _key(text: str, as_int: bool) -> Key:
    if not as_int:
        return text
    try:
        return int(text, 0)
    except ValueError:
        raise CLIError(f"--int keys must be integers (e.g. 42 or 0x2a), got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastlimit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="a multi-worker gunicorn behind a policy: limits hold exactly")
    d.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    d.add_argument("--policy", metavar="FILE",
                   help="a policy TOML file (default: the seed 000 example)")
    d.add_argument("--max-requests", type=int, default=600, metavar="N",
                   help="at most N requests per caller and endpoint (default 600)")
    d.add_argument("--keep-table", action="store_true",
                   help="keep the demo's table afterwards (for `fastlimit stats`)")
    d.add_argument("--processes", action="store_true",
                   help="instead: bare processes hitting one limit, no HTTP")
    d.add_argument("--limit", type=int, default=10_000,
                   help="--processes: the shared limit (default 10000)")
    d.add_argument("--checks", type=int, default=200_000,
                   help="--processes: checks per worker (default 200000)")
    table_help = "a table name (or a path, if it holds a '/')"
    s = sub.add_parser("stats", help="a table's occupancy and checks per limiter")
    s.add_argument("name", help=table_help)
    s.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    i = sub.add_parser("inspect", help="one key's state and the Decision a hit would get")
    r = sub.add_parser("reset", help="forget one key's state")
    for p in (i, r):
        p.add_argument("name", help=table_help)
        p.add_argument("key")
        p.add_argument("--limiter", help="the limiter's name (needed if the table has several)")
        p.add_argument("--int", action="store_true", help="the key is an int key")
        p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    i.add_argument("--rate", help="answer at this rate (for a name used at several)")
    for command, what in (("rm", "remove a named table"), ("unlink", "the same as rm")):
        u = sub.add_parser(command, help=what)
        u.add_argument("name", help=table_help)
        u.add_argument("--json", action="store_true", help="one JSON object, for scripts")
        u.add_argument("--force", action="store_true",
                       help="remove it even while processes still map it")
    m = sub.add_parser("metrics", help="tables' metrics in the Prometheus text format")
    m.add_argument("names", nargs="+", metavar="name", help=table_help)
    b = sub.add_parser("bench", help="a quick benchmark of this machine (a few seconds)")
    b.add_argument("--keys", type=int, default=1_000_000, help="live keys (default 1000000)")
    b.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except (CLIError, TableError, ConfigurationError) as e:
        print(f"fastlimit {args.command}: {e}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        if min(args.workers, args.limit, args.checks, args.max_requests) < 1:
            parser.error("--workers, --max-requests, --limit and --checks must be >= 1")
        if args.processes:
            return demo(args.workers, args.limit, args.checks)
        from fastlimit.cli.demo import web_demo
        return web_demo(args.policy, workers=args.workers, max_requests=args.max_requests,
                        keep_table=args.keep_table)
    if args.command == "stats":
        return stats(args.name, as_json=args.json)
    if args.command == "inspect":
        return inspect(args.name, _key(args.key, args.int), args.limiter, args.rate,
                       as_json=args.json)
    if args.command == "reset":
        return reset(args.name, _key(args.key, args.int), args.limiter, as_json=args.json)
    if args.command in ("rm", "unlink"):
        return remove(args.name, as_json=args.json, force=args.force)
    if args.command == "metrics":
        tables = [_open(n) for n in args.names]
        try:
            sys.stdout.write(prometheus_text(*tables))
        finally:
            for t in tables:
                t.close()
        return 0
    if args.keys < 1000:
        parser.error("--keys must be >= 1000")
    from fastlimit.cli.quickbench import print_results, run
    results = run(args.keys)
    if args.json:
        print(json.dumps(results))
    else:
        print_results(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
