"""SharedTable lifecycle, layout checks, stats and table-full behaviour."""

import errno
import logging
import multiprocessing as mp
import os
import pickle

import numpy as np
import pytest

from fastlimit import (
    ConfigurationError,
    FakeClock,
    Limiter,
    Overrides,
    Policy,
    SharedTable,
    TableError,
    TableFullError,
)
from fastlimit.stores import table as table_mod


def path_of(name):
    return os.path.join(table_mod.shm_dir(), f"fastlimit.{name}")


def test_open_creates_then_attaches_to_the_same_state(table_name, clock):
    a = SharedTable.open(table_name, capacity=1000)
    b = SharedTable.open(table_name)
    assert b.capacity == 1000 and b.path == a.path == path_of(table_name)
    la = Limiter("3/1h", store=a, name="api", clock=clock)
    lb = Limiter("3/1h", store=b, name="api", clock=clock)
    assert la.allow("k", 2)
    assert lb.peek("k").remaining == 1
    assert SharedTable.open(table_name, capacity=1000).capacity == 1000
    with pytest.raises(TableError, match="has capacity 1000, not 2000"):
        SharedTable.open(table_name, capacity=2000)


def test_create_and_attach_insist(table_name):
    with pytest.raises(TableError, match="no table at .*create it first"):
        SharedTable.attach(table_name)
    SharedTable.create(table_name, capacity=100)
    with pytest.raises(TableError, match="already exists"):
        SharedTable.create(table_name, capacity=100)
    assert SharedTable.attach(table_name, capacity=100).capacity == 100


def test_file_is_private_to_the_user(table):
    assert os.stat(table.path).st_mode & 0o777 == 0o600


def test_rejects_foreign_files(table_name):
    with open(path_of(table_name), "wb") as f:
        f.write(b"NOTMINE!" + bytes(8000))
    with pytest.raises(TableError, match="is not a fastlimit table"):
        SharedTable.open(table_name)


def test_rejects_other_layout_versions(table_name):
    SharedTable.create(table_name, capacity=100).close()
    with open(path_of(table_name), "r+b") as f:
        f.seek(8)
        f.write((99).to_bytes(4, "little"))
    with pytest.raises(TableError, match="layout version 99; this fastlimit uses version 3"):
        SharedTable.attach(table_name)


def test_rejects_truncated_tables(table_name):
    SharedTable.create(table_name, capacity=1000).close()
    os.truncate(path_of(table_name), 5000)
    with pytest.raises(TableError, match="is 5000 bytes, expected .*corrupt"):
        SharedTable.attach(table_name)


def test_small_foreign_files_are_refused_and_left_untouched(tmp_path):
    # a file shorter than a header was once taken for a half-made table and
    # overwritten: SharedTable.open(path="settings.json") destroyed it
    for content in (b'{"debug": true}\n', b"\0" * 100 + b"x", b"\0" * 5000 + b"data" * 100):
        p = tmp_path / "settings.json"
        p.write_bytes(content)
        with pytest.raises(TableError, match=f"{p} is not a fastlimit table .*left untouched"):
            SharedTable.open(path=p, capacity=100)
        assert p.read_bytes() == content


def test_a_table_shorter_than_its_header_is_corrupt(table_name):
    SharedTable.create(table_name, capacity=100).close()
    os.truncate(path_of(table_name), 100)
    with pytest.raises(TableError, match="is 100 bytes, shorter than its 4096-byte header"):
        SharedTable.attach(table_name)


