import glob
import io
import json
import os
import re

import pytest

from fastlimit import Limiter, Policy, Quota, SharedTable
from fastlimit.cli.demo import Row
from fastlimit.cli.main import demo, main
from fastlimit.stores import table as table_mod

SMALL_POLICY = """
[policy]
name = "small"
[identities.api_key]
rate = "tier"
[identities.session]
rate = "9/1h"
[identities.anonymous]
rate = "3/1h"
[tiers.BASIC]
rate = "12/1h"
[tiers.TRIAL]
rate = "4/1h"
api_access = false
[routes]
"POST /login" = "2/1h"
[routes.uploads]
match = "* /uploads/{id}/**"
rate = "7/1h"
dedicated = true
"""


@pytest.mark.slow
def test_demo_processes_admit_exactly_the_limit_and_clean_up():
    out = io.StringIO()
    assert demo(workers=3, limit=250, checks=2000, out=out) == 0
    text = out.getvalue()
    assert "Admitted 250 in all: exactly the limit" in text
    assert "would have admitted up to 750" in text
    rows = [row for row in text.splitlines() if row.startswith(" ") and row.split()[0].isdigit()]
    assert len(rows) == 3
    assert not glob.glob(os.path.join(table_mod.shm_dir(), f"fastlimit.demo-{os.getpid()}"))


