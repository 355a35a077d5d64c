"""The package's folders are its layers, and imports only go down them:
core < stores < limiters < http < policy < web, client < cli < the faces
(the package itself and the modules at the paths the README names).  And
a program loads only the layers it uses."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fastlimit"
LAYERS = {"core": 0, "_core": 0, "errors": 0, "clock": 0, "_lazy": 0, "_platform": 0, "stores": 1,
          "limiters": 2, "http": 3, "policy": 4, "web": 5, "client": 5, "cli": 6, "frameworks": 6}
FACES = 7  # __init__, wsgi, asgi, config, metrics, backends: they re-export
# Conveniences of a lower layer that make an object of a higher one, imported
# where they are called: a store's backend.limiter(...).
CALLED_UPWARD = {("stores/redis/sync.py", "limiters"), ("stores/redis/aio.py", "limiters")}
IMPORT = re.compile(r"^\s*(?:from|cimport|import)\s+fastlimit\.(\w+)", re.M)


def layer(relative: pathlib.PurePath) -> int:
    return LAYERS.get(relative.parts[0].removesuffix(".py").removesuffix(".pyx"), FACES)


def test_imports_only_go_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pxd", ".pxi"):
            continue
        relative = path.relative_to(PACKAGE)
        here = layer(relative)
        text = path.read_text()
        for match in IMPORT.finditer(text):
            target = match.group(1)
            there = LAYERS.get(target, FACES)
            indented = match.group(0).startswith((" ", "\t"))
            if there > here and not (indented and (relative.as_posix(), target) in CALLED_UPWARD):
                wrong.append(f"{relative.as_posix()} imports fastlimit.{target}")
    assert not wrong, "\n".join(wrong)


def loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join("
                          "m for m in sys.modules if m.startswith(('fastlimit', 'redis'))))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_fastlimit_loads_nothing_it_is_not_asked_for():
    # _platform: the import's check for /dev/shm and /proc
    assert loaded("import fastlimit") == {"fastlimit", "fastlimit._lazy", "fastlimit._platform"}


@pytest.mark.parametrize("code, allowed", [
    ("import fastlimit; fastlimit.Limiter('10/1s').allow('k')", ("core", "stores", "limiters")),
    ("import fastlimit; fastlimit.Rate.parse('10/1s')", ("limiters",)),
    ("import fastlimit; fastlimit.Policy.from_dict({'identities': {'anonymous': "
     "{'rate': '1/1s'}}}).hit('GET', '/', None, '10.0.0.1')",
     ("core", "stores", "limiters", "http", "policy")),
])
def test_a_program_loads_only_the_layers_it_uses(code, allowed):
    extra = {m for m in loaded(code) if m.startswith("redis") or (
        m.count(".") >= 1 and m.split(".")[1] not in (*allowed, "_core", "errors", "clock",
                                                      "_lazy", "_platform"))}
    assert not extra, f"{code}: loaded {sorted(extra)}"


def test_a_rate_alone_loads_a_handful_of_modules():
    assert len(loaded("import fastlimit.limiters.rate")) <= 7  # with fastlimit._platform
