"""``Overrides`` at scale (issue 16): what a change costs the writer and
what it costs a worker's next check, with 100,000 overrides in place.

Figures (ns are per call, from ``time.perf_counter_ns``):

- one change: ``set()`` of one subject on a file of N overrides, median,
  99th percentile and worst of ``--changes`` calls (journal appends);
- a worker's next check: ``refresh()`` in another process (forked, with
  its own ``Overrides`` on the same files) right after each change, less
  ``refresh()`` when nothing changed (the mapped counter's read);
- compaction: ``set()`` calls until the journal is folded into a new
  snapshot and the files it replaced are freed, each timed: the appends
  before it, the change that starts the compaction, those that write a
  slice of the new snapshot after their own append, the one that puts it
  in place (with code that folds the journal in one change, as it did
  before compactions were written in slices, that one is the whole
  compaction), those that free the old
  files, and the run's mean per change; a worker's check after each of
  them (once the compaction is in place, it follows the old journal's
  seal);
- the host: a fixed piece of Python work timed after each ``set()``, to
  tell the host's own tail (this VM shares its cores) from the code's;
- a worker's start on the N overrides (snapshot + journal read whole);
- the cyclic garbage collector's collections during the timed calls
  (the writer's ``set()``, the worker's ``refresh()``): it is left on,
  and a change that allocates no lasting containers gives it nothing to
  collect;
- 5,000 one-by-one ``set()`` calls and one ``update()`` of 5,000, each on
  new files.

The files live in a temporary directory under ``--dir`` (default: the
table directory, /dev/shm, where a policy keeps them), removed at the end.

Usage: python bench/overrides_bench.py [--entries N] [--changes K] [--dir D]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from fastlimit import Overrides
from fastlimit.policy.overrides import JOURNAL_FACTOR, JOURNAL_MIN_BYTES, files_of
from fastlimit.stores.table import shm_dir


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(label: str, values: list[int]) -> None:
    print(f"  {label:<44} median {statistics.median(values) / 1e3:8.1f} us   "
          f"p99 {pct(values, 0.99) / 1e3:8.1f} us   max {max(values) / 1e3:8.1f} us"
          f"   ({len(values):,})")


class Collections:
    """Counts the garbage collector's runs while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.runs = [0, 0, 0]
        gc.callbacks.append(self._seen)

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if self.on and phase == "start":
            self.runs[info["generation"]] += 1

    def __str__(self) -> str:
        return "/".join(map(str, self.runs))


class Worker:
    """Another process on the same files, as a gunicorn worker: its checks
    run on its own core and caches, not after the writer's in this one."""

    def __init__(self, path: str) -> None:
        self.conn, child = mp.get_context("fork").Pipe()
        self.proc = mp.get_context("fork").Process(target=_serve, args=(path, child))
        self.proc.start()

    def ask(self, *msg: object) -> Any:
        self.conn.send(msg)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()


def _serve(path: str, conn: Any) -> None:
    o: Overrides | None = None
    collections = Collections()
    while (msg := conn.recv()) is not None:
        if msg[0] == "open":
            t0 = time.perf_counter_ns()
            o = Overrides(path)
            conn.send((time.perf_counter_ns() - t0, len(o)))
        elif msg[0] == "gc":
            conn.send(str(collections))
        else:  # check: a refresh after the change, then one with none
            assert o is not None
            collections.on = True
            t0 = time.perf_counter_ns()
            o.refresh()
            t1 = time.perf_counter_ns()
            o.refresh()
            t2 = time.perf_counter_ns()
            collections.on = False
            conn.send((t1 - t0, t2 - t1, len(o), str(o.rate_for("token", msg[1]))))


def fixed_work() -> int:
    """A fixed piece of Python work (some 5 us), timed: timed after each
    change too, it shows the host's own tail over the same stretch of
    time, to read the others' against (this VM shares its cores)."""
    t0 = time.perf_counter_ns()
    sum(range(600))
    return time.perf_counter_ns() - t0