@pytest.mark.slow
def test_web_demo_serves_a_policy_exactly_and_stops_its_server(tmp_path, capsys):
    policy = tmp_path / "small.toml"
    policy.write_text(SMALL_POLICY)
    assert main(["demo", "--policy", str(policy), "--workers", "3", "--max-requests", "40",
                 "--keep-table"]) == 0
    text = capsys.readouterr().out
    table = re.search(r"the table (\S+)\.\n", text).group(1)
    rows = {line.split("  ")[0].strip(): line.split() for line in text.splitlines()
            if "  GET /" in line or "  POST /" in line}
    # caller -> [..., limit, sent, admitted, 429, workers, verdict...]
    expected = {"BASIC key": 12, "TRIAL key (no API access: as anonymous)": 3, "session": 9,
                "anonymous, spoofing X-Forwarded-For": 3, "session, route limit per IP": 2,
                "session, dedicated per-IP bucket": 7}
    assert set(rows) == set(expected)
    for caller, admitted in expected.items():
        cells = rows[caller]
        assert cells[-5:-3] == [str(admitted + max(5, -(-admitted // 5))), str(admitted)], caller
        assert cells[-1] == "exact", caller
    assert "POST /uploads/demo/demo" in text
    assert "X-RateLimit-Limit: 12  X-RateLimit-Remaining: 0" in text and "Retry-After: " in text
    assert '{"success":false,"error":{"code":"RATE_LIMITED"' in text
    assert "Every limit held across the 3 workers" in text
    pid = int(re.search(r"Stopped gunicorn \(pid (\d+)\)", text).group(1))
    assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
    # the workers' checks, counted in the kept table and read by this process
    name = os.path.basename(table).removeprefix("fastlimit.")
    assert f"as `fastlimit stats {name}` reports them" in text
    # the per-IP keys count in the table beside it
    both = [_cli_json(capsys, "stats", n, "--json") for n in (name, f"{name}.anonymous")]
    admitted = sum(int(cells[-4]) for cells in rows.values())
    denied = sum(int(cells[-3]) for cells in rows.values())
    assert all(s["lock_timeouts"] == 0 and s["full_events"] == 0 for s in both)
    # each admitted request passed every limit it met, each 429 failed one
    assert sum(x["allowed"] for s in both for x in s["limiters"]) >= admitted > 0
    assert sum(x["denied"] for s in both for x in s["limiters"]) >= denied > 0
    assert main(["rm", name]) == 0
    assert not glob.glob(os.path.join(table_mod.shm_dir(), f"fastlimit.{name}*"))


def test_demo_verdicts():
    row = Row("k", "GET", "/", {}, "127.0.0.10", expected=10, interval_s=0.5, elapsed_s=1.2)
    row.statuses = [200] * 10 + [429] * 3
    assert row.verdict() == (True, "exact")
    row.statuses = [200] * 13
    assert row.verdict() == (True, "10 + 3 refilled in 1.20 s (1 per 0.5 s)")
    row.statuses = [200] * 14  # more than the clock could have refilled
    assert row.verdict() == (False, "WRONG: expected 10")
    row.statuses = [200] * 10 + [500]
    assert row.verdict() == (False, "1 requests failed")


def test_stats_and_unlink_commands(table_name, capsys):
    SharedTable.create(table_name, capacity=500)
    assert main(["stats", table_name]) == 0
    out = capsys.readouterr().out
    assert "capacity 500," in out and "no limiter has used it yet" in out
    assert main(["unlink", table_name]) == 0
    assert not os.path.exists(os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}"))


# -- table tools: stats, inspect, reset, rm, metrics, bench ---------------------

def _cli_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_reports_occupancy_and_checks_per_limiter(table_name, capsys):
    with SharedTable.open(table_name, capacity=1000) as t:
        api = Limiter("3/1m", store=t, name="api")
        [api.allow(f"user{i % 2}") for i in range(8)]  # 3 + 3 allowed, 1 + 1 denied
        Limiter("10/1h", store=t, name="login").allow("u")
        r = _cli_json(capsys, "stats", table_name, "--json")
    assert (r["table"], r["kind"], r["capacity"], r["live_keys"]) == (table_name, "rates", 1000, 3)
    assert r["occupancy"] == 0.003 and r["full_events"] == 0
    rows = {x["name"]: x for x in r["limiters"]}
    assert (rows["api"]["rate"], rows["api"]["allowed"], rows["api"]["denied"]) == ("3/1m", 6, 2)
    assert (rows["login"]["rate"], rows["login"]["allowed"]) == ("10/1h", 1)
    assert main(["stats", table_name]) == 0
    text = capsys.readouterr().out
    assert re.search(r"live keys 3 \(0\.30% of capacity\)", text)
    assert re.search(r"api\s+rate\s+3/1m\s+6\s+2\s+0", text)


def test_inspect_shows_a_keys_decision_and_reset_forgets_it(table_name, capsys):
    with SharedTable.open(table_name, capacity=1000) as t:
        api = Limiter("3/1h", store=t, name="api")
        Limiter("5/1h", store=t, name="other").allow(7)
        [api.allow("alice") for _ in range(3)]
        assert main(["inspect", table_name, "alice"]) == 2  # two limiters: which?
        assert "--limiter (one of 'api', 'other')" in capsys.readouterr().err
        r = _cli_json(capsys, "inspect", table_name, "alice", "--limiter", "api", "--json")
        assert (r["allowed"], r["remaining"], r["limit"], r["rate"]) == (False, 0, 3, "3/1h")
        assert 1199 < r["retry_after"] <= 1200
        assert main(["inspect", table_name, "alice", "--limiter", "api"]) == 0
        assert "0 of 3 left" in capsys.readouterr().out
        r = _cli_json(capsys, "inspect", table_name, "7", "--int", "--limiter", "other", "--json")
        assert (r["remaining"], r["key"]) == (4, 7)
        r = _cli_json(capsys, "inspect", table_name, "alice", "--limiter", "api",
                      "--rate", "10/1h", "--json")
        # the state is a time, 3 x 20 min ahead: a full hour, all of 10/1h's tolerance
        assert (r["allowed"], r["remaining"], r["limit"]) == (False, 0, 10)
        assert 359 < r["retry_after"] <= 360
        api_stats = [x for x in t.stats().limiters if x.name == "api"][0]
        assert (api_stats.burst, api_stats.mixed) == (3, False), "inspect states no rate"
        assert main(["reset", table_name, "alice", "--limiter", "api"]) == 0
        assert capsys.readouterr().out == f"reset key 'alice' of api in table {table_name}\n"
        assert api.hit("alice").remaining == 2  # a fresh key again
        r = _cli_json(capsys, "reset", table_name, "alice", "--limiter", "api", "--json")
        assert r == {"table": table_name, "limiter": "api", "key": "alice", "reset": True}
        assert api.hit("alice").remaining == 2


def test_inspect_a_quota(tmp_path, capsys):
    path = str(tmp_path / "quotas")
    with SharedTable.open(path=path, capacity=100, kind="quotas") as t:
        q = Quota("10/month", store=t, name="plan")
        [q.hit("acct") for _ in range(4)]
        r = _cli_json(capsys, "inspect", path, "acct", "--json")
    assert (r["kind"], r["limit"], r["count"]) == ("quota", 10, 4)


def test_rm_removes_the_table_and_its_overrides(table_name, capsys):
    Policy.from_dict({"policy": {"name": "p"}, "identities": {"anonymous": {"rate": "3/1h"}}},
                     store=SharedTable.open(table_name, capacity=100)).close()
    base = os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}")
    assert os.path.exists(base)
    r = _cli_json(capsys, "rm", table_name, "--json")
    # no overrides were written; the per-IP keys' table goes with it
    assert r == {"removed": [base, f"{base}.anonymous", f"{base}.p.overrides.json.gen"]}
    assert not glob.glob(base + "*")
    assert main(["stats", table_name]) == 2
    assert "no table at" in capsys.readouterr().err


def test_metrics_command_prints_the_exposition(table_name, capsys):
    with SharedTable.open(table_name, capacity=100) as t:
        Limiter("1/1h", store=t, name="api").allow("k")
        assert main(["metrics", table_name]) == 0
    out = capsys.readouterr().out
    assert (f'fastlimit_checks_total{{table="{table_name}",limiter="api",kind="rate",'
            f'result="allowed"}} 1') in out


@pytest.mark.slow
def test_bench_measures_and_compares(capsys):
    r = _cli_json(capsys, "bench", "--keys", "1000", "--json")
    assert r["keys"] == 1000
    for field in ("allow_hot_ns", "hit_hot_ns", "allow_live_keys_ns", "hit_many_ns_per_key",
                  "python_dict_gcra_hot_ns"):
        assert 0 < r[field] < 1e6, field
    assert r["vs_python_dict_gcra"] == r["python_dict_gcra_hot_ns"] / r["allow_hot_ns"]


HOLD = """
import sys
from fastlimit import SharedTable
t = SharedTable.attach(sys.argv[1])
print("mapped", flush=True)
sys.stdin.read()
"""


def test_rm_refuses_a_table_other_processes_still_map(table_name, capsys):
    import subprocess
    import sys
    SharedTable.open(table_name, capacity=100).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, table_name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        assert main(["rm", table_name]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and "--force" in err
        assert os.path.exists(os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}"))
        assert main(["rm", table_name, "--force"]) == 0
        assert not os.path.exists(os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}"))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def _flip(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("damage", ["secret", "truncated", "version"])
def test_rm_removes_a_table_that_no_longer_opens(table_name, capsys, damage):
    # the errors of a broken table say to remove it with `fastlimit rm`: it must
    SharedTable.open(table_name, capacity=100).close()
    path = os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}")
    if damage == "truncated":
        os.truncate(path, 8192)
    else:
        _flip(path, 48 if damage == "secret" else 8)
    assert main(["stats", table_name]) == 2
    assert "fastlimit rm" in capsys.readouterr().err
    assert main(["rm", table_name]) == 0
    assert not os.path.exists(path)


def test_rm_leaves_files_that_are_not_tables_alone(tmp_path, capsys):
    other = tmp_path / "notes.txt"
    other.write_text("not a table")
    assert main(["rm", str(other)]) == 2
    assert "not a fastlimit table" in capsys.readouterr().err and other.exists()
    link = tmp_path / "link"
    link.symlink_to(other)
    assert main(["rm", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err and link.exists()
