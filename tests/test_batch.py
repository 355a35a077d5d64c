"""Batch jobs: four real processes of a pool share one limit and keep its rate.

The checks are the GCRA bound itself.  Admissions at times t_1 <= ... <= t_n
conform to a rate with emission interval T and burst B iff every window
[t_i, t_j] holds at most B + floor((t_j - t_i) / T) of them."""

import importlib.util
import multiprocessing as mp
import os
import pathlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from fastlimit import Limiter, Rate, SharedTable

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
RATE, BURST = "40/1s", 4  # T = 25 ms: 24 calls take (24 - 4) x 25 ms = 0.5 s
T = Rate.parse(RATE).emission_interval_ns


def windows_over(times, burst, t):
    """Windows [t_i, t_j] holding more than the GCRA bound allows."""
    times = sorted(times)
    return [(i, j) for i in range(len(times)) for j in range(i, len(times))
            if j - i + 1 > burst + (times[j] - times[i]) // t]


def test_the_bound_check_catches_one_too_many():
    assert windows_over([0, 0, 0, 0, T, 2 * T], BURST, T) == []
    assert windows_over([0, 0, 0, 0, T - 1], BURST, T) == [(0, 4)]


_barrier = None


def _keep_barrier(barrier):
    global _barrier
    _barrier = barrier


def _book_and_call(job):
    name, calls = job
    lim = Limiter(RATE, store=SharedTable.attach(name), name="job", burst=BURST)
    _barrier.wait()  # all four race from the start
    made = []
    for _ in range(calls):
        booking = lim.reserve("api")  # what Limiter.wait does: book, then sleep
        booking.sleep()
        made.append((booking.at_ns, time.monotonic_ns(), os.getpid()))
    return made


@pytest.mark.slow
def test_four_pool_workers_keep_the_rate_in_every_window(table, table_name):
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(4, mp_context=ctx, initializer=_keep_barrier,
                             initargs=(ctx.Barrier(4),)) as pool:
        made = [c for part in pool.map(_book_and_call, [(table_name, 6)] * 4) for c in part]
    assert len(made) == 24 and len({pid for _, _, pid in made}) == 4
    slots = [at for at, _, _ in made]
    assert windows_over(slots, BURST, T) == []
    assert all(called >= at for at, called, _ in made), "no call before its slot"
    assert table.verify() == []


def _example():
    # this checkout's examples/ (an editable install may map fastlimit.examples
    # to another tree); registered under its package name, so that forked
    # pool workers find its functions by name
    spec = importlib.util.spec_from_file_location("fastlimit.examples.pool_job",
                                                  EXAMPLES / "pool_job.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_pool_example_keeps_the_rate_from_its_start(table, table_name):
    pool_job = _example()
    start = time.monotonic_ns()
    calls = pool_job.run(table_name, RATE, 24, workers=4, burst=BURST,
                         context=mp.get_context("fork"))
    assert sorted(c.item for c in calls) == list(range(24))
    # Each call is made at or after its slot, and no slot precedes `start`,
    # so for every call the calls made by then fit the bound of [start, then].
    times = sorted(c.at_ns for c in calls)
    over = [k for k, at in enumerate(times, 1) if k > BURST + (at - start) // T]
    assert over == [], "more calls than the limit allows since the job started"
