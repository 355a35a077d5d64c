"""Overrides: compaction written in slices by the writer's next changes, the
files it replaces freed by slices once no reader holds them, and what a
SIGKILL at each step of it leaves for the next process."""

import json
import multiprocessing as mp
import os
import pathlib
import subprocess
import sys

import pytest

from fastlimit import Overrides, Rate
from fastlimit.policy import overrides as overrides_mod

HOUR = 3600 * 10**9
SUBJECTS = [f"s{i}" for i in range(40)]
TESTS = str(pathlib.Path(__file__).resolve().parent)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "overrides.json"


@pytest.fixture
def sliced(monkeypatch):
    # A journal past twice its snapshot is compacted, three entries of the
    # new snapshot per change: a compaction of a few dozen entries spans
    # many changes, as one of 100,000 does at the default slices.
    monkeypatch.setattr(overrides_mod, "JOURNAL_MIN_BYTES", 0)
    monkeypatch.setattr(overrides_mod, "COMPACT_SLICE", 3)
    monkeypatch.setattr(overrides_mod, "COMPACT_PER_CHANGE", 0)
    # and the changes made meanwhile folded into the entries over the next
    # few changes, one (and two per entry changed) at a time
    monkeypatch.setattr(overrides_mod, "MERGE_SLICE", 1)


def schedule(n):
    """``n`` changes of SUBJECTS: sets, clears and batches, deterministic."""
    for k in range(n):
        s = SUBJECTS[(k * 7) % len(SUBJECTS)]
        if k % 6 == 5:
            yield "clear", {s: None}
        elif k % 9 == 4:
            yield "update", {SUBJECTS[(k + j * 11) % len(SUBJECTS)]: f"{k + j + 1}/1m"
                             for j in range(3)}
        else:
            yield "set", {s: f"{k + 1}/1h"}


def replay(n):
    state = {}
    for _, changes in schedule(n):
        for s, rate in changes.items():
            if rate is None:
                state.pop(s, None)
            else:
                state[s] = Rate.parse(rate)
    return state


def run(o, op, changes):
    if op == "set":
        ((s, rate),) = changes.items()
        o.set("token", s, rate)
    elif op == "clear":
        ((s, _),) = changes.items()
        o.clear("token", s)
    else:
        o.update({("token", s): rate for s, rate in changes.items()})


def state(o):
    return {s: r for s in SUBJECTS if (r := o.rate_for("token", s)) is not None}


def snapshot_id(path):
    return json.loads(path.read_text())["journal"]


def test_a_compaction_in_slices_keeps_every_reader_exact(path, sliced, monkeypatch):
    writer, follower, behind = Overrides(path), Overrides(path), Overrides(path)
    loads = []
    read = overrides_mod._read
    monkeypatch.setattr(overrides_mod, "_read", lambda p: loads.append(p) or read(p))
    snapshots, under_way = {None}, 0
    for k, (op, changes) in enumerate(schedule(400)):
        run(writer, op, changes)
        under_way += writer._compaction is not None
        follower.refresh()
        expected = replay(k + 1)
        # the writer's own view, with a compaction under way or not
        assert state(writer) == expected and len(writer) == len(expected)
        assert state(follower) == expected and len(follower) == len(expected)
        snapshots.add(snapshot_id(path))
    assert len(snapshots) >= 6, "compacted several times"
    assert under_way >= 40, "the compactions spanned many changes"
    # the snapshot the first change made, and then none: every seal followed
    assert loads == [str(path)], "the follower loaded no snapshot after the first"
    behind.refresh()
    fresh = Overrides(path)
    expected = replay(400)
    for o in (behind, fresh):
        assert state(o) == expected and len(o) == len(expected)
    for o in (writer, follower, behind, fresh):
        o.close()


def test_clear_and_update_report_what_existed_while_a_compaction_is_under_way(path, sliced):
    writer = Overrides(path)
    writer.update({("token", s): "1/1h" for s in SUBJECTS})
    while writer._compaction is None:
        writer.set("token", "s0", "2/1h")
    assert writer.clear("token", "s1") is True
    assert writer.clear("token", "s1") is False
    assert writer.update({("token", "s1"): None, ("token", "s2"): None}) == 1
    writer.set("token", "new", "3/1h")
    assert writer.clear("token", "new") is True
    assert writer._compaction is not None, "all of it while the compaction was under way"
    assert len(writer) == len(SUBJECTS) - 2
    while writer._compaction is not None:
        writer.set("token", "s0", "2/1h")
    reader = Overrides(path)
    expected = {s: Rate.parse("1/1h") for s in SUBJECTS[3:]}
    expected["s0"] = Rate.parse("2/1h")
    for o in (writer, reader):
        assert state(o) == expected and o.rate_for("token", "new") is None
        assert len(o) == len(expected)
    writer.close()
    reader.close()


