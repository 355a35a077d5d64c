"""Calendar quotas: boundaries, persistence, exactness across processes.

Tests on the ``where`` fixture run twice: on a quota file, and on Redis (a
real redis-server on 127.0.0.1, see conftest.py), and must answer alike.
"""

import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

from fastlimit import (
    CapacityError,
    ConfigurationError,
    Decision,
    FakeClock,
    HeaderStyle,
    Limiter,
    Quota,
    QuotaSpec,
    RedisBackend,
    SharedTable,
    TableError,
)
from fastlimit.limiters.quota import CalendarWindow

NS = 10**9


def at(text, tz=timezone.utc):
    """Epoch ns of an ISO time, e.g. at('2024-01-31T23:59:59')."""
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()) * NS


@pytest.fixture
def qpath(tmp_path):
    return tmp_path / "state" / "quotas.tbl"


class Where:
    """Where a test's quotas count: a quota file, or Redis under a prefix of
    the test's own.  ``kw`` is what Quota takes for it (picklable: a
    RedisBackend pickles as its URL); ``other`` is a separate place of the
    same kind; ``code`` builds ``kw`` in a fresh interpreter."""

    def __init__(self, kind, tmp_path, server=None):
        self.kind = kind
        self.server = server
        self.backends = []
        self.kw = self._make(tmp_path / "state" / "quotas.tbl")
        self.other = self._make(tmp_path / "other.tbl")

    def _make(self, path):
        if self.kind == "table":
            return {"path": path}
        backend = RedisBackend(self.server.url, prefix=f"q{uuid.uuid4().hex[:10]}", timeout=10,
                               connect_timeout=10)
        self.backends.append(backend)
        return {"store": backend}

    @property
    def code(self):
        if self.kind == "table":
            return f"path={str(self.kw['path'])!r}"
        prefix = self.kw["store"].prefix
        return f"store=fastlimit.RedisBackend({self.server.url!r}, prefix={prefix!r})"


@pytest.fixture(params=["table", "redis"])
def where(request, tmp_path):
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    w = Where(request.param, tmp_path, server)
    yield w
    for b in w.backends:
        assert b.stats().errors == 0
        b.close()


def quota(where, spec, when, **kw):
    clock = FakeClock(at(when))
    return Quota(spec, clock=clock, **where.kw, **kw), clock


@pytest.mark.parametrize(
    "before, after, resets_at",
    [
        ("2023-01-31T23:59:59", "2023-02-01T00:00:00", "2023-02-01T00:00:00"),  # Jan 31 -> Feb 1
        ("2023-12-31T23:59:59", "2024-01-01T00:00:00", "2024-01-01T00:00:00"),  # Dec -> Jan
        ("2024-02-29T23:59:59", "2024-03-01T00:00:00", "2024-03-01T00:00:00"),  # leap day
        ("2023-02-28T23:59:59", "2023-03-01T00:00:00", "2023-03-01T00:00:00"),  # no leap day
    ],
)
def test_month_boundaries(where, before, after, resets_at):
    q, clock = quota(where, "3/month", before)
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


def test_leap_february_is_29_days(where):
    leap, _ = quota(where, "1/month", "2024-02-01T00:00:00", name="leap")
    common, _ = quota(where, "1/month", "2023-02-01T00:00:00", name="common")
    assert leap.hit("a").reset_after_ns == 29 * 86400 * NS
    assert common.hit("a").reset_after_ns == 28 * 86400 * NS


def test_day_and_week_periods(where):
    q, clock = quota(where, "2/day", "2024-03-10T12:00:00", name="daily")
    w, _ = quota(where, "2/week", "2024-03-10T12:00:00", name="weekly")
    w.clock = clock
    assert q.allow("k") and q.allow("k") and not q.allow("k")
    assert w.allow("k") and w.allow("k") and not w.allow("k")
    assert w.usage("k").resets_at == datetime(2024, 3, 11, tzinfo=timezone.utc), "Monday"
    clock.set(at("2024-03-11T00:00:00"))  # a Monday: new day and new ISO week
    assert q.allow("k") and w.allow("k")


