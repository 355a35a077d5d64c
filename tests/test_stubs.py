"""The stubs of the compiled modules say what the modules have: mypy's
stubtest finds nothing but the Cython artefacts of .ci/stubtest-allowlist."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPILED = ["fastlimit._core", "fastlimit.http._fields", "fastlimit.limiters._counting",
            "fastlimit.policy._plan", "fastlimit.web._serve", "fastlimit.stores._fleet"]


@pytest.mark.slow
def test_the_compiled_modules_match_their_stubs():
    pytest.importorskip("mypy")
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--ignore-disjoint-bases", "--concise",
         "--allowlist", str(ROOT / ".ci" / "stubtest-allowlist"), *COMPILED],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
