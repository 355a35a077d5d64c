"""A batch job whose worker processes share one rate limit.

Four processes call a partner API that allows 30 calls a minute.  Each
worker attaches to the job's SharedTable by name, so the four together stay
within 30 a minute (after the API's burst), not 30 each, and they take turns:
every call books the next free slot and sleeps exactly until it.  Progress
lines on the ``fastlimit`` logger say when and why the job is held back.

    python -m fastlimit.examples.pool_job                    # 40 calls at 30/1m: ~20 s
    python -m fastlimit.examples.pool_job --rate 20/1s --calls 60

The API call here is a stand-in that returns when it was made; swap in your
client (see ``fastlimit.client`` for an httpx transport that also follows
the API's rate-limit headers and retries its 429s).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import NamedTuple

import fastlimit

__all__ = ["Call", "main", "run"]

KEY = "partner-api"  # one key: the whole job spends one budget

_api: fastlimit.Limiter | None = None


class Call(NamedTuple):
    item: int
    pid: int
    at_ns: int  # CLOCK_MONOTONIC when the call was made


def _attach(table: str, rate: str, burst: int | None, progress: float | None) -> None:
    """Pool initializer: each worker attaches to the job's table by name."""
    global _api
    _api = fastlimit.Limiter(rate, store=fastlimit.SharedTable.attach(table), name="partner",
                             burst=burst, progress=progress)


def call_api(item: int) -> Call:
    """One call, made once the job's budget has room for it."""
    assert _api is not None, "call_api runs in the pool's workers"
    _api.wait(KEY)
    return Call(item, os.getpid(), time.monotonic_ns())  # the API call goes here


def run(table: str, rate: str, calls: int, *, workers: int = 4, burst: int | None = None,
        progress: float | None = None, context: BaseContext | None = None) -> list[Call]:
    """Make ``calls`` calls from a pool of ``workers`` processes sharing
    ``rate`` through the table named ``table`` (which must exist)."""
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_attach,
                             initargs=(table, rate, burst, progress)) as pool:
        return list(pool.map(call_api, range(calls)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="30/1m", help="the API's limit (default 30/1m)")
    parser.add_argument("--calls", type=int, default=40, help="calls to make (default 40)")
    parser.add_argument("--workers", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--progress", type=float, default=5.0,
                        help="seconds between progress lines (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    name = f"pool-job-{os.getpid()}"
    table = fastlimit.SharedTable.open(name, capacity=1024)
    try:
        start = time.monotonic_ns()
        done = run(name, args.rate, args.calls, workers=args.workers, progress=args.progress)
        took = (max(c.at_ns for c in done) - start) / 1e9
        rate = fastlimit.Rate.parse(args.rate)
        print(f"{len(done)} calls from {len({c.pid for c in done})} processes in {took:.1f} s; "
              f"the limit {rate} allows at most "
              f"{rate.limit + int(took * 1e9 // rate.emission_interval_ns)} in that time")
    finally:
        table.unlink()
        table.close()


if __name__ == "__main__":
    main()