def test_links_directories_and_devices_are_refused(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(TableError, match="is a symbolic link"):
        SharedTable.open(path=tmp_path / "link", capacity=100)
    assert target.read_bytes() == b"precious"
    os.mkfifo(tmp_path / "fifo")
    for p in (tmp_path / "fifo", "/dev/null"):
        with pytest.raises(TableError, match=f"{p} is not a regular file"):
            SharedTable.open(path=p, capacity=100)
    with pytest.raises(TableError, match="cannot open table .*Is a directory"):
        SharedTable.open(path=tmp_path, capacity=100)


def test_a_table_owned_by_another_user_is_refused(table_name, monkeypatch):
    # Its owner knows the hash secret and can rewrite any key's state: a
    # name in /dev/shm (writable by all) could have been taken first.
    SharedTable.create(table_name, capacity=100).close()
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    expected = (f"table {path_of(table_name)} is owned by uid {me}, "
                f"not by this process's uid {me + 1}")
    for attempt in (lambda: SharedTable.attach(table_name), lambda: SharedTable.open(table_name)):
        with pytest.raises(TableError, match=expected):
            attempt()


def test_overrides_files_of_another_user_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "overrides.json"
    Overrides(path).set("token", "tok_1", "500/1h")
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(TableError, match=f"overrides.json.gen is owned by uid {me}"):
        Overrides(path)


def test_overrides_are_never_written_through_a_planted_link(tmp_path):
    path = tmp_path / "overrides.json"
    overrides = Overrides(path)
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    (tmp_path / f"overrides.json.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        overrides.set("token", "tok_1", "500/1h")
    assert target.read_bytes() == b"keep" and not path.exists()


def _as_nobody(work, q):
    """In a forked child: drop to nobody, run ``work``, report the outcome."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
    try:
        q.put(("ok", work()))
    except Exception as e:
        q.put((type(e).__name__, str(e)))


def _run_as_nobody(work):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_as_nobody, args=(work, q))
    p.start()
    outcome = q.get(timeout=60)
    p.join()
    return outcome


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to another user (nobody) needs root")


@needs_root
def test_a_0600_table_cannot_be_opened_by_another_user(table_name):
    t = SharedTable.create(table_name, capacity=100)
    Limiter("1/1h", store=t).hit("k")
    path = path_of(table_name)
    for work in (lambda: SharedTable.attach(table_name).capacity,
                 lambda: SharedTable.open(table_name).capacity):
        assert _run_as_nobody(work) == (
            "TableError", f"cannot open table {path}: Permission denied")
    assert _run_as_nobody(lambda: open(path, "rb").read(64))[0] == "PermissionError", \
        "nor read its secret"


@needs_root
def test_a_table_another_user_made_first_is_refused(table_name):
    # nobody takes the name in /dev/shm before the service starts
    made = _run_as_nobody(lambda: SharedTable.open(table_name, capacity=100).path)
    assert made == ("ok", path_of(table_name))
    nobody = os.stat(path_of(table_name)).st_uid
    with pytest.raises(TableError, match=f"is owned by uid {nobody}, not by this process's uid 0"):
        SharedTable.open(table_name, capacity=100)


def test_half_made_table_is_reinitialised(table_name):
    # a creator that died before writing its header leaves an empty file
    open(path_of(table_name), "wb").close()
    with pytest.raises(TableError, match="never initialised"):
        SharedTable.attach(table_name)
    t = SharedTable.open(table_name, capacity=64)
    assert t.capacity == 64 and t.verify() == []
    t.close()
    # one that died after writing all but the magic (written last) too
    with open(path_of(table_name), "r+b") as f:
        f.write(bytes(8))
    t = SharedTable.open(table_name, capacity=32)
    assert t.capacity == 32 and t.verify() == []


def test_close_and_unlink(table_name, clock):
    t = SharedTable.open(table_name, capacity=100)
    lim = Limiter("1/1h", store=t, clock=clock)
    view = t.slots  # a numpy view handed out keeps the mapping alive
    assert lim.allow("k")
    t.close()
    t.close()
    assert t.closed and view.shape == (t._nbuckets * 8,)
    with pytest.raises(ValueError, match="closed"):
        lim.allow("k")
    with pytest.raises(ValueError, match="closed"):
        t.stats()
    with pytest.raises(ValueError, match="closed"):
        Limiter("1/1h", store=t)
    live = SharedTable.open(table_name)
    still = Limiter("1/1h", store=live, clock=clock)
    live.unlink()
    assert not os.path.exists(path_of(table_name))
    assert not still.allow("k"), "an unlinked table keeps working where it is mapped"
    fresh = Limiter("1/1h", store=SharedTable.open(table_name, capacity=100), clock=clock)
    assert fresh.allow("k"), "the name now names a new, empty table"
    live.unlink()  # already gone: no error


def test_stats_count_live_keys_and_bytes():
    clock = FakeClock()
    t = SharedTable.anonymous(capacity=1000)
    lim = Limiter("10/10s", store=t, clock=clock)
    for k in range(30):
        lim.hit(k, cost=k % 3 + 1)  # tats 1, 2 or 3 s ahead
    s = t.stats(now_ns=clock())
    assert (s.capacity, s.live_keys, s.locked_slots, s.full_events) == (1000, 30, 0, 0)
    assert s.slots >= 1000 and s.slots % 8 == 0
    clock.advance(2)
    assert t.stats(now_ns=clock()).live_keys == 10
    clock.advance(1)
    assert t.stats(now_ns=clock()).live_keys == 0


def test_memory_per_key_is_at_most_24_bytes():
    for capacity in (10_000, 100_000, 1_000_000):
        t = SharedTable.anonymous(capacity=capacity)
        assert t.stats().bytes_per_key <= 24, capacity
        assert t.nbytes == len(t._mm)
        t.close()


def test_header_is_a_numpy_record(table):
    h = table.header
    assert bytes(h["magic"]) == b"FLTABLE1" and h["version"] == 3
    assert h["capacity"] == 4096 and h["slot_size"] == 16 and h["bucket_slots"] == 8
    assert h["secret"].any(), "a random 128-bit secret"
    assert table.slots.dtype.names == ("fp", "tat")


def test_each_table_has_its_own_secret(table_name):
    a = SharedTable.anonymous(capacity=10)
    b = SharedTable.anonymous(capacity=10)
    assert not np.array_equal(a.header["secret"], b.header["secret"])
    fa = Limiter("1/1s", store=a)._impl.fingerprint("k")
    fb = Limiter("1/1s", store=b)._impl.fingerprint("k")
    assert fa != fb


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "-x", "a" * 201, "sp ace", 5])
def test_table_names_are_validated(name):
    with pytest.raises(ConfigurationError, match="is not valid"):
        SharedTable.open(name)


@pytest.mark.parametrize("capacity", [0, -1, 10**10, 2.5, True, "100"])
def test_capacity_is_validated(capacity, table_name):
    with pytest.raises(ConfigurationError, match="capacity must be"):
        SharedTable.open(table_name, capacity=capacity)


def test_on_full_is_validated(table_name):
    expected = "on_full must be one of 'deny', 'allow', 'raise', got 'yes'"
    with pytest.raises(ConfigurationError, match=expected):
        SharedTable.open(table_name, on_full="yes")


def test_table_needs_a_name_or_path():
    with pytest.raises(ConfigurationError, match="needs a name"):
        SharedTable.open()


def test_path_tables_live_where_asked(tmp_path, clock):
    p = tmp_path / "rates.tbl"
    t = SharedTable.open(path=p, capacity=100)
    Limiter("1/1h", store=t, clock=clock).hit("k")
    t.close()
    again = SharedTable.open(path=str(p))
    assert not Limiter("1/1h", store=again, clock=clock).allow("k"), "state persists in the file"
    with pytest.raises(TableError, match="directory does not exist"):
        SharedTable.open(path=tmp_path / "missing" / "t")


def test_table_from_an_earlier_boot_is_cleared(tmp_path, clock, caplog, monkeypatch):
    p = tmp_path / "rates.tbl"
    t = SharedTable.open(path=p, capacity=100)
    Limiter("1/1h", store=t, clock=clock).hit("k")
    t.close()
    monkeypatch.setattr(table_mod, "_boot_id", lambda: b"\x01" * 16)  # a new boot
    with caplog.at_level(logging.WARNING, logger="fastlimit"):
        again = SharedTable.open(path=p)
    assert "before the last reboot" in caplog.text
    assert Limiter("1/1h", store=again, clock=clock).allow("k"), "old-boot times are meaningless"


def test_no_space_is_a_clear_error(table_name, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    expected = r"cannot allocate \d+ bytes .*capacity 100000.*--shm-size"
    with pytest.raises(TableError, match=expected):
        SharedTable.open(table_name, capacity=100_000)
    assert os.path.getsize(path_of(table_name)) == 0


# -- full tables ---------------------------------------------------------------

def fill(on_full):
    """A tiny table whose every slot holds a live key."""
    clock = FakeClock()
    t = SharedTable.anonymous(capacity=8, on_full=on_full)
    lim = Limiter("1/1h", store=t, clock=clock)
    slots = t.stats().slots
    for k in range(10_000):
        lim.hit(f"key-{k}")
        if t.stats(clock()).live_keys == slots:
            return t, lim, clock, slots
    raise AssertionError("the table never filled")


@pytest.mark.parametrize("on_full", ["deny", "allow", "raise"])
def test_table_full_behaviour(on_full):
    t, lim, clock, tracked = fill("allow")
    assert tracked >= 8, "holds at least its capacity"
    events = t.stats(clock()).full_events
    lim = Limiter("1/1h", store=t, clock=clock, on_full=on_full)
    if on_full == "raise":
        with pytest.raises(TableFullError, match="no free slot for key 'new' of 'default'"):
            lim.hit("new")
        with pytest.raises(TableFullError):
            lim.allow("new")
        with pytest.raises(TableFullError):
            lim.hit_many(["key-0", "new"])
    else:
        d = lim.hit("new")
        assert d.allowed == (on_full == "allow")
        assert lim.allow("new") == (on_full == "allow")
        if on_full == "deny":
            assert d.retry_after_ns == lim.rate.emission_interval_ns and d.remaining == 0
        else:
            assert d.remaining == 0 and d.reset_after == 3600
        assert lim.hit_many(["new", "key-0"]).tolist() == [on_full == "allow", False]
    assert t.stats(clock()).full_events == events + 3
    assert not lim.allow("key-0"), "tracked keys keep their state"


def test_expired_slots_are_reused_without_a_sweeper():
    t, lim, clock, tracked = fill("deny")
    assert not lim.allow("newcomer")
    clock.advance(3600)  # every key fully replenished: every slot free
    assert t.stats(clock()).live_keys == 0
    admitted = sum(lim.allow(f"other-{k}") for k in range(300))
    assert admitted == t.stats(clock()).live_keys == tracked, "every slot was reused"
    assert t.verify() == []


def test_verify_finds_corruption():
    t = SharedTable.anonymous(capacity=100)
    lim = Limiter("1/1h", store=t)
    lim.hit("a")
    assert t.verify() == []
    slots = t.slots
    i = int(np.nonzero(slots["fp"])[0][0])
    j = (i + 1) % len(slots)
    slots[j] = slots[i]  # two slots for one key
    problems = t.verify()
    assert any("owns 2 slots" in p for p in problems)
    slots["fp"][j] = 0
    assert any("holds state" in p for p in t.verify())


# -- sharing ---------------------------------------------------------------

def _hit_in_child(lim, q):
    q.put([lim.allow("k") for _ in range(3)])


def test_anonymous_table_is_shared_with_forked_children(clock):
    lim = Limiter("4/1h", store=SharedTable.anonymous(capacity=100))
    assert lim.allow("k")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_hit_in_child, args=(lim, q))
    p.start()
    assert q.get(timeout=30) == [True, True, True]
    p.join()
    assert not lim.allow("k")


def test_anonymous_table_cannot_be_pickled():
    with pytest.raises(TypeError, match="shared only with forked processes"):
        pickle.dumps(SharedTable.anonymous(capacity=10))


def test_named_table_and_limiter_pickle_to_an_attach(table):
    lim = Limiter("2/1h", store=table, name="x", burst=2)
    lim.hit("k")
    twin = pickle.loads(pickle.dumps(lim))
    assert (twin.name, twin.burst, twin.rate, twin.store.path) == ("x", 2, lim.rate, table.path)
    assert twin.hit("k").remaining == 0


@pytest.mark.slow
def test_spawned_children_share_a_named_table(table):
    lim = Limiter("4/1h", store=table)
    assert lim.allow("k")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hit_in_child, args=(lim, q))
    p.start()
    assert q.get(timeout=60) == [True, True, True]
    p.join()
    assert not lim.allow("k")


def _open_at_once(name, barrier, q):
    barrier.wait()
    t = SharedTable.open(name, capacity=5000)
    q.put(bytes(t.header["secret"].tobytes()))


@pytest.mark.slow
def test_many_processes_opening_at_once_get_one_table(table_name):
    ctx = mp.get_context("spawn")
    n = 6
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(table_name, barrier, q)) for _ in range(n)]
    for p in procs:
        p.start()
    secrets = {q.get(timeout=60) for _ in range(n)}
    for p in procs:
        p.join()
    assert len(secrets) == 1, "exactly one process created the table"
    assert SharedTable.attach(table_name).verify() == []


# -- one clock, one namespace, a header that cannot silently change --------------------


def test_a_table_runs_on_one_clock(table_name, clock):
    import time
    t = SharedTable.open(table_name, capacity=100)
    assert t.clock is None
    Limiter("5/1m", store=t, name="a").hit("k")  # the first limiter settles it
    assert t.clock == "monotonic"
    Limiter("5/1m", store=t, name="b", clock=time.monotonic_ns).hit("k")  # the same clock
    for foreign in (time.time_ns, clock):
        with pytest.raises(ConfigurationError, match=r"limiter 'c' runs on an injected clock, "
                                                     r"but table .* runs on CLOCK_MONOTONIC"):
            Limiter("5/1m", store=t, name="c", clock=foreign)
    with pytest.raises(ConfigurationError, match="runs on CLOCK_MONOTONIC"):
        Policy.from_dict({"identities": {"session": {"rate": "9/1m"},
                                         "anonymous": {"rate": "5/1m"}}}, store=t, clock=clock)


def test_a_table_of_an_injected_clock_refuses_the_monotonic_one(clock):
    t = SharedTable.anonymous(capacity=100)
    Limiter("5/1m", store=t, clock=clock).hit("k")
    assert t.clock == "injected"
    with pytest.raises(ConfigurationError, match="runs on CLOCK_MONOTONIC, but table "
                                                 r"\(anonymous\) runs on an injected clock"):
        Limiter("5/1m", store=t, name="other")


def _limiter_on(name, clock_name):
    import time
    clock = {"wall": time.time_ns, "monotonic": None}[clock_name]
    try:
        Limiter("5/1m", store=SharedTable.attach(name), name="w", clock=clock).hit("k")
    except ConfigurationError as e:
        return str(e)
    return "accepted"


def test_another_process_on_a_foreign_clock_is_refused(table_name):
    t = SharedTable.open(table_name, capacity=100)
    Limiter("5/1m", store=t, name="a").hit("k")
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_limiter_on, (table_name, "monotonic")) == "accepted"
        assert "runs on an injected clock, but table" in pool.apply(
            _limiter_on, (table_name, "wall"))
    assert Limiter("5/1m", store=t, name="a").peek("k").remaining == 4, "state untouched"


def test_a_flipped_byte_of_the_header_is_refused(table_name):
    t = SharedTable.open(table_name, capacity=100)
    Limiter("5/1m", store=t).hit("k")
    t.close()
    with open(path_of(table_name), "r+b") as f:
        f.seek(48)  # the secret
        byte = f.read(1)
        f.seek(48)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(TableError, match="header is corrupt .*checksum.*fastlimit rm"):
        SharedTable.attach(table_name)


def _unshare(*flags):
    import shutil
    import subprocess
    exe = shutil.which("unshare")
    if exe is None:
        pytest.skip("no unshare(1) here")
    probe = subprocess.run([exe, *flags, "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare {' '.join(flags)} is not permitted here: {probe.stderr!r}")
    return [exe, *flags, "--fork"]


ATTACH = """
import sys
from fastlimit import SharedTable, TableError
try:
    SharedTable.attach(sys.argv[1])
except TableError as e:
    print(e)
else:
    print("attached")
"""


@pytest.mark.parametrize(("flags", "namespace"), [
    (("--pid", "--mount-proc"), "pid"),
    (("--time", "--monotonic", "100000"), "time"),
])
def test_a_process_of_another_namespace_is_refused(table_name, flags, namespace):
    import subprocess
    import sys
    argv = _unshare(*flags)
    SharedTable.open(table_name, capacity=100).close()
    out = subprocess.run([*argv, sys.executable, "-c", ATTACH, table_name],
                         capture_output=True, text=True, timeout=60)
    assert f"was made in {namespace} namespace {namespace}:[" in out.stdout, out
    assert ("shareProcessNamespace" if namespace == "pid" else "one time namespace") in out.stdout
    same = subprocess.run([sys.executable, "-c", ATTACH, table_name], capture_output=True,
                          text=True, timeout=60)
    assert same.stdout.strip() == "attached", same


def test_verify_reports_a_truncated_file_before_touching_it(table_name):
    t = SharedTable.open(table_name, capacity=1000)
    Limiter("5/1m", store=t).hit("k")
    assert t.verify() == []
    os.truncate(path_of(table_name), 8192)
    [problem] = t.verify()  # reading the slots now would be a SIGBUS
    assert "was truncated to 8192 bytes" in problem and "SIGBUS" in problem
    t.close()
    with pytest.raises(TableError, match="corrupt"):
        SharedTable.attach(table_name)


def test_stats_refuse_a_truncated_file_rather_than_die(table_name):
    t = SharedTable.open(table_name, capacity=1000)
    Limiter("5/1m", store=t).hit("k")
    os.truncate(path_of(table_name), 8192)
    with pytest.raises(TableError, match=r"truncated to 8192 bytes.*SIGBUS.*fastlimit rm"):
        t.stats()  # reading the slots would kill this process
    os.unlink(path_of(table_name))
    SharedTable.open(table_name, capacity=1000).close()  # a new file at the path
    with pytest.raises(TableError, match="truncated"):
        t.stats()  # still this table's file that is checked, not the path's
    t.close()


def test_a_table_can_be_made_for_one_clock(table_name, clock):
    import time

    from fastlimit import ConcurrencyLimit
    from fastlimit import clock as clock_mod
    t = SharedTable.create(table_name, capacity=100, clock="injected")
    assert t.clock == "injected"
    Limiter("5/1m", store=t, clock=clock).hit("k")
    with pytest.raises(ConfigurationError, match="runs on CLOCK_MONOTONIC, but table"):
        Limiter("5/1m", store=t, name="b")  # its keys would look live for years
    with pytest.raises(TableError, match=r"runs on an injected clock, not on CLOCK_MONOTONIC"
                                         r".*clock='injected'"):
        SharedTable.attach(table_name, clock="monotonic")
    assert SharedTable.attach(table_name, clock="injected").clock == "injected"
    with pytest.raises(ConfigurationError, match="'monotonic', 'injected' or None"):
        SharedTable.open(table_name, clock="wall")  # type: ignore[arg-type]
    m = SharedTable.anonymous(capacity=100, clock="monotonic")
    for same in (None, time.monotonic_ns, clock_mod.monotonic_ns):
        Limiter("5/1m", store=m, clock=same).hit("k")
    ConcurrencyLimit(2, m, name="c1")  # no clock: leases never read one
    with pytest.raises(ConfigurationError, match="'c2' runs on an injected clock"):
        ConcurrencyLimit(2, m, name="c2", clock=time.time_ns)
    assert m.clock == "monotonic"


@pytest.mark.parametrize("on_full", ["deny", "allow"])
def test_a_rate_states_take_is_hits_remaining_or_minus_one(clock, on_full):
    # take(k, c) == d.remaining if d.allowed else -1 for d = hit(k, c), on twin
    # states: denials, cost 0, and new keys in a small table by its on_full
    t = SharedTable.anonymous(capacity=8, on_full=on_full)
    took = t.rate_state("took", 10**8, 5, clock=clock)
    hits = t.rate_state("hits", 10**8, 5, clock=clock)
    got, want = [], []
    for i, cost in enumerate([1, 2, 0, 3, 1, 1, 0, 5, 2, 1] * 3):
        key = f"k{i % 3}" if i % 4 else f"new{i}"
        got.append(took.take(key, cost))
        d = hits.hit(key, cost)
        want.append(d.remaining if d.allowed else -1)
        clock.advance(0.01)
    assert got == want
    assert -1 in got and 0 in got
