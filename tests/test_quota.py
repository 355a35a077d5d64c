"""Calendar quotas: boundaries, persistence, exactness across processes."""

import multiprocessing as mp
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from fastlimit import (
    CapacityError,
    ConfigurationError,
    Decision,
    FakeClock,
    Limiter,
    Quota,
    QuotaSpec,
    SharedTable,
    TableError,
)

NS = 10**9


def at(text, tz=timezone.utc):
    """Epoch ns of an ISO time, e.g. at('2024-01-31T23:59:59')."""
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()) * NS


@pytest.fixture
def qpath(tmp_path):
    return tmp_path / "state" / "quotas.tbl"


def quota(qpath, spec, when, **kw):
    clock = FakeClock(at(when))
    return Quota(spec, path=qpath, clock=clock, **kw), clock


@pytest.mark.parametrize(
    "before, after, resets_at",
    [
        ("2023-01-31T23:59:59", "2023-02-01T00:00:00", "2023-02-01T00:00:00"),  # Jan 31 -> Feb 1
        ("2023-12-31T23:59:59", "2024-01-01T00:00:00", "2024-01-01T00:00:00"),  # Dec -> Jan
        ("2024-02-29T23:59:59", "2024-03-01T00:00:00", "2024-03-01T00:00:00"),  # leap day
        ("2023-02-28T23:59:59", "2023-03-01T00:00:00", "2023-03-01T00:00:00"),  # no leap day
    ],
)
def test_month_boundaries(qpath, before, after, resets_at):
    q, clock = quota(qpath, "3/month", before)
    assert [q.allow("acct") for _ in range(4)] == [True, True, True, False]
    denied = q.hit("acct")
    assert denied.retry_after_ns == denied.reset_after_ns == NS, "one second to the new month"
    assert q.usage("acct").resets_at == datetime.fromisoformat(resets_at).replace(
        tzinfo=timezone.utc)
    clock.set(at(after) - 1)
    assert not q.allow("acct")
    clock.set(at(after))
    assert q.usage("acct").used == 0, "a new period starts at zero, no sweeper"
    assert [q.allow("acct") for _ in range(4)] == [True, True, True, False]


def test_leap_february_is_29_days(qpath):
    leap, _ = quota(qpath, "1/month", "2024-02-01T00:00:00", name="leap")
    common, _ = quota(qpath, "1/month", "2023-02-01T00:00:00", name="common")
    assert leap.hit("a").reset_after_ns == 29 * 86400 * NS
    assert common.hit("a").reset_after_ns == 28 * 86400 * NS


def test_day_and_week_periods(qpath):
    q, clock = quota(qpath, "2/day", "2024-03-10T12:00:00", name="daily")
    w, _ = quota(qpath, "2/week", "2024-03-10T12:00:00", name="weekly")
    w.clock = clock
    assert q.allow("k") and q.allow("k") and not q.allow("k")
    assert w.allow("k") and w.allow("k") and not w.allow("k")
    assert w.usage("k").resets_at == datetime(2024, 3, 11, tzinfo=timezone.utc), "Monday"
    clock.set(at("2024-03-11T00:00:00"))  # a Monday: new day and new ISO week
    assert q.allow("k") and w.allow("k")


def test_time_zone_moves_the_boundary(qpath):
    # New York is UTC-5 in winter: its February starts at 05:00 UTC
    q, clock = quota(qpath, "1/month", "2024-02-01T04:59:59", tz="America/New_York")
    assert q.allow("k")
    assert not q.allow("k")
    assert q.usage("k").resets_at == datetime(2024, 2, 1, 5, tzinfo=timezone.utc)
    clock.set(at("2024-02-01T05:00:00"))
    assert q.allow("k")
    with pytest.raises(ConfigurationError, match="unknown time zone 'Mars/Olympus'"):
        Quota("1/month", path=qpath, tz="Mars/Olympus")