def _deleted_files_held(path):
    """This process's descriptors on files of ``path``'s directory that are
    no longer at their names."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(str(path)) and target.endswith(" (deleted)"):
            found.append(target)
    return found


def test_replaced_files_are_freed_only_once_no_reader_holds_them(path, sliced, monkeypatch):
    writer = Overrides(path)
    writer.update({("token", s): "1/1h" for s in SUBJECTS})
    lagging = Overrides(path)  # on the first journal, then not refreshed
    first = snapshot_id(path)
    k = 0
    while snapshot_id(path) == first:
        writer.set("token", SUBJECTS[k % 40], f"{k + 1}/1m")
        k += 1
    monkeypatch.setattr(overrides_mod, "JOURNAL_MIN_BYTES", 1 << 20)  # no more compactions
    for _ in range(50):  # changes enough to free all the replaced files hold
        writer.set("token", "s0", "5/1h")
    held = _deleted_files_held(path)
    assert [t for t in held if ".journal" in t], "the lagging reader's journal, kept"
    loads = []
    read = overrides_mod._read
    monkeypatch.setattr(overrides_mod, "_read", lambda p: loads.append(p) or read(p))
    lagging.refresh()
    # It was not truncated under the reader: it read it to the seal and
    # followed it, loading no snapshot.
    assert loads == []
    assert state(lagging) == state(writer) and len(lagging) == len(writer)
    for _ in range(5):
        writer.set("token", "s0", "6/1h")
    assert _deleted_files_held(path) == [], "each replaced file freed once let go"
    lagging.refresh()
    assert state(lagging) == state(writer)
    writer.close()
    lagging.close()


def test_a_reader_two_compactions_behind_loads_the_snapshot_at_once(path, sliced):
    writer = Overrides(path)
    writer.update({("token", s): "1/1h" for s in SUBJECTS})
    lagging = Overrides(path)
    seen = {snapshot_id(path)}
    k = 0
    while len(seen) < 3:  # its journal sealed for one that is replaced since
        writer.set("token", SUBJECTS[k % 40], f"{k + 1}/1m")
        seen.add(snapshot_id(path))
        k += 1
    lagging.refresh()  # once: no second refresh to put it right
    assert state(lagging) == state(writer) and len(lagging) == len(writer)
    writer.close()
    lagging.close()


def _fork_writer(o, conn):
    # The parent's compaction is under way: this child's changes do not
    # touch its file, and are in the journal the parent copies on.
    for k in range(5):
        o.set("token", f"child{k}", "9/1h")
    conn.send(True)


def test_a_child_forked_while_a_compaction_is_under_way_leaves_it_to_the_parent(path, sliced):
    writer = Overrides(path)
    writer.update({("token", s): "1/1h" for s in SUBJECTS})
    while writer._compaction is None:
        writer.set("token", "s0", "2/1h")
    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_fork_writer, args=(writer, child_end))
    child.start()
    assert parent_end.recv() is True
    child.join(timeout=60)
    assert child.exitcode == 0
    while writer._compaction is not None:
        writer.set("token", "s1", "3/1h")
    fresh = Overrides(path)
    for o in (writer, fresh):
        o.refresh()
        assert all(o.rate_for("token", f"child{k}") == Rate.parse("9/1h") for k in range(5))
        assert o.rate_for("token", "s1") == Rate.parse("3/1h")
        assert len(o) == len(SUBJECTS) + 5
    writer.close()
    fresh.close()


# A writer that SIGKILLs itself at one step of its first compaction after
# change ARM (with the compaction in slices).  It prints each change's
# number once set() returns: the change it was in when killed was appended
# (every step is after the change's own append), so the files must hold
# exactly the changes up to that one.
CRASH = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from fastlimit import Overrides
from fastlimit.policy import overrides as m
from test_overrides_compaction import run, schedule
m.JOURNAL_MIN_BYTES = 0
m.COMPACT_SLICE, m.COMPACT_PER_CHANGE, m.MERGE_SLICE = 3, 0, 1
path, point, arm = sys.argv[1], sys.argv[2], int(sys.argv[4])
armed = False
def kill():
    if armed:
        os.kill(os.getpid(), signal.SIGKILL)
def name(fd):
    return os.readlink(f"/proc/self/fd/{fd}")
real_replace, real_pwrite, real_fsync = os.replace, os.pwrite, os.fsync
def replace(src, dst):
    if point == "before-renames" and dst == path:
        kill()
    real_replace(src, dst)
    if point == "between-renames" and dst == path:
        kill()
    if point == "after-renames" and dst == path + ".journal":
        kill()
def pwrite(fd, data, offset):
    n = real_pwrite(fd, data, offset)
    if point == "in-slices" and name(fd) == f"{path}.{os.getpid()}.tmp" and offset > 0:
        kill()
    if point == "after-seal" and b'"next"' in data:
        kill()
    return n
def fsync(fd):
    real_fsync(fd)
    if point == "after-fsync" and name(fd) == f"{path}.{os.getpid()}.tmp":
        kill()
os.replace, os.pwrite, os.fsync = replace, pwrite, fsync
o = Overrides(path)
for k, (op, changes) in enumerate(schedule(400)):
    armed = k >= arm
    run(o, op, changes)
    print(k, flush=True)
"""

