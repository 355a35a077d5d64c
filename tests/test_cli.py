import glob
import io
import os

from fastlimit import SharedTable
from fastlimit import table as table_mod
from fastlimit.cli import demo, main


def test_demo_admits_exactly_the_limit_and_cleans_up():
    out = io.StringIO()
    assert demo(workers=3, limit=250, checks=2000, out=out) == 0
    text = out.getvalue()
    assert "Admitted 250 in all: exactly the limit" in text
    assert "would have admitted up to 750" in text
    rows = [row for row in text.splitlines() if row.startswith(" ") and row.split()[0].isdigit()]
    assert len(rows) == 3
    assert not glob.glob(os.path.join(table_mod.shm_dir(), f"fastlimit.demo-{os.getpid()}"))


def test_stats_and_unlink_commands(table_name, capsys):
    SharedTable.create(table_name, capacity=500)
    assert main(["stats", table_name]) == 0
    assert "capacity: 500" in capsys.readouterr().out
    assert main(["unlink", table_name]) == 0
    assert not os.path.exists(os.path.join(table_mod.shm_dir(), f"fastlimit.{table_name}"))
