import glob
import io
import os
import re

from fastlimit import SharedTable
from fastlimit import table as table_mod
from fastlimit._demo import Row
from fastlimit.cli import demo, main

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


def test_demo_processes_admit_exactly_the_limit_and_clean_up():
    out = io.StringIO()
    assert demo(workers=3, limit=250, checks=2000, out=out) == 0
    text = out.getvalue()
    assert "Admitted 250 in all: exactly the limit" in text
    assert "would have admitted up to 750" in text
    rows = [row for row in text.splitlines() if row.startswith(" ") and row.split()[0].isdigit()]
    assert len(rows) == 3
    assert not glob.glob(os.path.join(table_mod.shm_dir(), f"fastlimit.demo-{os.getpid()}"))


def test_web_demo_serves_a_policy_exactly_and_stops_its_server(tmp_path, capsys):
    policy = tmp_path / "small.toml"
    policy.write_text(SMALL_POLICY)
    assert main(["demo", "--policy", str(policy), "--workers", "3", "--max-requests", "40"]) == 0
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
    assert not glob.glob(os.path.join(table_mod.shm_dir(), f"fastlimit.{table}*"))


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
    assert "capacity: 500" in capsys.readouterr().out
    assert main(["unlink", table_name]) == 0
    assert not os.path.exists(os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}"))
