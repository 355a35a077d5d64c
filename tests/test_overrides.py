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
