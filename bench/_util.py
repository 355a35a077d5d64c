"""Shared helpers of the benchmark scripts: timing, the C baseline, and real
redis-server processes (the tests' launchers, tests/redis_topologies.py)."""

from __future__ import annotations

import collections
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def ns_per_call(fn: Callable[[Any], Any], keys: list[Any], repeat: int = 5) -> float:
    """Median over ``repeat`` runs of ``fn(key)`` for every key, in ns per call.

    ``deque(map(...))`` drives the calls from C, so the loop adds ~15 ns to
    every figure alike (``len`` measures that floor)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        collections.deque(map(fn, keys), maxlen=0)
        runs.append((time.perf_counter_ns() - t0) / len(keys))
    return statistics.median(runs)


def timed(fn: Callable[[], Any], per: int, repeat: int = 5) -> float:
    """Median ns per item of ``fn()`` which handles ``per`` items."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        runs.append((time.perf_counter_ns() - t0) / per)
    return statistics.median(runs)


def load_baseline() -> Any:
    """Build (once) and import bench/_baseline.pyx."""
    import numpy as np
    import pyximport

    pyximport.install(
        build_dir=os.path.join(HERE, ".build"),
        setup_args={"include_dirs": [np.get_include()]},
        language_level=3,
        inplace=False,
    )
    sys.path.insert(0, HERE)
    import _baseline

    return _baseline


def table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def redis_topologies() -> Any:
    """tests/redis_topologies.py, the launchers the tests' fixtures use:
    ``RedisServer``, ``start_server``, ``start_cluster``, ``start_sentinel``."""
    tests = os.path.join(os.path.dirname(HERE), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import redis_topologies

    return redis_topologies


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    return binary


def start_redis(*extra: str, root: str | None = None) -> Any:
    """A started ``RedisServer`` (tests/redis_topologies.py) on a free
    loopback port, in a temp dir of its own (under ``root``); ``.stop()``
    ends it by PID."""
    rt = redis_topologies()
    return rt.start_server(
        redis_binary(), lambda: Path(tempfile.mkdtemp(prefix="fl-bench-", dir=root)), *extra)


@contextmanager
def redis_server(*extra: str) -> Iterator[Any]:
    """``start_redis()``, stopped by PID and its dir removed on the way out."""
    server = start_redis(*extra)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
