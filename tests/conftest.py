import os
import shutil
import tempfile
import uuid

import pytest
from redis_topologies import free_port as _free_port
from redis_topologies import start_server

import fastlimit
from fastlimit.examples.memory_store import MemoryStore
from fastlimit.stores.table import beside, shm_dir

# Where tables live while the tests run: tmpfs, as in production.
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


@pytest.fixture(autouse=True, scope="session")
def hermetic_session(tmp_path_factory):
    """Session and module fixtures (the wheel build's pip, mkdocs, the
    servers) run before any test's own HOME is set: they get one of the
    session's, so nothing they start writes caches into the user's."""
    root = tmp_path_factory.mktemp("session-env")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
            (root / var).mkdir()
            mp.setenv(var, str(root / var))
        yield


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory, monkeypatch):
    """Every test runs with a HOME, a state directory and a table directory
    of its own, removed afterwards: nothing reads or writes the user's home
    or a fixed path in /dev/shm, and no two tests share a table or a quota
    file by name.  Processes the test starts inherit the same environment."""
    root = tmp_path_factory.mktemp("env")
    shm = tempfile.mkdtemp(prefix="fastlimit-test-", dir=_SHM)
    os.chmod(shm, 0o1777)  # as /dev/shm: any user may create, only owners remove
    for var, path in (("HOME", root / "home"), ("XDG_STATE_HOME", root / "xdg-state"),
                      ("FASTLIMIT_STATE_DIR", root / "state")):
        path.mkdir()
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("FASTLIMIT_SHM_DIR", shm)
    yield
    shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture
def table_name():
    """A unique table name; its file is removed after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    base = os.path.join(shm_dir(), f"fastlimit.{name}")
    # the table, and what policies keep beside it
    for path in (base, *beside(base)):
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


# -- a real redis-server on 127.0.0.1, started and stopped by PID -------------
# (RedisServer and its starter live in redis_topologies.py: the benches use them too)


def _redis_binary():
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        message = ("redis-server is not installed: the Redis backend tests need it "
                   "(apt-get install redis-server; .ci/run installs it)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _start_server(tmp_path_factory, *extra):
    return start_server(_redis_binary(), lambda: tmp_path_factory.mktemp("redis"), *extra)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server shared by the tests that only read and write keys."""
    server = _start_server(tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path_factory):
    """A redis-server of the test's own, which it may stop, kill or pause."""
    server = _start_server(tmp_path_factory)
    yield server
    if server.proc is not None:
        server.resume()  # a paused server cannot act on SIGTERM
    server.stop()


@pytest.fixture(params=["table", "redis", "redis+deny-cache", "memory"])
def store_factory(request):
    """Makes fresh stores of one kind; every test using it runs on each: the
    shared table, Redis, Redis behind a local deny cache, and the store of
    README's "Writing a store" (examples/memory_store.py).  A new store
    joins the contract's tests by adding its factory here.

    Each Redis store has a prefix of its own, so tests never share keys."""
    kind = request.param
    made = []

    def make():
        if kind == "table":
            made.append(fastlimit.SharedTable.anonymous(capacity=1024))
            return made[-1]
        if kind == "memory":
            made.append(MemoryStore())
            return made[-1]
        server = request.getfixturevalue("redis_server")
        deny = None
        if kind.endswith("cache"):
            deny = fastlimit.SharedTable.anonymous(capacity=1024)
            made.append(deny)
        backend = fastlimit.RedisBackend(server.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                                         timeout=10, connect_timeout=10, deny_cache=deny)
        made.append(backend)
        return backend

    yield make
    for s in made:
        if isinstance(s, fastlimit.RedisBackend):
            assert s.stats().errors == 0
        s.close()


@pytest.fixture
def store(store_factory):
    """A fresh store: the shared table, Redis, or Redis with a deny cache."""
    return store_factory()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A one-node Redis Cluster (every slot on one server, a RedisServer):
    enough for the server to refuse a script whose keys span slots, as a
    real cluster does."""
    import redis_topologies

    _redis_binary()
    cluster = redis_topologies.start_cluster(
        lambda *extra: _start_server(tmp_path_factory, *extra), _free_port, primaries=1)
    yield cluster.nodes[0]
    cluster.stop()


# -- real topologies: a 3-primary Redis Cluster, Sentinel (tests/redis_topologies.py) ---

@pytest.fixture(scope="session")
def redis_cluster3(tmp_path_factory):
    """A Redis Cluster of 3 primaries (no replicas) on 127.0.0.1, made by
    ``redis-cli --cluster create``; see redis_topologies.Cluster.  Shared:
    tests must not stop its nodes."""
    import redis_topologies

    _redis_binary()
    cluster = redis_topologies.start_cluster(
        lambda *extra: _start_server(tmp_path_factory, *extra), _free_port)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory):
    """A primary, its replica and one sentinel watching them; see
    redis_topologies.SentinelSetup (``url``, ``failover()``, ``replica_url()``).
    A failover swaps the roles; the setup stays whole for the next test."""
    import redis_topologies

    setup = redis_topologies.start_sentinel(
        lambda *extra: _start_server(tmp_path_factory, *extra), _free_port, _redis_binary(),
        tmp_path_factory.mktemp("sentinel"))
    yield setup
    setup.stop()


@pytest.fixture
def own_cluster(tmp_path_factory):
    """Makes Redis Clusters of the test's own, whose nodes it may stop, kill
    or pause: ``own_cluster(**kw)`` takes redis_topologies.start_cluster's
    options (``node_timeout_ms``, ``replicas``, ``extra``); every cluster
    made is stopped at the end."""
    import redis_topologies

    _redis_binary()
    made = []

    def make(**kw):
        made.append(redis_topologies.start_cluster(
            lambda *extra: _start_server(tmp_path_factory, *extra), _free_port, **kw))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def own_redis_cluster3(own_cluster):
    """A 3-primary Redis Cluster of the test's own (``cluster.nodes[i]``,
    RedisServer objects); a stopped node goes unnoticed by the others for
    60 s (--cluster-node-timeout)."""
    return own_cluster(node_timeout_ms=60000)
