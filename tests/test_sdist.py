"""The sdist a packager downloads: it holds what builds the package and what
tests it, and unpacked, with the wheel pip builds from it installed, its
tests collect (every file, helpers and conftest.py found) and a core set of
them passes, run from outside the unpacked tree so that the installed
package is the one tested."""

from __future__ import annotations

import pathlib
import tarfile

import pytest
from dist_build import ROOT, Built, built, run

__all__ = ["built"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

# A cross-section that stays short (CI runs on 2 cores): the core, the table,
# policies, the store contract, the README's and the docs' code blocks, the
# layering.  All of them are collected.
RUN = ["test_gcra.py", "test_table.py", "test_policy.py", "test_store_contract.py",
       "test_recipes.py", "test_migration.py", "test_layers.py"]
# these build the distributions themselves, or the docs site: not from inside one
NOT_INSIDE = ["test_wheel.py", "test_sdist.py", "test_docs_site.py"]


def members(sdist: pathlib.Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {m.name.split("/", 1)[1] for m in archive.getmembers()
                if m.isfile() and "/" in m.name}


def test_the_sdist_holds_the_sources_tests_docs_and_no_build_output(built: Built) -> None:
    files = members(built.sdist)
    needed = {p.relative_to(ROOT).as_posix() for pattern in (
        "tests/*.py", "examples/*", "docs/**/*.md", "fastlimit/**/*.pyx", "fastlimit/**/*.pxd",
        "fastlimit/**/*.pxi", "fastlimit/**/*.h", "fastlimit/**/*.pyi", "fastlimit/**/*.lua")
        for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    assert needed - files == set()
    assert {"LICENSE", "README.md", "CHANGELOG.md", "CONTRIBUTING.md", "mkdocs.yml",
            "pyproject.toml", "setup.py", "tests/conftest.py", ".ci/stubtest-allowlist"} <= files
    assert [f for f in files if f.endswith((".c", ".so", ".pyc"))] == []


def pytest_in_the_sdist(built: Built, cwd: pathlib.Path, *args: str) -> str:
    top = built.unpacked
    ignore = [f"--ignore={top / 'tests' / name}" for name in NOT_INSIDE]
    return run(built.python, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={top}",
               "-c", top / "pyproject.toml", *ignore, *args, cwd=cwd)


def test_every_test_of_the_sdist_collects(built: Built, tmp_path: pathlib.Path) -> None:
    out = pytest_in_the_sdist(built, tmp_path, "--collect-only", "-q",
                              str(built.unpacked / "tests"))
    summary = out.strip().splitlines()[-1]  # "1256 tests collected in 9.1s", or "..., 10 errors"
    assert " collected" in summary and "error" not in summary, out[-2000:]


def test_the_sdists_core_tests_pass_on_the_installed_package(built: Built,
                                                              tmp_path: pathlib.Path) -> None:
    out = pytest_in_the_sdist(built, tmp_path, "-q", "-m", "not slow",
                              *(str(built.unpacked / "tests" / name) for name in RUN))
    assert " passed" in out and "failed" not in out, out[-2000:]
