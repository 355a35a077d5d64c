"""The wheel a user installs: built by ``pip wheel`` from the sdist, it holds
the compiled modules with their stubs and none of their sources, auditwheel
gives it a manylinux tag, stripped it stays small, and installed in a fresh
venv away from the source tree it imports and limits (tests/wheel_check.py,
the check every release wheel runs too)."""

from __future__ import annotations

import re
import zipfile

import pytest
from dist_build import Built, built, run

__all__ = ["built"]  # the fixture, imported for pytest

MAX_WHEEL_BYTES = 1_500_000  # per platform, as issue 19 asks
SOURCES = (".c", ".pyx", ".pxd", ".pxi", ".h")

pytestmark = pytest.mark.slow


def names(wheel: zipfile.ZipFile) -> list[str]:
    return wheel.namelist()


def test_the_wheel_holds_extensions_and_stubs_and_no_sources(built: Built) -> None:
    for path in (built.wheel, built.repaired):
        with zipfile.ZipFile(path) as wheel:
            files = names(wheel)
        assert [f for f in files if f.endswith(SOURCES)] == [], path.name
        extensions = {f.split(".")[0] for f in files if f.endswith(".so")}
        stubs = {f.removesuffix(".pyi") for f in files if f.endswith(".pyi")}
        assert extensions == {"fastlimit/_core", "fastlimit/http/_fields", "fastlimit/http/_addr",
                              "fastlimit/limiters/_counting", "fastlimit/policy/_plan",
                              "fastlimit/web/_serve", "fastlimit/stores/_fleet"}
        assert extensions <= stubs
        assert "fastlimit/py.typed" in files
        assert "fastlimit/stores/redis/lua/gcra.lua" in files
        assert "fastlimit/examples/seed000.toml" in files


def test_auditwheel_names_a_manylinux_tag(built: Built) -> None:
    assert re.search(r'platform tag:\s+"manylinux_2_\d+_\w+"', built.auditwheel), built.auditwheel
    assert re.search(r"manylinux_2_\d+_\w+\.whl$", built.repaired.name), built.repaired.name


def test_the_released_wheel_is_stripped_and_small(built: Built) -> None:
    size = built.repaired.stat().st_size
    assert size <= MAX_WHEEL_BYTES, f"{built.repaired.name}: {size} bytes"
    with zipfile.ZipFile(built.repaired) as wheel:
        core = next(n for n in names(wheel)
                    if n.startswith("fastlimit/_core.") and n.endswith(".so"))
        assert b".debug_info" not in wheel.read(core), "the core kept its debug sections"


def test_the_installed_wheel_imports_and_limits_away_from_the_source(built: Built,
                                                                     tmp_path) -> None:
    out = run(built.python, built.unpacked / "tests" / "wheel_check.py", cwd=tmp_path)
    assert "wheel ok: fastlimit 0.2.0" in out
    assert str(built.python.parent.parent) in out  # imported from the fresh venv
