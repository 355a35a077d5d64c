"""Overrides: per-subject rates shared through a file and a mapped counter."""

import json
import logging
import multiprocessing as mp
import pathlib
import struct
import subprocess
import sys

import pytest

from fastlimit import ConfigurationError, Overrides, Rate


@pytest.fixture
def path(tmp_path):
    return tmp_path / "overrides.json"


def test_in_process_overrides():
    o = Overrides()
    assert o.rate_for("token", "t1") is None
    o.set("token", "t1", "500/1h")
    assert o.rate_for("token", "t1") == Rate(500, 3600 * 10**9)
    assert o.rate_for("token", "t2") is None
    assert o.rate_for("api", "t1") is None  # per limit
    assert len(o) == 1
    assert o.clear("token", "t1") is True
    assert o.clear("token", "t1") is False
    assert o.rate_for("token", "t1") is None


def test_a_change_is_seen_by_another_instance_at_its_next_refresh(path):
    writer, reader = Overrides(path), Overrides(path)
    writer.set("token", "t1", "2/1h")
    assert reader.rate_for("token", "t1") is None  # not refreshed yet
    reader.refresh()
    assert reader.rate_for("token", "t1") == Rate.parse("2/1h")
    writer.set("token", "t1", "7/15m")
    reader.refresh()
    assert reader.rate_for("token", "t1") == Rate.parse("7/15m")
    reader.clear("token", "t1")  # any process may write
    writer.refresh()
    assert writer.rate_for("token", "t1") is None
    late = Overrides(path)  # a process started later reads the file at once
    writer.set("token", "t9", "1/1d")
    late.refresh()
    assert late.rate_for("token", "t9") == Rate.parse("1/1d")
    for o in (writer, reader, late):
        o.close()


def test_the_file_holds_no_subjects_and_is_private(path):
    o = Overrides(path)
    o.set("token", "secret-token-value", "5/1m")
    text = path.read_text()
    assert "secret-token-value" not in text
    data = json.loads(text)
    assert [e["rate"] for e in data["overrides"].values()] == ["5/1m"]
    assert path.stat().st_mode & 0o777 == 0o600
    o.close()


def test_bad_rate_is_refused(path):
    o = Overrides(path)
    with pytest.raises(ConfigurationError):
        o.set("token", "t", "lots")
    with pytest.raises(ConfigurationError):
        o.set("token", "", "1/1m")
    assert not path.exists()
    o.close()


def test_a_corrupt_file_keeps_readers_going_and_stops_writers(path, caplog):
    writer, reader = Overrides(path), Overrides(path)
    writer.set("token", "t1", "3/1m")
    reader.refresh()
    path.write_text("{not json")
    _bump(path)
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        reader.refresh()
    assert "cannot load overrides" in caplog.text
    assert reader.rate_for("token", "t1") == Rate.parse("3/1m")
    with pytest.raises(ConfigurationError, match="overrides.json"):
        writer.set("token", "t2", "1/1m")
    writer.close()
    reader.close()


def test_counter_file_must_be_ours(path):
    (path.parent / "overrides.json.gen").write_bytes(b"NOTMAGIC" + bytes(8))
    with pytest.raises(ConfigurationError, match="not a fastlimit overrides counter"):
        Overrides(path)


def _writer(path, start, barrier):
    o = Overrides(path)
    barrier.wait()
    for i in range(start, start + 25):
        o.set("token", f"t{i}", f"{i + 1}/1h")


def test_writers_in_several_processes_lose_nothing(path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(str(path), 25 * k, barrier)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    o = Overrides(path)
    assert len(o) == 100
    assert all(o.rate_for("token", f"t{i}") == Rate(i + 1, 3600 * 10**9) for i in range(100))
    o.close()


def _inherited_writer(o, start, barrier):
    barrier.wait()
    for i in range(start, start + 25):
        o.set("token", f"t{i}", f"{i + 1}/1h")


def test_writers_forked_after_opening_still_exclude_each_other(path):
    # gunicorn --preload: the workers inherit one Overrides, and with it one
    # open file description, on which flock would not exclude them
    shared = Overrides(path)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_inherited_writer, args=(shared, 25 * k, barrier))
             for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    shared.refresh()
    assert len(shared) == 100
    shared.close()


