"""Per-limiter check counts kept in the table: exact across real processes,
readable from any process, and exported for Prometheus."""

import multiprocessing as mp
import os
import re

import numpy as np
import pytest

from fastlimit import ConcurrencyLimit, FakeClock, Limiter, Quota, SharedTable
from fastlimit.stores import table as table_mod
from fastlimit.stores.metrics import PrometheusCollector, families, prometheus_text


def counts(table, name):
    (lim,) = [s for s in table.stats().limiters if s.name == name]
    return lim.allowed, lim.denied, lim.full


def test_counts_follow_each_check_and_name_the_rate(table):
    clock = FakeClock()
    lim = Limiter("3/1s", store=table, name="api", clock=clock)
    [lim.allow("k") for _ in range(5)]  # 3 allowed, 2 denied
    lim.hit("k")  # denied
    lim.peek("k")  # a peek is not a check
    lim.hit_many(["a", "b", "k"])  # 2 allowed, 1 denied
    (s,) = table.stats().limiters
    assert (s.name, s.kind, s.allowed, s.denied, s.full) == ("api", "rate", 5, 4, 0)
    assert (s.emission_interval_ns, s.burst, s.mixed) == (333_333_334, 3, False)
    assert s.checks == 9


def test_names_are_counted_apart_and_kinds_too(table, tmp_path):
    a = Limiter("10/1s", store=table, name="a")
    b = Limiter("10/1s", store=table, name="b")
    a.allow(1)
    [b.allow(1) for _ in range(12)]
    with ConcurrencyLimit(1, store=table, name="a").acquire("job"):  # same name, another kind
        pass
    stats = {(s.name, s.kind): (s.allowed, s.denied, s.full) for s in table.stats().limiters}
    assert stats == {("a", "rate"): (1, 0, 0), ("b", "rate"): (10, 2, 0),
                     ("a", "concurrency"): (1, 0, 0)}


def test_a_name_used_at_several_rates_is_marked_mixed(table):
    Limiter("10/1m", store=table, name="bucket").allow("x")
    Limiter("30/1m", store=table, name="bucket").allow("x")
    (s,) = table.stats().limiters
    assert s.mixed and s.burst == 30 and (s.allowed, s.denied) == (2, 0)


def test_full_checks_are_counted_per_limiter(table_name):
    with SharedTable.open(table_name, capacity=8, on_full="deny") as t:
        lim = Limiter("1/1h", store=t, name="tiny")
        results = [lim.allow(i) for i in range(200)]
        assert not all(results)
        allowed, denied, full = counts(t, "tiny")
        assert (allowed, denied) == (sum(results), 0)
        assert full == 200 - sum(results) == t.stats().full_events > 0
        got = lim.hit_many(np.arange(1000, 1100))
        assert counts(t, "tiny") == (allowed + int(got.sum()), 0, full + 100 - int(got.sum()))


def test_quota_counts_only_consuming_checks(tmp_path):
    with SharedTable.open(path=tmp_path / "q", capacity=100, kind="quotas") as t:
        q = Quota("2/month", store=t, name="plan")
        [q.hit("acct") for _ in range(3)]
        q.peek("acct")
        assert counts(t, "plan") == (2, 1, 0)
        (s,) = t.stats().limiters
        assert (s.kind, s.limit) == ("quota", 2)


def test_names_beyond_the_registry_are_gathered_as_other(table):
    n = table_mod.METRICS_LIMITERS + 20
    for i in range(n):
        Limiter("5/1m", store=table, name=f"n{i}").allow("k")
    stats = table.stats().limiters
    assert len(stats) == table_mod.METRICS_LIMITERS  # 127 names and "(other)"
    assert sum(s.allowed for s in stats) == n
    assert stats[-1].name == "(other)" and stats[-1].allowed == n - (table_mod.METRICS_LIMITERS - 1)
    assert [s.name for s in stats[:-1]] == sorted(s.name for s in stats[:-1])


# -- across processes -----------------------------------------------------------

