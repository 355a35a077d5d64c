"""fastlimit's hot paths against a plain C GCRA and `limits`, in one run.

Prints ns per call (medians) and ratios; ratios hold on a noisy machine,
absolute times do not.  Measured:

* ``allow`` and ``hit`` with str keys on 4 hot keys;
* ``allow`` and ``hit`` with N live keys (default 1M) spread evenly over a
  named table in /dev/shm, against a plain C GCRA on a /dev/shm array of the
  same size (bench/_baseline.pyx) and against `limits` MemoryStorage (fixed
  and moving window) on the same keys;
* ``hit_many`` on a uint64 array of N live keys, per key;
* one process against two, each making the same checks on keys of its own:
  checks per second of each configuration (ideal: twice);
* bytes of table per key of capacity.

Usage: python bench/core_bench.py [--keys N] [--skip-limits]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # keep numpy's pool off the 2nd core

import argparse
import mmap
import multiprocessing as mp
import platform
import statistics
import sys
import time

import numpy as np
from _util import load_baseline, ns_per_call, table, timed

import fastlimit

RATE = "1000/1h"  # keys stay live (T = 3.6 s) and are never denied in the run


def shm_array(nbytes: int) -> tuple[np.ndarray, str]:
    path = f"/dev/shm/fastlimit-bench-plain-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, nbytes)
    mm = mmap.mmap(fd, nbytes)
    os.close(fd)
    return np.frombuffer(mm, dtype=np.int64), path


def _scaling_worker(name: str, part: range, rounds: int, start: mp.Barrier,
                    done: mp.Barrier) -> None:
    allow = fastlimit.Limiter(RATE, store=fastlimit.SharedTable.attach(name), name="api").allow
    keys = [f"user:{i}" for i in part]  # built here: no copy-on-write faults while timed
    start.wait()
    for _ in range(rounds):
        for k in keys:
            allow(k)
    done.wait()


def scaling(name: str, n: int, procs: int, repeat: int = 3) -> float:
    """Checks per second of ``procs`` processes, each making the same number
    of checks on keys of its own (a quarter of the live keys each: together
    they stay inside the table's key set).  Ideal scaling doubles it from
    one process to two."""
    ctx = mp.get_context("fork")
    share = n // 4
    rounds = 4
    best = 0.0
    for _ in range(repeat):
        start, done = ctx.Barrier(procs + 1), ctx.Barrier(procs + 1)
        parts = [range(i * share, (i + 1) * share) for i in range(procs)]
        ps = [ctx.Process(target=_scaling_worker, args=(name, part, rounds, start, done))
              for part in parts]
        for p in ps:
            p.start()
        start.wait()
        t0 = time.perf_counter()
        done.wait()
        elapsed = time.perf_counter() - t0
        for p in ps:
            p.join()
        best = max(best, procs * share * rounds / elapsed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--skip-limits", action="store_true", help="do not measure `limits`")
    args = ap.parse_args()
    n = args.keys

    baseline = load_baseline()
    name = f"bench-{os.getpid()}"
    tbl = fastlimit.SharedTable.create(name, capacity=n)
    plain_path = None
    try:
        lim = fastlimit.Limiter(RATE, store=tbl, name="api")
        rows = []

        hot = [f"user:{i % 4}" for i in range(1_000_000)]
        hot_lim = fastlimit.Limiter("1000000000/1s", store=tbl, name="hot")
        floor = ns_per_call(len, hot)
        rows.append(("loop floor (`len`)", f"{floor:.0f}", "", ""))
        rows.append(("allow, 4 hot keys", f"{ns_per_call(hot_lim.allow, hot):.0f}", "", ""))
        rows.append(("hit, 4 hot keys", f"{ns_per_call(hot_lim.hit, hot):.0f}", "", ""))

        keys = [f"user:{i}" for i in range(n)]
        ns_per_call(lim.allow, keys, repeat=1)  # insert every key
        # Filled to its capacity, a table turns away about one new key in a
        # million (both of its buckets full): counted, and shown below.
        full = tbl.stats().full_events
        assert tbl.stats().live_keys + full >= n, "every key must be live or counted full"
        plain_mem, plain_path = shm_array(tbl.nbytes)
        plain = baseline.PlainGcra(plain_mem, lim.rate.emission_interval_ns, lim.burst)
        ns_per_call(plain.allow, keys, repeat=1)
        # alternate the contenders pass by pass, so drift in the machine
        # (other tenants, frequency) lands on both alike
        passes: dict[str, list[float]] = {"allow": [], "plain": [], "hit": []}
        for _ in range(7):
            passes["allow"].append(ns_per_call(lim.allow, keys, repeat=1))
            passes["plain"].append(ns_per_call(plain.allow, keys, repeat=1))
            passes["hit"].append(ns_per_call(lim.hit, keys, repeat=1))
        ours, floor_c, ours_hit = (statistics.median(passes[k]) for k in ("allow", "plain", "hit"))
        rows.append((f"allow, {n:,} live keys", f"{ours:.0f}", f"plain C GCRA {floor_c:.0f}",
                     f"{ours / floor_c:.2f}x the plain C"))
        rows.append((f"hit, {n:,} live keys", f"{ours_hit:.0f}", "", ""))

        ints = np.arange(n, dtype=np.uint64)
        batch_tbl = fastlimit.SharedTable.anonymous(capacity=n)
        batch = fastlimit.Limiter(RATE, store=batch_tbl, name="batch")
        batch.hit_many(ints)
        rows.append((f"hit_many, uint64 array, {n:,} live keys (per key)",
                     f"{timed(lambda: batch.hit_many(ints), n):.1f}", "", ""))
        batch_tbl.close()

        one = scaling(name, n, 1)
        two = scaling(name, n, 2)
        rows.append(("allow, 1 process, its own keys", f"{1e9 / one:.0f}",
                     f"{one / 1e6:.2f} M checks/s", ""))
        rows.append(("allow, 2 processes, each its own keys", f"{2e9 / two:.0f}",
                     f"{two / 1e6:.2f} M checks/s", f"{two / one:.2f}x one process"))
        # last: its million keys of Python objects would slow what runs after
        if not args.skip_limits:
            from limits import parse, storage, strategies

            item = parse("1000/hour")
            for label, strategy in (("fixed window", strategies.FixedWindowRateLimiter),
                                    ("moving window", strategies.MovingWindowRateLimiter)):
                limiter = strategy(storage.MemoryStorage())
                hit = limiter.hit
                fn = lambda k, hit=hit: hit(item, k)  # noqa: E731
                ns_per_call(fn, keys, repeat=1)
                peer = ns_per_call(fn, keys, repeat=3)
                rows.append((f"`limits` MemoryStorage {label}, {n:,} keys", "", f"{peer:.0f}",
                             f"fastlimit allow {peer / ours:.1f}x faster"))

        rows.append(("table bytes per key of capacity", f"{tbl.stats().bytes_per_key:.2f}", "", ""))
        rows.append((f"keys turned away filling the table to {n:,}", str(full), "", ""))

        print(f"# fastlimit {fastlimit.__version__} core benchmark: {time.strftime('%Y-%m-%d')}, "
              f"Python {platform.python_version()}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, numpy {np.__version__}")
        print(f"# command: python bench/core_bench.py {' '.join(sys.argv[1:])}".rstrip())
        print()
        print(table(rows, ("path", "fastlimit ns/call", "peer", "ratio")))
    finally:
        tbl.unlink()
        tbl.close()
        if plain_path:
            os.unlink(plain_path)


if __name__ == "__main__":
    main()
