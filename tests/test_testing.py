"""fastlimit.testing: an application's tests get fresh limits every run."""

import os
import subprocess
import sys

from fastlimit.stores.table import shm_dir
from fastlimit.testing import isolated

APP_TESTS = '''
import fastlimit

pytest_plugins = ["fastlimit.testing"]

def test_a_named_table_starts_empty(fastlimit_isolated, fake_clock):
    policy = fastlimit.Policy.from_dict({
        "store": {"table": "myapp"},
        "identities": {"anonymous": {"rate": "1/1h"}},
        "routes": {"GET /q": "1/1h"}}, clock=fake_clock)
    assert policy.hit("GET", "/q", None, "10.0.0.1").allowed   # the last run's hit is gone
    assert not policy.hit("GET", "/q", None, "10.0.0.1").allowed
    fake_clock.advance(3600)
    assert policy.hit("GET", "/q", None, "10.0.0.1").allowed
    policy.close()

def test_a_fresh_table(fastlimit_table):
    lim = fastlimit.Limiter("1/1h", store=fastlimit_table, name="api")
    assert [lim.allow("k") for _ in range(2)] == [True, False]
'''


def test_an_applications_suite_passes_twice_and_leaves_nothing(tmp_path):
    (tmp_path / "test_app.py").write_text(APP_TESTS)
    before = set(os.listdir(shm_dir()))
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(tmp_path)], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 passed" in done.stdout
    assert set(os.listdir(shm_dir())) == before


def test_isolated_restores_the_environment():
    outer = os.environ["FASTLIMIT_SHM_DIR"]
    with isolated() as root:
        assert os.environ["FASTLIMIT_SHM_DIR"] == os.path.join(root, "tables")
        assert shm_dir() == os.path.join(root, "tables")
    assert os.environ["FASTLIMIT_SHM_DIR"] == outer and not os.path.exists(root)
