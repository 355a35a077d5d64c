"""Exactness and crash safety across real processes (fork and spawn)."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastlimit import Limiter, SharedTable, _core

pytestmark = pytest.mark.slow

CONTEXTS = ["fork", "spawn"]


def _hammer_one_key(name, barrier, tries, q):
    lim = Limiter("1000/1h", store=SharedTable.attach(name), name="api")
    barrier.wait()
    q.put(sum(lim.allow("hot") for _ in range(tries)))


@pytest.mark.parametrize("method", CONTEXTS)
def test_four_processes_admit_exactly_the_limit(method, table):
    ctx = mp.get_context(method)
    barrier, q = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_hammer_one_key, args=(table_name_of(table), barrier, 5000, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    admitted = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(admitted) == 1000, admitted
    assert all(p.exitcode == 0 for p in procs)


def _many_keys(name, barrier, rounds, offset, batch, q):
    lim = Limiter("5/1h", store=SharedTable.attach(name), name="per-key")
    keys = np.arange(2000, dtype=np.uint64)
    counts = np.zeros(len(keys), dtype=np.int64)
    barrier.wait()
    for _ in range(rounds):
        # every process walks the keys in the same order, so first hits of a
        # key race each other to claim its slot
        if batch:
            counts += lim.hit_many(keys)
        else:
            for k in keys.tolist():
                counts[k] += lim.allow(k)
    q.put(counts)


@pytest.mark.parametrize("method, batch", [("fork", False), ("spawn", False), ("fork", True)])
def test_many_keys_exact_per_key_across_processes(method, batch, table):
    ctx = mp.get_context(method)
    barrier, q = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_many_keys, args=(table_name_of(table), barrier, 4, i, batch, q))
             for i in range(4)]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert (total == 5).all(), np.unique(total, return_counts=True)
    assert table.verify() == []
    assert table.stats().live_keys == 2000


def _victim(name, admitted, started):
    lim = Limiter("50/1h", store=SharedTable.attach(name), name="crash")
    n = 0
    while True:  # hot loop over the shared keys and new keys, until killed
        k = n % 200
        if lim.allow(k):
            admitted[k] += 1
        lim.allow(10_000 + n)  # a new key each time: claims, the slow path
        n += 1
        if n == 5000:
            started.set()


def _survivor(name, admitted_q):
    lim = Limiter("50/1h", store=SharedTable.attach(name), name="crash")
    counts = np.zeros(200, dtype=np.int64)
    for n in range(200 * 60):
        k = n % 200
        counts[k] += lim.allow(k)
        lim.allow(20_000_000 + os.getpid() * 100_000 + n)
    admitted_q.put(counts)


def test_sigkill_mid_loop_leaves_others_running_and_the_table_sound(table_name):
    table = SharedTable.open(table_name, capacity=200_000)
    ctx = mp.get_context("fork")
    admitted = ctx.Array("q", 200, lock=False)
    started, q = ctx.Event(), ctx.Queue()
    victim = ctx.Process(target=_victim, args=(table_name, admitted, started))
    victim.start()
    assert started.wait(timeout=60)
    survivors = [ctx.Process(target=_survivor, args=(table_name, q)) for _ in range(3)]
    for p in survivors:
        p.start()
    os.kill(victim.pid, signal.SIGKILL)
    counts = sum(q.get(timeout=120) for _ in survivors)
    for p in survivors:
        p.join(timeout=60)
        assert p.exitcode == 0
    victim.join()
    assert victim.exitcode == -signal.SIGKILL
    total = counts + np.array(admitted[:])
    # the victim may die between an admission and its record of it: one at most
    assert (total <= 50).all() and 50 * 200 - total.sum() <= 1, total
    assert table.verify() == []
    lim = Limiter("50/1h", store=table, name="crash")
    assert not any(lim.allow(k) for k in range(200) if total[k] == 50)


def _hold_claim(name, key, q):
    table = SharedTable.attach(name)
    fp = Limiter("1/1h", store=table, name="held")._impl.fingerprint(key)
    q.put(table._view._hold_claim(fp, _core.monotonic_ns()))
    time.sleep(3600)  # holds the lock until the test kills it


def _start_holder(table, key):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_hold_claim, args=(table_name_of(table), key, q))
    p.start()
    slot = q.get(timeout=60)
    assert (table.slots["tat"][slot] >> 62) == -1, "the slot is locked"
    return p


@pytest.mark.parametrize("reaped", [True, False])
def test_a_claim_left_by_a_killed_process_is_broken(reaped, table):
    holder = _start_holder(table, "victim")
    os.kill(holder.pid, signal.SIGKILL)
    if reaped:
        holder.join()
    else:  # a zombie: dead, but its pid still answers kill(pid, 0)
        while proc_state(holder.pid) != "Z":
            os.sched_yield()
    lim = Limiter("1/1h", store=table, name="held")
    assert lim.hit("victim").allowed
    assert not lim.allow("victim")
    s = table.stats()
    assert (s.lock_breaks, s.locked_slots, s.lock_timeouts) == (1, 0, 0)
    assert table.verify() == []
    holder.join()


def _hold_fp(name, fp, q):
    table = SharedTable.attach(name)
    q.put(table._view._hold_claim(fp, _core.monotonic_ns()))
    time.sleep(3600)  # holds the lock until the test kills it


@pytest.mark.parametrize("fp", [0, 0x5EED_0F_0D_DEAD_BEEF],
                         ids=["killed-before-publishing-its-fp", "key-never-seen-again"])
def test_a_dead_claim_nobody_looks_up_is_reclaimed_once_its_bucket_is_needed(fp, table_name):
    # Waiters break a dead claimer's lock only when they look for its fp.
    # A claimer killed before publishing fp over a never-used slot (fp 0,
    # no key's) or claiming a one-off key (a spoofed IP) would hold its slot
    # for good, unless claims that find their buckets full break such locks.
    table = SharedTable.open(table_name, capacity=64)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    holder = ctx.Process(target=_hold_fp, args=(table_name, fp, q))
    holder.start()
    slot = q.get(timeout=60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert table.stats().locked_slots == 1 and (table.slots["tat"][slot] >> 62) == -1
    lim = Limiter("1/1h", store=table, name="fill")
    slots = table.stats().slots
    for k in range(100_000):  # fill every slot with a live key
        lim.allow(k)
        if table.stats().live_keys == slots:
            break
    s = table.stats()
    assert (s.live_keys, s.locked_slots, s.lock_breaks, s.lock_timeouts) == (slots, 0, 1, 0)
    assert table.verify() == []


def test_a_stalled_live_claimer_times_out_into_on_full(table):
    holder = _start_holder(table, "victim")
    _core._set_lock_wait_limit(100_000_000)
    try:
        lim = Limiter("1/1h", store=table, name="held")
        assert not lim.hit("victim").allowed, "on_full=deny while the owner lives"
        assert Limiter("1/1h", store=table, name="held", on_full="allow").allow("victim")
        assert lim.allow("someone-else"), "other keys are not held up"
        assert table.stats().lock_timeouts == 2
    finally:
        _core._set_lock_wait_limit(1_000_000_000)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert lim.allow("victim")


def test_unrelated_process_attaches_by_name(table):
    lim = Limiter("3/1h", store=table, name="x")
    assert lim.allow("k")
    code = (f"import fastlimit; t = fastlimit.SharedTable.attach({table_name_of(table)!r}); "
            "l = fastlimit.Limiter('3/1h', store=t, name='x'); "
            "print(sum(l.allow('k') for _ in range(5)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    assert not lim.allow("k")


def table_name_of(table):
    return os.path.basename(table.path).removeprefix("fastlimit.")


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _exact_under_churn(name, barrier, q):
    table = SharedTable.attach(name)
    exact = Limiter("3/1h", store=table, name="exact")
    churn = Limiter("1000000000/1s", store=table, name="churn")  # expires within ns
    counts = np.zeros(300, dtype=np.int64)
    barrier.wait()
    for r in range(6):
        for k in range(300):
            counts[k] += exact.allow(k)
            churn.allow(k + 1000 * r)  # new or expired keys: claims and reclaims
    q.put(counts)


def test_exact_keys_survive_claim_churn_in_their_buckets(table_name):
    table = SharedTable.open(table_name, capacity=400)  # ~575 slots: buckets are shared
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_exact_under_churn, args=(table_name, barrier, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    tracked = total[total > 0]
    assert (total == 3).sum() + table.stats().full_events >= 300
    assert (tracked == 3).all(), np.unique(total, return_counts=True)
    assert table.verify() == []