def test_time_zone_moves_the_boundary(where, qpath):
    # New York is UTC-5 in winter: its February starts at 05:00 UTC
    q, clock = quota(where, "1/month", "2024-02-01T04:59:59", tz="America/New_York")
    assert q.allow("k")
    assert not q.allow("k")
    assert q.usage("k").resets_at == datetime(2024, 2, 1, 5, tzinfo=timezone.utc)
    clock.set(at("2024-02-01T05:00:00"))
    assert q.allow("k")
    with pytest.raises(ConfigurationError, match="unknown time zone 'Mars/Olympus'"):
        Quota("1/month", path=qpath, tz="Mars/Olympus")


def test_decisions_cost_refund_reset(where):
    q, clock = quota(where, "10/month", "2024-05-20T00:00:00")
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


def test_quota_names_and_stores_are_separate(where):
    a, clock = quota(where, "1/month", "2024-05-20T00:00:00", name="ai")
    b = Quota("1/month", **where.kw, name="chat", clock=clock)
    c = Quota("1/month", **where.other, name="ai", clock=clock)
    assert a.allow("k") and b.allow("k") and c.allow("k")
    assert not a.allow("k")
    assert not Quota("1/month", **where.kw, name="ai", clock=clock).allow("k"), "same name, store"


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
    q = Quota("1/month", path=qpath)
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