POINTS = ["in-slices", "after-fsync", "before-renames", "between-renames", "after-renames",
          "after-seal"]


@pytest.mark.parametrize("point", POINTS)
def test_a_writer_killed_at_any_step_of_a_compaction_leaves_a_readable_state(path, point,
                                                                              sliced):
    arm = 60  # past the first snapshot and compaction: a journal and a seal before
    reader = Overrides(path)  # following the files from the start
    done = subprocess.run([sys.executable, "-c", CRASH, str(path), point, TESTS, str(arm)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    killed_in = int(done.stdout.split()[-1]) + 1
    assert killed_in >= arm
    expected = replay(killed_in + 1)
    reader.refresh()
    fresh = Overrides(path)
    for o in (reader, fresh):
        assert state(o) == expected and len(o) == len(expected), point
    # The next writer carries on from there, through compactions of its own.
    writer = Overrides(path)
    writer.set("token", "after", "1/1d")
    for k in range(300):
        writer.set("token", SUBJECTS[k % 40], f"{k + 1}/1d")
    reader.refresh()
    late = Overrides(path)
    for o in (writer, reader, late):
        assert state(o) == state(writer) and len(o) == len(writer)
        assert o.rate_for("token", "after") == Rate.parse("1/1d")
    for o in (reader, fresh, writer, late):
        o.close()


def test_a_snapshot_between_its_renames_continues_the_old_journal(path, sliced):
    # As the kill between the renames leaves it, and as a worker starting in
    # that instant finds it: the new snapshot, the old journal still at its
    # name.  The snapshot's 'continues' names that journal and the offset
    # its state is at; the records after it are applied.
    writer = Overrides(path)
    writer.update({("token", s): "1/1h" for s in SUBJECTS})
    while writer._compaction is None:
        writer.set("token", "s0", "2/1h")
    journal = pathlib.Path(str(path) + ".journal")
    real_replace = os.replace
    parked = []

    def replace(src, dst):
        if dst == str(journal):
            parked.append(src)  # the new journal, not renamed yet
            raise OSError("stopped between the renames")
        real_replace(src, dst)

    writer.set("token", "s1", "3/1h")  # under way: appended, a slice written
    os.replace = replace
    try:
        while writer._compaction is not None:
            writer.set("token", "s1", "3/1h")
    finally:
        os.replace = real_replace
    assert parked and pathlib.Path(parked[0]).exists() is False  # removed on failure
    data = json.loads(path.read_text())
    assert data["continues"]["journal"] != data["journal"]
    fresh = Overrides(path)
    expected = {s: Rate.parse("1/1h") for s in SUBJECTS}
    expected.update(s0=Rate.parse("2/1h"), s1=Rate.parse("3/1h"))
    assert state(fresh) == expected and len(fresh) == len(expected)
    # and writers carry on from that state, on the journal it continues
    writer.set("token", "s2", "4/1h")
    fresh.refresh()
    expected["s2"] = Rate.parse("4/1h")
    assert state(fresh) == expected == state(Overrides(path))
    writer.close()
    fresh.close()


def test_a_compaction_of_no_entries_writes_a_good_snapshot(path, sliced):
    writer = Overrides(path)
    writer.set("token", "s0", "1/1h")
    writer.clear("token", "s0")
    first = snapshot_id(path)
    while snapshot_id(path) == first:  # drops of nothing: records all the same
        assert writer.clear("token", "s0") is False
    assert json.loads(path.read_text())["overrides"] == {}
    fresh = Overrides(path)
    assert len(fresh) == len(writer) == 0 and state(fresh) == {}
    writer.close()
    fresh.close()
