"""``import fastlimit`` where Linux's /dev/shm or /proc is missing fails at
once with an error naming what is missing (fastlimit/_platform.py), and
imports as before where they are there.  Other systems are simulated in a
subprocess: the platform name, or the probed paths made to look absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fastlimit import _platform


def import_fastlimit(prelude: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(prelude) + "\nimport fastlimit\nprint('imported', fastlimit.__version__)"
    environ = {k: v for k, v in os.environ.items() if k != "FASTLIMIT_SHM_DIR"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **env},
    )


def test_on_linux_nothing_is_missing_and_the_import_works():
    assert _platform.missing() == []
    done = import_fastlimit("")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported ")


def test_on_macos_the_import_fails_naming_linux():
    done = import_fastlimit("import sys; sys.platform = 'darwin'")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "fastlimit._platform.UnsupportedPlatformError: fastlimit runs on Linux only"
    ), last
    assert "lacks a Linux kernel (this is darwin)" in last


HIDE = """
import os
real_access, real_isdir = os.access, os.path.isdir
os.access = lambda path, mode, **kw: path not in {hidden!r} and real_access(path, mode, **kw)
os.path.isdir = lambda path: path not in {hidden!r} and real_isdir(path)
"""


def test_without_proc_the_import_fails_naming_proc():
    done = import_fastlimit(HIDE.format(hidden={"/proc/self/stat"}))
    assert done.returncode == 1
    assert "UnsupportedPlatformError" in done.stderr
    assert "lacks /proc (/proc/self/stat is not readable)" in done.stderr
    assert "/dev/shm (no such" not in done.stderr  # only what is missing is named


def test_without_dev_shm_the_error_names_it_and_the_variable_that_moves_tables(tmp_path):
    done = import_fastlimit(HIDE.format(hidden={"/dev/shm"}))
    assert done.returncode == 1
    assert "lacks /dev/shm (no such directory; set FASTLIMIT_SHM_DIR" in done.stderr
    # with the tables moved elsewhere, /dev/shm is not needed
    moved = import_fastlimit(HIDE.format(hidden={"/dev/shm"}), FASTLIMIT_SHM_DIR=str(tmp_path))
    assert moved.returncode == 0, moved.stderr


def test_missing_names_each_absent_piece(tmp_path):
    assert _platform.missing("linux", str(tmp_path / "stat"), str(tmp_path / "shm")) == [
        f"/proc ({tmp_path / 'stat'} is not readable)",
        f"{tmp_path / 'shm'} (no such directory; set FASTLIMIT_SHM_DIR to a tmpfs directory "
        "to keep tables elsewhere)",
    ]
    assert _platform.missing("win32", "/proc/self/stat", None) == ["a Linux kernel (this is win32)"]


def test_the_error_is_an_import_error():
    assert issubclass(_platform.UnsupportedPlatformError, ImportError)
    with pytest.raises(ImportError):
        raise _platform.UnsupportedPlatformError("x")