@pytest.mark.slow
def test_counts_survive_a_process_restart(where):
    when = at("2024-05-20T00:00:00")
    code = (f"import fastlimit; q = fastlimit.Quota('5/month', {where.code}, "
            f"clock=lambda: {when}); print(sum(q.allow('acct') for _ in range(3)))")
    for expected in ("3", "2", "0"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected
    q, _ = quota(where, "5/month", "2024-05-20T00:00:00")
    assert q.usage("acct").used == 5


def test_counts_survive_a_reboot(qpath):
    q = Quota("5/month", path=qpath, clock=FakeClock(at("2024-05-20T00:00:00")))
    q.hit("acct", cost=2)
    q.store.flush()
    q.store.close()
    import fastlimit.stores.table as table_mod
    with pytest.MonkeyPatch.context() as m:  # as if written before the last reboot
        m.setattr(table_mod, "_boot_id", lambda: b"\x01" * 16)
        q = Quota("5/month", path=qpath, clock=FakeClock(at("2024-05-20T00:00:00")))
        assert q.usage("acct").used == 2, "calendar counts do not depend on the boot"


def _spend(kw, when, barrier, q):
    quota = Quota("1000/month", clock=lambda: when, **kw)
    barrier.wait()
    q.put(sum(quota.allow("shared") for _ in range(800)))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_exact_across_four_processes(where, method):
    Quota("1000/month", **where.kw)  # create the file first
    ctx = mp.get_context(method)
    barrier, q = ctx.Barrier(4), ctx.Queue()
    when = at("2024-05-20T00:00:00")
    procs = [ctx.Process(target=_spend, args=(where.kw, when, barrier, q)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert total == 1000


# -- only on Redis ---------------------------------------------------------------


@pytest.fixture
def backend(redis_server):
    b = RedisBackend(redis_server.url, prefix=f"q{uuid.uuid4().hex[:10]}", timeout=10,
                     connect_timeout=10)
    yield b
    assert b.stats().errors == 0
    b.close()


def test_redis_keys_hold_period_and_count_and_outlive_the_period(backend, redis_server):
    q = Quota("5/month", store=backend, name="ai", clock=FakeClock(at("2024-05-31T23:00:00")))
    r = redis_server.client()
    key = backend.redis_key("ai", "acct", "quota")
    assert key == backend.prefix.encode() + b":ai:quota{acct}"
    assert q.peek("acct").allowed and not r.exists(key), "a peek writes nothing"
    q.hit("acct", cost=2)
    assert r.get(key) == b"%d 2" % ((2024 - 1970) * 12 + 5)  # the period's tag, the count
    # it expires an hour (the grace) after the period ends: 2 h from now
    assert 2 * 3600 * 1000 - 5000 < r.pttl(key) <= 2 * 3600 * 1000
    assert q.refund("acct", cost=2) and not r.exists(key), "a count of 0 is no key"
    lim = Limiter("1/1h", store=backend, name="ai")
    assert lim.allow("acct") and q.allow("acct"), "a limiter and a quota of one name never mix"
    assert r.exists(backend.redis_key("ai", "acct")) and r.get(key) == b"%d 1" % (54 * 12 + 5)


def test_a_lagging_host_counts_in_the_newer_period(backend, redis_server):
    # host A's clock has reached June, host B's lags 2 s behind, still in May
    a = Quota("3/month", store=backend, name="ai", clock=FakeClock(at("2024-06-01T00:00:01")))
    b = Quota("3/month", store=backend, name="ai", clock=FakeClock(at("2024-05-31T23:59:59")))
    key = backend.redis_key("ai", "acct", "quota")
    r = redis_server.client()
    assert b.hit("acct", cost=3).allowed and not b.allow("acct"), "May is spent"
    assert a.allow("acct"), "June starts at zero"
    pttl = r.pttl(key)
    assert b.allow("acct"), "B counts in June now: May is over for someone"
    assert a.usage("acct").used == b.usage("acct").used == 2
    assert r.pttl(key) >= pttl - 1000, "B's shorter May expiry did not replace June's"
    assert a.allow("acct") and not a.allow("acct") and not b.allow("acct"), "3 in June, exactly"


class SteppingClock:
    """A wall clock that moves on by ``step`` ns at every read (a busy
    machine between two reads), counting its reads."""

    def __init__(self, ns, step):
        self.ns = ns
        self.step = step
        self.reads = 0

    def __call__(self):
        self.reads += 1
        now = self.ns
        self.ns += self.step
        return now


@pytest.mark.parametrize("reset, expected", [
    ("epoch", str(at("2026-06-01T00:00:00") // NS)),
    ("iso", "2026-06-01T00:00:00.000Z"),
    ("delta", "1"),
])
def test_decide_reads_the_wall_clock_once_at_the_boundary(where, reset, expected):
    june = at("2026-06-01T00:00:00")
    clock = SteppingClock(june - 1, NS)  # May's last ns; each later read a second on
    q = Quota("3/month", clock=clock, **where.kw)
    style = HeaderStyle(reset=reset, ietf=True)
    r = q.decide("acct")
    assert clock.reads == 1
    assert r.wall_ns == june - 1
    assert r.decision == Decision(True, 3, 2, 1)
    assert r.window == CalendarWindow(31 * 86400 * NS)  # May's, the period it counted in
    assert style.render(r.decision, name="ai", rate=r.window, wall_now_ns=r.wall_ns) == [
        ("X-RateLimit-Limit", "3"), ("X-RateLimit-Remaining", "2"),
        ("X-RateLimit-Reset", expected),
        ("RateLimit-Policy", '"ai";q=3;w=2678400'), ("RateLimit", '"ai";r=2;t=1')]
    # the next reading is in June: a fresh count, June's window, July's reset
    r = q.decide("acct", consume=False)
    assert r.decision == Decision(True, 3, 3, 30 * 86400 * NS - NS + 1)
    assert r.window == CalendarWindow(30 * 86400 * NS)
    assert q.usage("acct").used == 0, "a peek counts nothing"
    assert q.window(june - 1) == CalendarWindow(31 * 86400 * NS)


def test_decide_checks_cost_like_hit(where):
    q = Quota("2/day", clock=FakeClock(at("2026-06-01T12:00:00")), **where.kw)
    assert q.decide("k", 2).decision.remaining == 0
    assert not q.decide("k").decision.allowed
    with pytest.raises(CapacityError, match="the quota of 2 per day"):
        q.decide("k", 3)


def test_hit_all_counts_quotas_on_one_clock_at_one_reading():
    """Two daily quotas on one wall clock, hit together as the day ends:
    both count in the same day (one reading), never one in each."""
    from fastlimit import LimitCheck, Quota, SharedTable, hit_all

    last_ns = 1_767_225_599_999_999_999  # 2025-12-31T23:59:59.999999999Z
    readings = []

    def clock():  # moves 1 ns at each reading: a second one is in the next day
        readings.append(None)
        return last_ns + len(readings) - 1

    table = SharedTable.anonymous(capacity=64, kind="quotas")
    try:
        chats = Quota("5/day", store=table, name="chats", clock=clock)
        images = Quota("3/day", store=table, name="images", clock=clock)
        result = hit_all([LimitCheck("chats", chats, "u"), LimitCheck("images", images, "u")])
        assert result.allowed
        assert len(readings) == 1
        assert [d.reset_after_ns for d in result.decisions] == [1, 1]
    finally:
        table.close()
