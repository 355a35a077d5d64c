"""Storage by URI: fastlimit.store_from_url, the integrations' storage_uri."""

import re

import pytest

import fastlimit
from fastlimit import ConfigurationError, Limiter, RedisBackend, SharedTable, store_from_url


def test_shm_names_the_shared_table(table_name):
    store = store_from_url(f"shm://{table_name}?capacity=1000")
    assert isinstance(store, SharedTable) and store.capacity == 1000
    again = SharedTable.attach(table_name)  # another process would see the same
    lim = Limiter("2/1h", store=store, name="api")
    assert [lim.allow("k") for _ in range(3)] == [True, True, False]
    assert not Limiter("2/1h", store=again, name="api").allow("k")
    store.close()
    again.close()


def test_memory_is_an_anonymous_table():
    store = store_from_url("memory://")
    assert isinstance(store, SharedTable) and store.path is None


@pytest.mark.parametrize("url, fragment", [
    ("mongodb://h/x", "unknown scheme 'mongodb'; expected one of shm://, memory://"),
    ("shm://", "expected shm://NAME"),
    ("shm://t?capacity=lots", "capacity must be a positive integer, got 'lots'"),
    ("shm://t?size=5", "unknown parameter 'size'"),
    ("memory://name", "memory:// tables have no name"),
    ("redis://127.0.0.1:1/0?timeout=soon", "timeout must be a number of seconds, got 'soon'"),
    ("redis+sentinel://h1/svc", "got the sentinel 'h1'"),
    ("redis+sentinel://h1:26379/", "expected redis+sentinel://HOST:PORT/SERVICE"),
    ("redis+sentinel://:s3cret@h1:x/svc", ":***@h1:x/svc"),
    (7, "a storage URI must be a str, got 7"),
])
def test_a_bad_uri_is_named_with_what_is_accepted(url, fragment):
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        store_from_url(url)


def test_a_password_is_never_shown():
    with pytest.raises(ConfigurationError) as caught:
        store_from_url("redis+sentinel://:s3cret@h1:x/svc")
    assert "s3cret" not in str(caught.value)


def test_redis_url_with_backend_options(redis_server):
    store = store_from_url(redis_server.url + "?fail=closed&prefix=urltest&timeout=2")
    assert isinstance(store, RedisBackend)
    assert (store.fail, store.prefix, store.timeout) == ("closed", "urltest", 2.0)
    lim = Limiter("1/1h", store=store, name="u")
    assert [lim.allow("k") for _ in range(2)] == [True, False]


def test_redis_cluster_url(redis_cluster):
    store = store_from_url(f"redis+cluster://127.0.0.1:{redis_cluster.port}?prefix=urlc")
    assert type(store.client).__name__ == "RedisCluster"
    lim = Limiter("1/1h", store=store, name="u")
    assert [lim.allow("k") for _ in range(2)] == [True, False]


def test_redis_sentinel_url_finds_the_master(redis_sentinel):
    # the session's Sentinel setup (conftest.py, tests/redis_topologies.py)
    store = store_from_url(redis_sentinel.url + "?prefix=urls")
    lim = Limiter("1/1h", store=store, name="u")
    assert [lim.allow("k") for _ in range(2)] == [True, False]


def test_store_from_url_is_public():
    assert fastlimit.store_from_url is store_from_url