def test_decisions_cost_refund_reset(qpath):
    q, clock = quota(qpath, "10/month", "2024-05-20T00:00:00")
    d = q.hit("k", cost=4)
    left = at("2024-06-01T00:00:00") - clock()
    assert d == Decision(True, 10, 6, left, 0)
    assert q.peek("k", cost=7) == Decision(False, 10, 6, left, left)
    assert q.hit("k", cost=0) == q.peek("k")
    assert q.usage("k").used == 4
    assert q.refund("k", cost=3) and q.usage("k").used == 1
    assert q.refund("k", cost=5) and q.usage("k").used == 0, "never below zero"
    q.hit("k", cost=10)
    q.reset("k")
    assert q.usage("k").remaining == 10
    with pytest.raises(CapacityError, match="cost 11 exceeds the quota of 10 per month"):
        q.hit("k", cost=11)
    with pytest.raises(ValueError, match="cost must be >= 0"):
        q.hit("k", cost=-1)


def test_quota_names_and_files_are_separate(qpath, tmp_path):
    a, clock = quota(qpath, "1/month", "2024-05-20T00:00:00", name="ai")
    b = Quota("1/month", path=qpath, name="chat", clock=clock)
    c = Quota("1/month", path=tmp_path / "other.tbl", name="ai", clock=clock)
    assert a.allow("k") and b.allow("k") and c.allow("k")
    assert not a.allow("k")


@pytest.mark.parametrize(
    "text, want",
    [("500/month", (500, "month")), ("500 per month", (500, "month")), ("10/day", (10, "day")),
     ("70/week", (70, "week")), ("3/1month", (3, "month")), ("2 per days", (2, "day"))],
)
def test_spec_parse(text, want):
    spec = QuotaSpec.parse(text)
    assert (spec.limit, spec.unit) == want
    assert QuotaSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["", "500", "500/hour", "0/month", "x/month", "5/2months", None])
def test_spec_rejects(text):
    with pytest.raises(ConfigurationError):
        QuotaSpec.parse(text)


def test_quota_tables_and_rate_tables_do_not_mix(qpath, table):
    q, _ = quota(qpath, "1/month", "2024-05-20T00:00:00")
    with pytest.raises(ConfigurationError, match="needs a table of kind 'rates'"):
        Limiter("1/1s", store=q.store)
    with pytest.raises(ConfigurationError, match="needs a table of kind 'quotas'"):
        Quota("1/month", store=table)
    with pytest.raises(TableError, match="holds quotas, not rates"):
        SharedTable.open(path=qpath, kind="rates")


def test_default_path_is_under_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLIMIT_STATE_DIR", str(tmp_path / "st"))
    q = Quota("1/day")
    assert q.store.path == str(tmp_path / "st" / "quotas.tbl")
    assert os.stat(q.store.path).st_mode & 0o777 == 0o600


def test_counts_survive_a_process_restart(qpath):
    when = at("2024-05-20T00:00:00")
    code = ("import sys, fastlimit; q = fastlimit.Quota('5/month', path=sys.argv[1], "
            f"clock=lambda: {when}); print(sum(q.allow('acct') for _ in range(3)))")
    for expected in ("3", "2", "0"):
        out = subprocess.run([sys.executable, "-c", code, str(qpath)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected
    q, _ = quota(qpath, "5/month", "2024-05-20T00:00:00")
    assert q.usage("acct").used == 5


def test_counts_survive_a_reboot(qpath):
    q, _ = quota(qpath, "5/month", "2024-05-20T00:00:00")
    q.hit("acct", cost=2)
    q.store.flush()
    q.store.close()
    with open(qpath, "r+b") as f:  # as if written before the last reboot
        f.seek(64)
        f.write(b"\x01" * 16)
    q, _ = quota(qpath, "5/month", "2024-05-20T00:00:00")
    assert q.usage("acct").used == 2, "calendar counts do not depend on the boot"


def _spend(path, when, barrier, q):
    quota = Quota("1000/month", path=path, clock=lambda: when)
    barrier.wait()
    q.put(sum(quota.allow("shared") for _ in range(800)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_exact_across_four_processes(qpath, method):
    Quota("1000/month", path=qpath)  # create the file first
    ctx = mp.get_context(method)
    barrier, q = ctx.Barrier(4), ctx.Queue()
    when = at("2024-05-20T00:00:00")
    procs = [ctx.Process(target=_spend, args=(str(qpath), when, barrier, q)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert total == 1000