def one_change(path: str, entries: int, changes: int) -> None:
    follower, behind = Worker(path), Worker(path)  # forked before the state is built
    writer = Overrides(path)
    collections = Collections()
    t0 = time.perf_counter_ns()
    writer.update({("token", f"tok_{i}"): f"{i % 500 + 1}/1h" for i in range(entries)})
    print(f"  {'update() of ' + format(entries, ',') + ' (new files)':<44} "
          f"{(time.perf_counter_ns() - t0) / 1e6:8.1f} ms")
    took, count = follower.ask("open")
    behind.ask("open")
    print(f"  {'a worker starts (reads all ' + format(count, ',') + ')':<44} "
          f"{took / 1e6:8.1f} ms")
    set_ns, check_ns, idle_ns, host_ns = [], [], [], []
    for k in range(changes):
        subject = f"tok_{(k * 7919) % entries}" if k % 2 else f"new_{k}"
        rate = f"{k % 900 + 1}/1m"
        collections.on = True
        t0 = time.perf_counter_ns()
        writer.set("token", subject, rate)
        set_ns.append(time.perf_counter_ns() - t0)
        collections.on = False
        host_ns.append(fixed_work())
        changed, idle, count, seen = follower.ask("check", subject)
        assert (count, seen) == (len(writer), rate)
        check_ns.append(changed)
        idle_ns.append(idle)
    show("one change: set()", set_ns)
    show("  the host: fixed work, after each", host_ns)
    show("a worker, its next check after it: refresh()", check_ns)
    show("a check with no change: refresh()", idle_ns)
    extra = statistics.median(check_ns) - statistics.median(idle_ns)
    print(f"  {'  extra for the change (medians)':<44} {extra / 1e3:8.1f} us")
    print(f"  {'  gc runs (gen 0/1/2): writer, worker':<44} {collections}, "
          f"{follower.ask('gc')}")

    # Changes until a compaction is in place and the files it replaced
    # are freed, each timed.  The follower checks every 1,000 changes,
    # after every change once the journal nears its budget, and after every
    # change from the compaction's start on; the other worker checks only
    # at the end.
    snapshot = os.stat(path)
    budget = max(JOURNAL_MIN_BYTES, JOURNAL_FACTOR * snapshot.st_size) - 1000
    journal = files_of(path)[2]
    run_ns: list[int] = []
    host_ns = []
    kinds: list[str] = []
    checks: dict[str, list[int]] = {}
    count, finished = 0, 0
    collections.runs = [0, 0, 0]
    # (a compaction under way, files still to free: code with compactions in slices)
    while not finished or (getattr(writer, "_retired", None) and count - finished < 1000):
        subject, rate = f"tok_{(count * 104729) % entries}", f"{count % 900 + 1}/1d"
        busy = getattr(writer, "_compaction", None) is not None
        collections.on = True
        t0 = time.perf_counter_ns()
        writer.set("token", subject, rate)
        took = time.perf_counter_ns() - t0
        collections.on = False
        count += 1
        run_ns.append(took)
        host_ns.append(fixed_work())
        now = os.stat(path)  # a compaction replaces it
        if finished:
            kind = "free"
        elif (now.st_ino, now.st_ctime_ns) != (snapshot.st_ino, snapshot.st_ctime_ns):
            kind, finished = "finish", count
        elif busy:
            kind = "slice"
        elif getattr(writer, "_compaction", None) is not None:
            kind = "start"
        else:
            kind = "append"
        kinds.append(kind)
        if kind != "append" or count % 1000 == 0 or os.stat(journal).st_size > budget:
            changed = follower.ask("check", subject)[0]
            checks.setdefault(kind, []).append(changed)
    late, _, n_late, seen_late = behind.ask("check", subject)
    assert n_late == len(writer) and seen_late == rate
    print(f"  compaction, after {finished:,} changes:")
    show("  every set() of the run", run_ns)
    show("    the host: fixed work, after each", host_ns)
    by_kind: dict[str, list[int]] = {}
    for t, k in zip(run_ns, kinds, strict=True):
        by_kind.setdefault(k, []).append(t)
    labels = {"append": "the set()s before it (appends)",
              "start": "the set() that starts it",
              "slice": "the set()s that write a slice",
              "finish": "the set() that puts it in place",
              "free": "the set()s after it, freeing the old files"}
    for kind, label in labels.items():
        if kind in by_kind:
            show("  " + label, by_kind[kind])
    print(f"  {'  mean set() over the run':<44} {sum(run_ns) / count / 1e3:8.1f} us")
    worker = {"slice": "a worker's check while it is under way",
              "finish": "a worker's check once it is in place",
              "free": "a worker's check while the old are freed"}
    for kind, label in worker.items():
        if kind in checks:
            show("  " + label, checks[kind])
    print(f"  {'  gc runs (gen 0/1/2): writer, worker':<44} {collections}, "
          f"{follower.ask('gc')}")
    print(f"  {f'a worker {count:,} changes behind catches up':<44} "
          f"{late / 1e6:8.1f} ms")
    follower.close()
    behind.close()
    writer.close()


def five_thousand(directory: str) -> None:
    path = os.path.join(directory, "one-by-one.json")
    writer, reader = Overrides(path), Overrides(path)
    t0 = time.perf_counter_ns()
    for i in range(5000):
        writer.set("token", f"tok_{i}", f"{i + 1}/1h")
    print(f"  {'5,000 one-by-one set()':<44} {(time.perf_counter_ns() - t0) / 1e6:8.1f} ms")
    reader.refresh()
    assert len(reader) == 5000
    writer.set("token", "tok_x", "1/1m")
    t0 = time.perf_counter_ns()
    reader.refresh()
    print(f"  {'  a worker, its next check after one more':<44} "
          f"{(time.perf_counter_ns() - t0) / 1e3:8.1f} us")
    path = os.path.join(directory, "bulk.json")
    bulk = Overrides(path)
    batch = {("token", f"tok_{i}"): f"{i + 1}/1h" for i in range(5000)}
    t0 = time.perf_counter_ns()
    bulk.update(batch)
    print(f"  {'update() of 5,000 (new files)':<44} {(time.perf_counter_ns() - t0) / 1e6:8.1f} ms")
    batch = {("token", f"tok_{i}"): f"{i + 2}/1h" for i in range(5000)}
    t0 = time.perf_counter_ns()
    bulk.update(batch)
    print(f"  {'update() of 5,000 more (a journal record)':<44} "
          f"{(time.perf_counter_ns() - t0) / 1e6:8.1f} ms")
    for o in (writer, reader, bulk):
        o.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--dir", default=shm_dir())
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="fastlimit-overrides-bench.", dir=args.dir)
    try:
        print(f"Overrides in {directory}, {args.entries:,} entries:")
        one_change(os.path.join(directory, "overrides.json"), args.entries, args.changes)
        print("5,000 overrides:")
        five_thousand(directory)
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
