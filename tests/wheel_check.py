"""What an installed fastlimit must do, away from the source tree: run by
tests/test_wheel.py against the wheel built here, and by cibuildwheel's
test-command against every release wheel (pyproject.toml).  Standard library
and fastlimit only, so it runs in a bare environment.

Usage: python tests/wheel_check.py   (prints "wheel ok: ..." or raises)
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import tempfile

SOURCE = pathlib.Path(__file__).resolve().parent.parent
COMPILED = ["fastlimit._core", "fastlimit.http._fields", "fastlimit.http._addr",
            "fastlimit.limiters._counting", "fastlimit.policy._plan", "fastlimit.web._serve",
            "fastlimit.stores._fleet"]


def main() -> None:
    import fastlimit

    package = pathlib.Path(fastlimit.__file__).resolve().parent
    assert SOURCE not in package.parents, f"imported the source tree: {package}"
    for name in COMPILED:
        module = importlib.import_module(name)
        assert module.__file__ and module.__file__.endswith(".so"), module.__file__
        stub = pathlib.Path(module.__file__).with_name(name.rsplit(".", 1)[1] + ".pyi")
        assert stub.is_file(), f"{name} has no stub beside it"
    assert (package / "py.typed").is_file()
    sources = sorted(str(p.relative_to(package)) for p in package.rglob("*")
                     if p.suffix in {".c", ".pyx", ".pxd", ".pxi", ".h"})
    assert not sources, f"build sources in the installed package: {sources}"

    with tempfile.TemporaryDirectory() as shm:
        os.environ["FASTLIMIT_SHM_DIR"] = shm  # the named table lands here, not in /dev/shm
        table = fastlimit.SharedTable.open("wheel-check", capacity=1024)
        try:
            api = fastlimit.Limiter("3/1h", store=table, name="api")
            assert [api.allow("user:42") for _ in range(4)] == [True, True, True, False]
            denied = api.hit("user:42")
            assert not denied.allowed and denied.retry_after > 0
            # the policy files installed with the package load and decide
            examples = pathlib.Path(importlib.import_module("fastlimit.examples").__file__ or "")
            policy = fastlimit.Policy.from_file(examples.with_name("seed000.toml"),
                                                store=fastlimit.SharedTable.anonymous(4096))
            try:
                d = policy.hit("GET", "/v1/items", fastlimit.Identity.anonymous(), "192.0.2.1")
                assert d.allowed and dict(d.headers)["X-RateLimit-Limit"] == "5"
            finally:
                policy.close()
        finally:
            table.unlink()
            table.close()
    print(f"wheel ok: fastlimit {fastlimit.__version__} from {package}, "
          f"Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