def _bump(path):
    gen_file = str(path) + ".gen"
    with open(gen_file, "r+b") as f:  # as a writer would: bump the counter
        f.seek(8)
        (gen,) = struct.unpack("<Q", f.read(8))
        f.seek(8)
        f.write(struct.pack("<Q", gen + 1))


SHAPES = {
    "top-list": [],
    "salt": {"format": "fastlimit-overrides", "version": 1, "salt": "zz", "overrides": {}},
    "overrides-list": {"format": "fastlimit-overrides", "version": 1, "salt": "00",
                       "overrides": []},
    "entry": {"format": "fastlimit-overrides", "version": 1, "salt": "00",
              "overrides": {"x": "not an entry"}},
    "limit": {"format": "fastlimit-overrides", "version": 1, "salt": "00",
              "overrides": {"x": {"limit": 5, "rate": "1/1m"}}},
    "rate": {"format": "fastlimit-overrides", "version": 1, "salt": "00",
             "overrides": {"x": {"limit": "token", "rate": "lots"}}},
    # a key that is not a digest: written back into a snapshot as it is
    "digest": {"format": "fastlimit-overrides", "version": 1, "salt": "00",
               "overrides": {'"' * 32: {"limit": "token", "rate": "1/1m"}}},
    "continues": {"format": "fastlimit-overrides", "version": 2, "salt": "00",
                  "journal": "00" * 16, "continues": {"journal": "00" * 16, "offset": -1},
                  "overrides": {}},
}
NOBODY = 65534


