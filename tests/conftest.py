import os
import uuid

import pytest

import fastlimit


@pytest.fixture
def table_name():
    """A unique table name; its file is removed after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    base = os.path.join(fastlimit.table.shm_dir(), f"fastlimit.{name}")
    # the table, and the overrides a Policy keeps beside it
    for path in (base, f"{base}.overrides.json", f"{base}.overrides.json.gen"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def table(table_name):
    t = fastlimit.SharedTable.open(table_name, capacity=4096)
    yield t
    t.close()


@pytest.fixture
def clock():
    return fastlimit.FakeClock()