def _hammer(name, barrier, tries):
    lim = Limiter("1000/1h", store=SharedTable.attach(name), name="api")
    barrier.wait()
    for i in range(tries):
        lim.allow("hot")
        if i % 7 == 0:
            lim.hit_many([f"k{i}", "hot"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_counts_are_exact_across_processes_and_read_by_another(method, table_name):
    with SharedTable.open(table_name, capacity=100_000) as t:
        ctx = mp.get_context(method)
        barrier = ctx.Barrier(4)
        tries = 20_000
        procs = [ctx.Process(target=_hammer, args=(table_name, barrier, tries)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 4
        batches = len(range(0, tries, 7))
        allowed, denied, full = counts(t, "api")  # this process made none of them
        assert allowed + denied == 4 * (tries + 2 * batches) and full == 0
        # every k{i} key is new: 4 x batches of them pass; "hot" admits exactly 1000
        assert allowed == 1000 + 4 * batches


def _fork_hits(lim):
    pid = os.fork()
    if pid == 0:
        try:
            lim.allow("shared")
        finally:
            os._exit(0)
    return pid


def test_a_forked_child_counts_in_its_own_stripe(table):
    lim = Limiter("1000000/1h", store=table, name="api")
    lim.allow("shared")  # the parent takes a stripe first
    pid = _fork_hits(lim)
    assert os.waitpid(pid, 0)[1] == 0
    lim.allow("shared")
    assert counts(table, "api") == (3, 0, 0)
    owners = table._stripes["owner"]
    assert np.count_nonzero(owners) == 2, "the child must not have shared the parent's stripe"


@pytest.mark.slow
def test_stripes_of_dead_processes_are_reused_and_keep_their_counts(table):
    lim = Limiter("1000000/1h", store=table, name="api")
    n = table_mod.METRICS_STRIPES + 30  # more processes than stripes, one after another
    for _ in range(n):
        assert os.waitpid(_fork_hits(lim), 0)[1] == 0
    assert counts(table, "api") == (n, 0, 0)


@pytest.mark.slow
def test_more_live_processes_than_stripes_share_the_last_one_exactly(table):
    lim = Limiter("1000000/1h", store=table, name="api")
    n = table_mod.METRICS_STRIPES + 6
    r, w = os.pipe()
    pids = []
    for _ in range(n):  # all alive at once: each blocks on the pipe until we close it
        pid = os.fork()
        if pid == 0:
            os.close(w)
            for _ in range(1000):
                lim.allow("shared")
            os.read(r, 1)
            os._exit(0)
        pids.append(pid)
    os.close(r)
    os.close(w)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)
    assert counts(table, "api") == (1000 * n, 0, 0)


# -- exporters ------------------------------------------------------------------

def test_prometheus_text_is_well_formed_and_exact(table_name):
    with SharedTable.open(table_name, capacity=1000) as t:
        lim = Limiter("2/1h", store=t, name='we"ird\\name')
        [lim.allow("k") for _ in range(3)]
        text = prometheus_text(t)
    sample = re.compile(r'^([a-z_]+)(\{([a-z]+="(?:[^"\\]|\\.)*",?)*\})? (\d+(\.\d+)?)$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    label = 'limiter="we\\"ird\\\\name"'
    assert (f'fastlimit_checks_total{{table="{table_name}",{label},kind="rate",'
            f'result="allowed"}} 2') in text
    assert 'result="denied"} 1' in text
    assert f'fastlimit_table_capacity{{table="{table_name}"}} 1000' in text
    assert f'fastlimit_table_live_keys{{table="{table_name}"}} 1' in text


def test_prometheus_client_collector_reports_the_same_samples(table):
    prometheus_client = pytest.importorskip("prometheus_client")
    lim = Limiter("2/1h", store=table, name="api")
    [lim.allow("k") for _ in range(3)]
    registry = prometheus_client.CollectorRegistry()
    registry.register(PrometheusCollector([table]))
    name = table.name
    get = registry.get_sample_value
    assert get("fastlimit_checks_total", {"table": name, "limiter": "api", "kind": "rate",
                                          "result": "allowed"}) == 2
    assert get("fastlimit_checks_total", {"table": name, "limiter": "api", "kind": "rate",
                                          "result": "denied"}) == 1
    assert get("fastlimit_table_capacity", {"table": name}) == 4096
    assert {f.name for f in families([table])} <= {
        m.name for m in registry.collect()} | {"fastlimit_checks"}
