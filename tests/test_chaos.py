"""Chaos: worker processes hit one named table at full speed while a
controller SIGKILLs them at random and starts replacements, for a few
seconds.  Then: no slot is stuck, the survivors never blocked, and no key
was admitted more often than its limit.

The limits do not replenish during the run (N per ten years), so the table
itself says how many hits each key admitted: ``burst - remaining``.  Each
worker records every admission it sees, right after the call, in a shared
array row of its own; a killed worker can lose at most the record of the
one admission it was making when it died (the _claim comments: a kill never
causes an admission, and an uncommitted claim carries no state).  So, per
key: recorded <= admitted <= limit, and the admissions without a record add
up to at most the number of kills.

Three kinds of traffic share the table's buckets:

* hot keys, hit by every worker: CAS contention on a few slots;
* fresh keys, walked in the same order by every worker: each is claimed by
  a race of first hits, then spent, then left;
* churn keys on a limiter whose state expires at once: claims and reclaims
  over expired slots, all the time, so kills land mid-claim.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest

from fastlimit import Limiter, SharedTable

pytestmark = pytest.mark.slow

WORKERS = 4
RUN_S = 3.0  # the controller kills for this long (and at least MIN_KILLS times)
MIN_KILLS = 20
HOT_KEYS, HOT_LIMIT = 8, 5000
FRESH_KEYS, FRESH_LIMIT = 150_000, 16
CHURN_KEYS, CHURN_BATCH = 1 << 20, 16  # more keys than slots: most hits claim
SEED = 20240601
PROGRESS_WAIT_S = 60.0  # a worker making no progress this long is blocked: fail


def _limiters(table):
    return (Limiter(f"{HOT_LIMIT}/3650d", store=table, name="hot"),
            Limiter(f"{FRESH_LIMIT}/3650d", store=table, name="fresh"),
            Limiter("1000000000/1s", store=table, name="churn"))  # expires within ns


def _worker(name, slot, seed, hot_rec, fresh_rec, progress, frontier, stop):
    # every slot's row has one writer at a time: a replacement starts after
    # its predecessor's death
    table = SharedTable.attach(name)
    hot, fresh, churn = _limiters(table)
    hot_row = np.frombuffer(hot_rec, np.int64).reshape(WORKERS, HOT_KEYS)[slot]
    fresh_row = np.frombuffer(fresh_rec, np.int64).reshape(WORKERS, FRESH_KEYS)[slot]
    done = np.frombuffer(progress, np.int64)
    # churn keys in batches: claims run in C back to back, so most of a
    # worker's time is spent in them and kills land mid-claim
    pool = np.random.default_rng(seed).integers(0, CHURN_KEYS, 1 << 16)
    i = 0
    while not (i & 255 == 0 and stop.value):
        k = i % HOT_KEYS
        if hot.allow(k):
            hot_row[k] += 1
        f = frontier.value
        if f < FRESH_KEYS:
            if fresh.allow(f):
                fresh_row[f] += 1
            else:  # spent: move everyone on (racy, and need not be exact)
                frontier.value = f + 1
        at = (i * CHURN_BATCH) & 0xFFFF
        churn.hit_many(pool[at:at + CHURN_BATCH])
        i += 1
        done[slot] += 1


def _wait_for(condition, what):
    deadline = time.monotonic() + PROGRESS_WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: no progress in {PROGRESS_WAIT_S:.0f} s")
        time.sleep(0.0005)


def test_random_sigkills_leave_no_stuck_slot_no_blocked_survivor_and_no_over_admission(
        table_name):
    table = SharedTable.open(table_name, capacity=FRESH_KEYS + HOT_KEYS + 2048)
    fork, spawn = mp.get_context("fork"), mp.get_context("spawn")
    hot_rec = fork.RawArray("q", WORKERS * HOT_KEYS)
    fresh_rec = fork.RawArray("q", WORKERS * FRESH_KEYS)
    progress = fork.RawArray("q", WORKERS)
    done = np.frombuffer(progress, np.int64)
    frontier, stop = fork.RawValue("q", 0), fork.RawValue("b", 0)
    rng = random.Random(SEED)
    started = 0

    def start(slot):
        nonlocal started
        started += 1
        ctx = spawn if started % 25 == 1 else fork  # the first and every 25th: spawned
        p = ctx.Process(target=_worker, args=(table_name, slot, rng.getrandbits(32), hot_rec,
                                              fresh_rec, progress, frontier, stop))
        p.start()
        return p

    procs = [start(slot) for slot in range(WORKERS)]
    killed = []
    try:
        end = time.monotonic() + RUN_S
        while time.monotonic() < end or len(killed) < MIN_KILLS:
            slot = rng.randrange(WORKERS)
            # let the victim run a random while: kills land anywhere in its loop
            goal = done[slot] + rng.randint(1, 300)
            _wait_for(lambda s=slot, g=goal: done[s] >= g, f"worker in slot {slot} before its kill")
            at_kill = done.copy()
            os.kill(procs[slot].pid, signal.SIGKILL)
            procs[slot].join()
            killed.append(procs[slot].pid)
            procs[slot] = start(slot)
            # the survivors go on: none waits on what the dead one held
            for other in range(WORKERS):
                if other != slot:
                    _wait_for(lambda o=other, seen=at_kill: done[o] > seen[o],
                              f"survivor in slot {other} after a kill")
    finally:
        stop.value = 1
        for p in procs:
            p.join(timeout=120)
            if p.exitcode is None:
                os.kill(p.pid, signal.SIGKILL)
                p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    kills = len(killed)

    hot, fresh, churn = _limiters(table)
    # Touch every key again: a dead claimer's lock on a key's slot is broken
    # by the next look-up of that key.
    churn.hit_many(np.arange(CHURN_KEYS), cost=0)
    fresh.hit_many(np.arange(FRESH_KEYS), cost=0)
    hot.hit_many(np.arange(HOT_KEYS), cost=0)
    stats = table.stats()
    assert stats.lock_timeouts == 0, "a survivor waited out a lock (it was blocked)"
    assert table.verify() == []
    # What no look-up can reach: a claimer killed between locking a
    # never-used slot and publishing its fp leaves fp 0 (no key's).  Such a
    # lock must be a dead worker's; the first claim that finds its buckets
    # full breaks it (test_processes.py::
    # test_a_dead_claim_nobody_looks_up_is_reclaimed_once_its_bucket_is_needed).
    slots = table.slots.copy()
    locked = slots[(slots["tat"] >> 62) == -1]
    owners = {int(t) & ((1 << 22) - 1) for t in locked["tat"]}
    assert (locked["fp"] == 0).all() and owners <= {p & ((1 << 22) - 1) for p in killed}, (
        f"{len(locked)} slots still locked after every key was looked up: {locked}")

    lost = 0
    for lim, keys, rec, limit in (
            (hot, range(HOT_KEYS), hot_rec, HOT_LIMIT),
            (fresh, range(FRESH_KEYS), fresh_rec, FRESH_LIMIT)):
        recorded = np.frombuffer(rec, np.int64).reshape(WORKERS, -1).sum(axis=0)
        admitted = np.array([limit - lim.peek(k).remaining for k in keys])
        over = np.nonzero(recorded > admitted)[0]
        assert len(over) == 0, (
            f"{lim.name}: keys {over[:10]} recorded more admissions than the table "
            f"holds (over-admission or lost state): {recorded[over[:10]]} > {admitted[over[:10]]}")
        lost += int((admitted - recorded).sum())
    assert lost <= kills, f"{lost} admissions without a record, but only {kills} kills"
    assert frontier.value > 1000 and np.frombuffer(hot_rec, np.int64).sum() > 0, \
        "the workers got through fresh and hot keys"