def _plant(path, kind):
    """Put a bad overrides file of ``kind`` at ``path`` (replacing the good one)."""
    import os
    path.unlink()
    if kind == "nested":
        path.write_text("[" * 100_000)  # json: RecursionError
    elif kind in SHAPES:
        path.write_text(json.dumps(SHAPES[kind]))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        other = path.with_name("elsewhere.json")
        other.write_text("{}")
        path.symlink_to(other)
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe{" * 100)  # not UTF-8
    elif kind == "digits":
        path.write_text('{"format": "fastlimit-overrides", "version": ' + "9" * 5000 + "}")
    elif kind == "huge":
        with open(path, "wb") as f:  # sparse: costs no disk
            f.truncate((64 << 20) + 1)
    elif kind == "foreign":
        path.write_text("{}")
        os.chown(path, NOBODY, NOBODY)
    else:
        raise AssertionError(kind)


KINDS = ["nested", *SHAPES, "fifo", "link", "binary", "digits", "huge",
         pytest.param("foreign", marks=pytest.mark.skipif(
             not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
             reason="chown to another user needs root"))]
TESTS = str(pathlib.Path(__file__).resolve().parent)

# Run in a child under subprocess.run(timeout=...): a FIFO opened the old
# way would hang the test run, not fail it.
HOSTILE = """
import logging, pathlib, sys
sys.path.insert(0, sys.argv[3])
from test_overrides import _bump, _plant
from fastlimit import Overrides, Rate
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("fastlimit").addHandler(handler)
path = pathlib.Path(sys.argv[1])
writer, reader = Overrides(path), Overrides(path)
writer.set("token", "t1", "3/1m")
reader.refresh()
_plant(path, sys.argv[2])
_bump(path)
for _ in range(5):  # every request refreshes: the bad file is read once
    reader.refresh()
assert reader.rate_for("token", "t1") == Rate.parse("3/1m"), "the last good state"
print(len([r for r in records if "cannot load overrides" in r.getMessage()]))
for r in records:
    print(r.name, r.getMessage())
"""


def _child(script, *args, timeout=60):
    return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_file_keeps_the_last_good_state_and_is_logged_once(path, kind):
    done = _child(HOSTILE, path, kind, TESTS)
    assert done.returncode == 0, done.stderr
    count, *lines = done.stdout.splitlines()
    assert count == "1", done.stdout
    logger, message = lines[0].split(" ", 1)
    assert logger == "fastlimit" and f"cannot load overrides from {path}" in message, lines


BOOT = """
import sys
from fastlimit import Overrides
o = Overrides(sys.argv[1])
print("started", len(o))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_starts_with_a_hostile_file_in_place(path, kind):
    Overrides(path).set("token", "t1", "3/1m")
    _plant(path, kind)
    done = _child(BOOT, path)
    assert done.stdout.strip() == "started 0", done
    assert done.stderr.count("cannot load overrides") == 1, done.stderr


def test_a_fifo_for_the_counter_is_refused_without_hanging(path):
    import os
    os.mkfifo(str(path) + ".gen")
    done = _child(BOOT, path)
    assert done.returncode == 1
    assert "is not a regular file" in done.stderr, done.stderr


# -- at scale (issue 16): journal, bulk updates, compaction --------------------------

import zlib  # noqa: E402

from fastlimit.policy import overrides as overrides_mod  # noqa: E402

HOUR = 3600 * 10**9


def _gen(path):
    with open(str(path) + ".gen", "rb") as f:
        f.seek(8)
        return struct.unpack("<Q", f.read(8))[0]


def _journal(path):
    return pathlib.Path(str(path) + ".journal")


def _record(body: bytes, *, crc=None, length=None):
    """A journal record as the format in overrides.py lays it out."""
    n = len(body) if length is None else length
    return struct.pack("<II", n, zlib.crc32(body, n) if crc is None else crc) + body


def _snapshot_id(path):
    """Which snapshot is in place: each compaction names a new journal."""
    return json.loads(path.read_text())["journal"]


def _state(o, subjects, limit="token"):
    return {s: o.rate_for(limit, s) for s in subjects}


@pytest.fixture
def compact_often(monkeypatch):
    # Every journal longer than twice its snapshot is folded: a few dozen
    # changes of a small file make several compactions.
    monkeypatch.setattr(overrides_mod, "JOURNAL_MIN_BYTES", 0)


def test_update_sets_and_drops_many_at_once_in_one_bump(path):
    writer, reader = Overrides(path), Overrides(path)
    writer.update({("token", f"t{i}"): f"{i + 1}/1h" for i in range(10)})
    reader.refresh()
    gen = _gen(path)
    version = reader.version
    dropped = writer.update({("token", "t0"): None, ("token", "t1"): "9/1m",
                             ("token", "nobody"): None, ("api", "t2"): "4/1s"})
    assert dropped == 1  # t0 had one, "nobody" had none
    assert _gen(path) == gen + 1  # one bump for the batch
    reader.refresh()
    assert reader.version == version + 1  # one record applied at once
    assert reader.rate_for("token", "t0") is None
    assert reader.rate_for("token", "t1") == Rate.parse("9/1m")
    assert reader.rate_for("api", "t2") == Rate.parse("4/1s")
    assert reader.limits == {"token", "api"}
    assert len(reader) == 10
    assert writer.update({}) == 0 and _gen(path) == gen + 1  # nothing: no bump
    writer.update([(("token", "t3"), "1/1m"), (("token", "t3"), "2/1m")])  # last wins
    reader.refresh()
    assert reader.rate_for("token", "t3") == Rate.parse("2/1m")
    writer.close()
    reader.close()


@pytest.mark.parametrize("bad", [
    {("token", "a"): "1/1m", ("token", "b"): "lots"},
    {("token", "a"): "1/1m", ("token", ""): "1/1m"},
    {("token", "a"): "1/1m", "token": "1/1m"},
    {("token", "a"): "1/1m", ("token", "b"): 5},
])
def test_update_checks_everything_before_writing_anything(path, bad):
    o = Overrides(path)
    o.set("token", "a", "7/1h")
    gen = _gen(path)
    with pytest.raises(ConfigurationError, match="rate|subject|pair"):
        o.update(bad)
    assert _gen(path) == gen and o.rate_for("token", "a") == Rate.parse("7/1h")
    o.close()


def test_update_in_process():
    o = Overrides()
    assert o.update({("token", "a"): "1/1m", ("token", "b"): "2/1m"}) == 0
    assert o.update({("token", "a"): None}) == 1
    assert _state(o, ["a", "b"]) == {"a": None, "b": Rate.parse("2/1m")}
    assert o.limits == {"token"}
    assert o.update({("token", "b"): None}) == 1 and o.limits == frozenset()


def _bulk_child(opened, path, ready, go, out):
    o = opened if opened is not None else Overrides(path)
    o.refresh()
    ready.put(sorted((s, str(r)) for s, r in _state(o, [f"t{i}" for i in range(40)]).items()
                     if r is not None))
    go.wait(timeout=30)
    o.refresh()
    out.put((len(o), sorted((s, str(r)) for s, r in
                            _state(o, [f"t{i}" for i in range(40)]).items() if r is not None)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_bulk_update_is_seen_whole_by_another_process(path, method):
    ctx = mp.get_context(method)
    writer = Overrides(path)
    writer.update({("token", f"t{i}"): "1/1h" for i in range(20)})
    # forked: an Overrides opened before the fork, as gunicorn --preload has
    inherited = Overrides(path) if method == "fork" else None
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_bulk_child, args=(inherited, str(path), ready, go, out))
    child.start()
    assert ready.get(timeout=60) == sorted((f"t{i}", "1/1h") for i in range(20))
    batch = {("token", f"t{i}"): None for i in range(0, 20, 2)}
    batch.update({("token", f"t{i}"): f"{i}/1m" for i in range(20, 40)})
    batch[("token", "t1")] = "5/1s"
    assert writer.update(batch) == 10
    go.set()
    count, seen = out.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    expected = {f"t{i}": "1/1h" for i in range(1, 20, 2)}
    expected.update({f"t{i}": f"{i}/1m" for i in range(20, 40)})
    expected["t1"] = "5/1s"
    assert (count, seen) == (30, sorted(expected.items()))
    writer.close()


TORN_OR_BAD = {
    "torn": None,  # an unfinished record: a writer died mid-append
    "checksum": "checksum",
    "json": "json",
    "rate": "rate",
    "shape": "shape",
    "digest": "digest",
    "seal": "seal",
    "length": "length",
}


def _spoil(path, kind):
    """Append a record of ``kind`` after the journal's last good one, built
    from that last record (the t2 change), and return its offset."""
    journal = _journal(path)
    raw = journal.read_bytes()
    offset = len(raw)
    pos, last = 28, None  # after the journal's header
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        last, pos = raw[pos + 8:pos + 8 + n], pos + 8 + n
    changed = last.replace(b'"2/1h"', b'"9/1h"')
    assert changed != last
    spoilt = {
        "torn": _record(changed)[:-5],
        "checksum": _record(changed, crc=zlib.crc32(last)),
        "json": _record(b"{not json"),
        "rate": _record(last.replace(b'"2/1h"', b'"lots"')),
        "shape": _record(b'[["short", "token", "1/1m"]]'),
        "digest": _record(json.dumps([["a" * 31 + '"', "token", "1/1m"]]).encode()),
        "seal": _record(json.dumps({"next": "00" * 16, "snapshot": [1, 2, 3, 4, 5],
                                    "at": 3}).encode()),
        "length": _record(b"", length=(64 << 20) + 1),
    }[kind]
    with open(journal, "ab") as f:
        f.write(spoilt)
    return offset


@pytest.mark.parametrize("kind", TORN_OR_BAD)
def test_a_torn_or_corrupt_journal_record_is_never_applied(path, kind, caplog):
    writer, reader = Overrides(path), Overrides(path)
    writer.set("token", "t1", "1/1h")  # the first write makes the snapshot
    writer.set("token", "t2", "2/1h")  # this one is a journal record
    reader.refresh()
    offset = _spoil(path, kind)
    _bump(path)
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        for _ in range(5):  # every request refreshes: said once
            reader.refresh()
        late = Overrides(path)  # a worker starting now
    assert _state(reader, ["t1", "t2"]) == _state(late, ["t1", "t2"]) == {
        "t1": Rate.parse("1/1h"), "t2": Rate.parse("2/1h")}, "the last good state"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if kind == "torn":
        assert errors == []  # it may be an append under way
    else:
        assert len(errors) == 2, errors  # the reader once, the worker at its start
        assert all(f"cannot load overrides from {path}.journal" in m for m in errors)
        assert f"offset {offset}" in errors[0], errors
    caplog.clear()
    # The next write repairs: a torn tail dropped, a bad record's journal
    # folded (with every good change before it) into a new snapshot.
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        Overrides(path).set("token", "t3", "3/1h")
        for o in (reader, late):
            o.refresh()
    expected = {"t1": Rate.parse("1/1h"), "t2": Rate.parse("2/1h"), "t3": Rate.parse("3/1h")}
    for o in (reader, late, Overrides(path)):
        assert _state(o, ["t1", "t2", "t3"]) == expected and len(o) == 3
    messages = [r.getMessage() for r in caplog.records]
    if kind == "torn":
        assert messages == [f"fastlimit: {path}.journal ends in an unfinished record; "
                            f"dropping it"]
    else:  # the new writer read it at its start, then wrote a new snapshot
        assert len(messages) == 2, messages
        assert f"cannot load overrides from {path}.journal" in messages[0]
        assert f"writing a new snapshot of the overrides without {path}.journal" in messages[1]
    writer.close()
    reader.close()
    late.close()


def test_compaction_keeps_every_entry(path, compact_often):
    writer, follower, behind = Overrides(path), Overrides(path), Overrides(path)
    expected = {f"s{i}": Rate(i + 1, HOUR) for i in range(60)}
    writer.update({("token", s): r for s, r in expected.items()})
    follower.refresh()
    snapshots = {_snapshot_id(path)}
    for k in range(600):
        s = f"s{(k * 37) % 90}"
        if k % 5 == 4:
            writer.clear("token", s)
            expected.pop(s, None)
        elif k % 7 == 6:
            batch = {("token", f"s{(k + j) % 90}"): Rate(k + j + 1, 60 * 10**9) for j in range(4)}
            writer.update(batch)
            expected.update({key[1]: r for key, r in batch.items()})
        else:
            writer.set("token", s, Rate(k + 1, 60 * 10**9))
            expected[s] = Rate(k + 1, 60 * 10**9)
        follower.refresh()
        snapshots.add(_snapshot_id(path))
        if k % 50 == 0:
            assert _state(follower, [f"s{i}" for i in range(90)]) == \
                {f"s{i}": expected.get(f"s{i}") for i in range(90)}
    assert len(snapshots) >= 5, "compacted several times"
    behind.refresh()
    fresh = Overrides(path)
    everything = {f"s{i}": expected.get(f"s{i}") for i in range(90)}
    for o in (writer, follower, behind, fresh):
        assert _state(o, list(everything)) == everything
        assert len(o) == len(expected)
    # the snapshot alone holds them all once folded (no subject in it)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and "s1" not in path.read_text()
    for o in (writer, follower, behind, fresh):
        o.close()


def test_a_reader_far_behind_catches_up(path, monkeypatch):
    writer = Overrides(path)
    writer.set("token", "first", "1/1h")
    behind, journal_only = Overrides(path), Overrides(path)  # not refreshed for a while
    expected = {"first": Rate.parse("1/1h")}
    snapshot = _snapshot_id(path)
    for k in range(300):  # journal records only
        writer.set("token", f"j{k}", Rate(k + 1, HOUR))
        expected[f"j{k}"] = Rate(k + 1, HOUR)
    assert _snapshot_id(path) == snapshot, "no compaction yet"
    journal_only.refresh()
    assert _state(journal_only, list(expected)) == expected
    monkeypatch.setattr(overrides_mod, "JOURNAL_MIN_BYTES", 0)  # now compact often
    snapshots = {snapshot}
    for k in range(3000):
        writer.update({("token", f"x{k % 200}"): Rate(k + 1, HOUR),
                       ("token", f"j{k % 300}"): None})
        expected[f"x{k % 200}"] = Rate(k + 1, HOUR)
        expected.pop(f"j{k % 300}", None)
        snapshots.add(_snapshot_id(path))
    assert len(snapshots) >= 4
    subjects = ["first", *(f"x{i}" for i in range(200)), *(f"j{i}" for i in range(300))]
    for o in (behind, journal_only):
        o.refresh()
        assert _state(o, subjects) == {s: expected.get(s) for s in subjects}
        assert len(o) == len(expected) == 201
    for o in (writer, behind, journal_only):
        o.close()


def _mixed_writer(path, k, barrier):
    o = Overrides(path)
    barrier.wait()
    for step, (op, subjects, rate) in enumerate(_schedule(k)):
        if op == "set":
            o.set("token", subjects[0], rate)
        elif op == "clear":
            o.clear("token", subjects[0])
        else:
            o.update({("token", s): rate for s in subjects})
        if step % 10 == 0:
            o.refresh()


def _schedule(k):
    """Process ``k``'s changes, to its own subjects: the final state is exact."""
    for i in range(60):
        s = f"p{k}_{i % 20}"
        if i % 6 == 5:
            yield "clear", [s], None
        elif i % 6 == 3:
            yield "update", [f"p{k}_{(i + j) % 20}" for j in range(3)], f"{k * 100 + i + 1}/1m"
        else:
            yield "set", [s], f"{k * 100 + i + 1}/1h"


def _replay(k):
    state = {}
    for _, subjects, rate in _schedule(k):
        for s in subjects:
            if rate is None:
                state.pop(s, None)
            else:
                state[s] = Rate.parse(rate)
    return state


def test_concurrent_writers_in_several_processes_lose_no_update(path, compact_often):
    Overrides(path).set("token", "seed", "1/1h")
    first = _snapshot_id(path)
    ctx = mp.get_context("fork")  # the forked children compact often too
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_mixed_writer, args=(str(path), k, barrier)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert _snapshot_id(path) != first, "the writers compacted too"
    expected = {"seed": Rate.parse("1/1h")}
    for k in range(4):
        expected.update(_replay(k))
    subjects = ["seed", *(f"p{k}_{i}" for k in range(4) for i in range(20))]
    o = Overrides(path)
    assert _state(o, subjects) == {s: expected.get(s) for s in subjects}
    assert len(o) == len(expected)
    o.close()


def test_a_version_1_file_is_read_and_replaced_by_the_next_write(path):
    writer = Overrides(path)
    writer.update({("token", "a"): "1/1h", ("token", "b"): "2/1h"})
    data = json.loads(path.read_text())
    del data["journal"]
    data["version"] = 1  # as written before the journal
    _journal(path).unlink()
    path.write_text(json.dumps(data, indent=1))
    _bump(path)
    reader = Overrides(path)
    assert _state(reader, ["a", "b"]) == {"a": Rate.parse("1/1h"), "b": Rate.parse("2/1h")}
    writer.set("token", "c", "3/1h")
    reader.refresh()
    assert _state(reader, ["a", "b", "c"]) == {
        "a": Rate.parse("1/1h"), "b": Rate.parse("2/1h"), "c": Rate.parse("3/1h")}
    assert json.loads(path.read_text())["version"] == 2 and _journal(path).exists()
    writer.close()
    reader.close()


def test_a_planted_journal_is_refused(path, caplog):
    writer, reader = Overrides(path), Overrides(path)
    writer.set("token", "t1", "1/1h")
    reader.refresh()
    journal = _journal(path)
    journal.unlink()
    other = path.with_name("elsewhere")
    other.write_bytes(b"x")
    journal.symlink_to(other)
    reader.close()
    with caplog.at_level(logging.ERROR, logger="fastlimit"):
        late = Overrides(path)
    assert f"cannot load overrides from {path}" in caplog.text
    assert "Too many levels of symbolic links" in caplog.text
    assert late.rate_for("token", "t1") == Rate.parse("1/1h")  # the snapshot's
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        writer.set("token", "t2", "1/1m")  # replaces the link, never writes through it
    assert f"{path}.journal is missing or not the snapshot's" in caplog.text
    assert other.read_bytes() == b"x" and not journal.is_symlink()
    late.refresh()
    assert _state(late, ["t1", "t2"]) == {"t1": Rate.parse("1/1h"), "t2": Rate.parse("1/1m")}
    writer.close()
    late.close()
