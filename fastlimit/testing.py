"""Helpers for testing an application that uses fastlimit.

Limits persist: a named table lives in ``/dev/shm`` and quota files in the
state directory until removed, so a test suite that limits real requests
would find the last run's counts.  :func:`isolated` gives a block of code
(or, as the pytest fixture ``fastlimit_isolated``, one test) a table
directory and a state directory of its own, removed afterwards; tables,
overrides and quota files made inside never meet another test's.

With pytest, load the fixtures in ``conftest.py``::

    pytest_plugins = ["fastlimit.testing"]

    def test_login_is_limited(fastlimit_isolated, fake_clock):
        policy = fastlimit.Policy.from_file("policy.toml", clock=fake_clock)
        ...
        fake_clock.advance(60)          # a minute later, without sleeping

Fixtures: ``fastlimit_isolated`` (the directories; yields their root),
``fastlimit_table`` (a fresh named :class:`~fastlimit.SharedTable` inside
them, which processes the test starts can attach to by
``fastlimit_table.name``) and ``fake_clock`` (a
:class:`~fastlimit.FakeClock`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fastlimit.clock import FakeClock
from fastlimit.stores.table import SharedTable

__all__ = ["FakeClock", "fake_clock", "fastlimit_isolated", "fastlimit_table", "isolated"]

_VARIABLES = ("FASTLIMIT_SHM_DIR", "FASTLIMIT_STATE_DIR")


@contextmanager
def isolated() -> Iterator[str]:
    """Run the block with a table directory and a state directory of its
    own (``$FASTLIMIT_SHM_DIR``, ``$FASTLIMIT_STATE_DIR``; processes started
    inside inherit them), removed with everything in them afterwards.
    Yields the root of both.  Tables opened inside must be closed inside."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # tmpfs, as in production
    root = tempfile.mkdtemp(prefix="fastlimit-test-", dir=shm)
    saved = {name: os.environ.get(name) for name in _VARIABLES}
    try:
        for name, sub in zip(_VARIABLES, ("tables", "state"), strict=True):
            os.mkdir(os.path.join(root, sub), 0o700)
            os.environ[name] = os.path.join(root, sub)
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


try:
    import pytest
except ImportError:  # pragma: no cover - the fixtures need pytest, isolated() does not
    pass
else:
    @pytest.fixture
    def fastlimit_isolated() -> Iterator[str]:
        """This test's own table and state directories (see :func:`isolated`)."""
        with isolated() as root:
            yield root

    @pytest.fixture
    def fastlimit_table(fastlimit_isolated: str) -> Iterator[SharedTable]:
        """A fresh named table of 4,096 slots in this test's own directory."""
        table = SharedTable.open(f"test-{uuid.uuid4().hex[:12]}", capacity=4096)
        try:
            yield table
        finally:
            table.close()

    @pytest.fixture
    def fake_clock() -> FakeClock:
        """A :class:`~fastlimit.FakeClock` to pass as a limiter's or policy's
        ``clock``: time moves only when the test calls ``advance()``."""
        return FakeClock()
