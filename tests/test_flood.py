"""Floods: of unique keys (spoofed IPs), and of keys chosen to collide.

* A flood of 10x the table's capacity in unique keys never evicts or resets
  a live key: only fully replenished keys (no state to lose) give up their
  slots, and a new key that finds its two buckets full of live keys gets
  what ``on_full`` says.
* Keys are placed by SipHash-1-3 under the table's random 128-bit secret:
  key sets built to collide under a plain or unkeyed hash (sequential ints,
  IPs, common prefixes, Python's hash collisions) spread over the buckets
  as uniformly random keys do (chi-square), and the secret differs per table.
"""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest
from servers import call_wsgi

from fastlimit import (
    ConfigurationError,
    FakeClock,
    Limiter,
    Policy,
    SharedTable,
    TableFullError,
    wsgi,
)

pytestmark = pytest.mark.slow

S = 10**9


def spoofed_ips(n, seed, exclude=()):
    """``n`` distinct random IPv4 addresses, as a flood would send them."""
    rng = random.Random(seed)
    seen = set(exclude)
    out = []
    while len(out) < n:
        ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        if ip not in seen:
            seen.add(ip)
            out.append(ip)
    return out


# -- key floods ------------------------------------------------------------------


@pytest.mark.parametrize("on_full", ["deny", "allow", "raise"])
def test_a_flood_of_ten_times_capacity_never_evicts_a_live_key(on_full):
    clock = FakeClock()
    capacity = 2048
    table = SharedTable.anonymous(capacity=capacity, on_full=on_full)
    lim = Limiter("5/1h", store=table, name="per-ip", clock=clock)
    T = lim.rate.emission_interval_ns
    legit = [f"198.51.100.{i}" for i in range(60)]
    for i, ip in enumerate(legit):
        lim.hit(ip, cost=1 + i % 5)  # live: 0 to 4 hits left
    before = {ip: lim.peek(ip) for ip in legit}

    flood = spoofed_ips(10 * capacity, seed=1, exclude=legit)
    tracked, turned_away = [], []
    for ip in flood:
        full_before = table.stats(clock()).full_events
        try:
            d = lim.hit(ip)
        except TableFullError as e:
            assert on_full == "raise" and f"no free slot for key {ip!r} of 'per-ip'" in str(e)
            turned_away.append(ip)
            continue
        if table.stats(clock()).full_events > full_before:
            turned_away.append(ip)
            if on_full == "deny":
                assert not d.allowed and d.remaining == 0 and d.retry_after_ns == T
            else:  # allowed, answered as a first hit, nothing stored
                assert d.allowed and d.remaining == 4 and d.reset_after_ns == T
        else:
            assert d.allowed and d.remaining == 4
            tracked.append(ip)

    assert {ip: lim.peek(ip) for ip in legit} == before, "no live key was evicted or reset"
    stats = table.stats(clock())
    assert len(turned_away) > 8 * capacity, "the flood filled the table"
    assert stats.full_events == len(turned_away)
    assert stats.live_keys == len(legit) + len(tracked) <= stats.slots
    assert table.verify() == [] and stats.locked_slots == 0
    assert all(lim.peek(ip).remaining == 4 for ip in tracked[:100]), "flood keys keep state"
    assert lim.hit(legit[0]).remaining == before[legit[0]].remaining - 1, "legit keys count on"

    # once replenished, keys hold no state: their slots serve new keys again
    clock.advance(3600)
    again = spoofed_ips(stats.slots // 2, seed=2, exclude=set(flood) | set(legit))
    lim.hit_many(again)
    assert table.stats(clock()).live_keys == len(again)
    assert table.stats(clock()).full_events == stats.full_events


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def test_a_flood_through_the_middleware_leaves_a_real_client_its_limit():
    clock = FakeClock()
    table = SharedTable.anonymous(capacity=256)
    policy = Policy.from_dict({"identities": {"anonymous": {"rate": "3/1h"}}}, store=table,
                              clock=clock)
    app = wsgi.RateLimitMiddleware(_hello, policy, trusted_proxies=["10.0.0.0/8"])

    def get(peer, forwarded=None):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": peer}
        if forwarded is not None:
            environ["HTTP_X_FORWARDED_FOR"] = forwarded
        status = []
        call_wsgi(app, environ, lambda s, h, exc_info=None: status.append(int(s[:3])))
        return status[0]

    assert get("10.0.0.2", "198.51.100.7") == 200  # a real client behind the proxy
    for ip in spoofed_ips(10 * 256, seed=3):  # a botnet, through the proxy
        get("10.0.0.2", f"{ip}, 10.0.0.9")
    for ip in spoofed_ips(300, seed=4):  # made-up headers from an untrusted peer
        assert get("203.0.113.5", ip) in (200, 429)
    assert [get("10.0.0.2", "198.51.100.7") for _ in range(3)] == [200, 200, 429], \
        "exactly its 2 remaining hits, flood or not"
    assert [get("203.0.113.5", "1.1.1.1") for _ in range(1)] == [429], \
        "the untrusted peer was one key all along"
    assert table.verify() == []


# -- hash flooding ---------------------------------------------------------------

NBUCKETS_CAPACITY = 23_000  # ~4096 buckets
PER_BUCKET = 16


def chi_square_z(buckets, nbuckets):
    """The Wilson-Hilferty z-score of the chi-square statistic of bucket
    counts against uniform: about N(0, 1) for random keys.  z > 7 happens
    by chance with probability about 1e-12."""
    counts = np.bincount(buckets, minlength=nbuckets).astype(np.float64)
    expected = len(buckets) / nbuckets
    chi2 = ((counts - expected) ** 2 / expected).sum()
    df = nbuckets - 1
    return ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / np.sqrt(2 / (9 * df))


def bucket_pair(fps, nbuckets):
    """A fingerprint's two buckets, as _core.pyx's _bucket1 and _bucket2
    compute them (and SharedTable.verify() checks)."""
    fps = np.asarray(fps, dtype=np.uint64)
    nb = np.uint64(nbuckets)
    low = ((fps & np.uint64(0xFFFFFFFF)) * nb) >> np.uint64(32)
    high = ((fps >> np.uint64(32)) * nb) >> np.uint64(32)
    return low.astype(np.int64), high.astype(np.int64)


def adversarial_sets(n, nbuckets=4096):
    """Key sets that pile into few buckets under a plain, unkeyed or
    Python hash: what an attacker sends when the table's hash is known."""
    prefix = "x" * 1000
    return {
        "sequential ints": list(range(n)),
        "ints 2**32 apart": [i << 32 for i in range(n)],
        # Python's hash of a small int is the int: all in one bucket of hash % n
        "multiples of the bucket count": [i * nbuckets for i in range(n)],
        "sequential IPs": [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(n)],
        "common prefix": [f"user:{i:010d}" for i in range(n)],
        "1 KB common prefix": [f"{prefix}{i}" for i in range(n)],
        "one bit apart": [(b"\0" * 64 + i.to_bytes(8, "big")) for i in range(n)],
        "str and bytes twins": [f"k{i}".encode() for i in range(n)],
    }


@pytest.fixture(scope="module")
def hashed():
    table = SharedTable.anonymous(capacity=NBUCKETS_CAPACITY)
    nbuckets = table._nbuckets
    lim = Limiter("1/1h", store=table, name="api")
    fingerprint = lim._impl.fingerprint
    n = PER_BUCKET * nbuckets
    sets = {name: np.array([fingerprint(k) for k in keys], dtype=np.uint64)
            for name, keys in adversarial_sets(n, nbuckets).items()}
    return table, nbuckets, sets


@pytest.mark.parametrize("name", list(adversarial_sets(1)))
def test_adversarial_key_sets_spread_like_random_keys(hashed, name):
    _, nbuckets, sets = hashed
    low, high = bucket_pair(sets[name], nbuckets)
    for which, buckets in (("first", low), ("second", high)):
        z = chi_square_z(buckets, nbuckets)
        assert z < 7, f"{name}: {which} buckets are not uniform (chi-square z = {z:.1f})"


def test_the_spread_check_catches_a_weak_hash(hashed):
    # the same statistic, with Python's hash (the int itself) in place of
    # the keyed fingerprint, is enormous for these sets: the check can fail
    _, nbuckets, _ = hashed
    sets = adversarial_sets(PER_BUCKET * nbuckets, nbuckets)
    for name in ("multiples of the bucket count", "ints 2**32 apart"):
        weak = np.array([hash(k) for k in sets[name]], dtype=np.uint64)
        assert chi_square_z(bucket_pair(weak, nbuckets)[0], nbuckets) > 100, name


def test_fingerprints_never_collide_across_the_sets(hashed):
    _, nbuckets, sets = hashed
    keys = {k.encode() if isinstance(k, str) else k  # a str is its UTF-8 bytes
            for ks in adversarial_sets(PER_BUCKET * nbuckets, nbuckets).values() for k in ks}
    everything = np.concatenate(list(sets.values()))
    assert len(np.unique(everything)) == len(keys), "one fingerprint per distinct key"
    assert (everything != 0).all(), "0 is never a fingerprint"


@pytest.mark.parametrize("name", list(adversarial_sets(1)))
def test_adversarial_keys_fill_half_a_table_without_a_full_bucket_pair(name):
    table = SharedTable.anonymous(capacity=8192, on_full="raise")
    lim = Limiter("1/1h", store=table, name="api", clock=FakeClock())
    keys = adversarial_sets(4096)[name]
    assert lim.hit_many(keys).all()
    stats = table.stats(lim.clock())
    assert (stats.live_keys, stats.full_events) == (4096, 0)


def test_the_secret_differs_per_table_and_stays_with_it(table_name):
    a = SharedTable.open(table_name, capacity=100)
    key = "203.0.113.7"
    fp_a = Limiter("1/1h", store=a, name="api")._impl.fingerprint(key)
    again = SharedTable.open(table_name)
    assert Limiter("1/1h", store=again, name="api")._impl.fingerprint(key) == fp_a, \
        "every process attached to a table hashes alike"
    assert Limiter("1/1h", store=a, name="login")._impl.fingerprint(key) != fp_a, \
        "limiter names are part of the hash key"
    a.unlink()
    remade = SharedTable.open(table_name, capacity=100)
    assert Limiter("1/1h", store=remade, name="api")._impl.fingerprint(key) != fp_a
    others = {bytes(SharedTable.anonymous(capacity=10).header["secret"].tobytes())
              for _ in range(50)}
    assert len(others) == 50 and bytes(16) not in others


# -- an anonymous flood against the callers who sign in --------------------------------


def _flood_policy(table_name, clock, capacity=1000):
    return Policy.from_dict({
        "store": {"table": table_name, "capacity": capacity},
        "identities": {"session": {"rate": "100/1m"}, "api_key": {"rate": "100/1m"},
                       "anonymous": {"rate": "5/1m"}},
        "routes": {"POST /login": "5/1m"},
    }, clock=clock)


def _ip(i):
    return str(ipaddress.IPv4Address(0x0A000000 + i))


def test_an_anonymous_flood_never_starves_new_authenticated_callers(table_name):
    from fastlimit import Identity
    clock = FakeClock()
    policy = _flood_policy(table_name, clock)
    live = [Identity.session(f"live-{i}") for i in range(200)]
    for who in live:
        for _ in range(3):
            assert policy.hit("GET", "/v1/items", who, "192.0.2.1").allowed
    # 10x capacity of new addresses, 2 per-IP keys a request (the caller, the route),
    # all live for the minute the clock stands still
    for i in range(10 * 1000):
        policy.hit("POST", "/login", None, _ip(i))
    anonymous = policy.anonymous_store.stats()
    assert anonymous.full_events > 0, "the flood did fill the per-IP keys' table"
    # (within the capacity: 200 live and 500 new authenticated keys of 1000)
    new = [Identity.session(f"new-{i}") for i in range(250)] + [
        Identity.api_key(f"k{i}", "x", account=f"acct-{i}") for i in range(250)]
    denied = sum(not policy.hit("GET", "/v1/items", who, _ip(99_999)).allowed for who in new)
    assert denied <= len(new) // 100  # at most 1% (here: none)
    assert denied == 0
    for who in live:  # not one live authenticated key reset
        assert dict(policy.hit("GET", "/v1/items", who, "192.0.2.1").headers)[
            "X-RateLimit-Remaining"] == "96"
    assert policy.store.stats().full_events == 0
    tables = policy.tables
    assert tables["authenticated"] is policy.store
    assert tables["anonymous"].stats().full_events == anonymous.full_events
    from fastlimit.stores.metrics import prometheus_text
    text = prometheus_text(*tables.values())
    assert f'fastlimit_table_full_events_total{{table="{table_name}"}} 0' in text
    assert f'fastlimit_table_full_events_total{{table="{table_name}.anonymous"}} ' in text
    policy.close()


# -- an evicting table: the key due soonest is forgotten, never a lease ---------------


def test_an_evicting_table_forgets_the_key_due_soonest(table_name):
    clock = FakeClock()
    table = SharedTable.open(table_name, capacity=4, on_full="evict")  # one bucket pair
    slots = len(table.slots)
    lim = Limiter("10/1h", store=table, clock=clock)
    for k in range(slots):  # each later key is due later
        assert lim.hit(f"k{k}").allowed
        clock.advance(1)
    assert lim.hit("k3").allowed  # k3 is now due later than k0
    assert lim.hit("new").allowed, "a new key gets in"
    assert table.stats().evictions == 1 and table.stats().full_events == 0
    assert lim.peek("k0").remaining == 10, "k0, due soonest, was forgotten"
    assert lim.peek("k3").remaining == 8 and lim.peek("new").remaining == 9
    assert table.verify() == []


def test_an_evicting_table_never_takes_a_lease(table_name):
    from fastlimit import ConcurrencyLimit
    table = SharedTable.open(table_name, capacity=4, on_full="evict")
    leases = ConcurrencyLimit(1, table, name="uploads")
    held = [leases.try_acquire(f"k{k}") for k in range(len(table.slots))]
    assert all(held)
    assert not Limiter("10/1m", store=table).hit("new").allowed  # nothing to evict: deny
    assert table.stats().full_events == 1 and table.stats().evictions == 0
    assert all(leases.in_flight(f"k{k}") == 1 for k in range(len(held)))


def test_evict_is_for_rate_tables(tmp_path):
    with pytest.raises(ConfigurationError, match="on_full='evict' is for tables of rates"):
        SharedTable.open(path=tmp_path / "q.tbl", capacity=10, kind="quotas", on_full="evict")
    with pytest.raises(ConfigurationError, match="on_full must be one of"):
        Limiter("1/1s", on_full="evict")


def _flood_evicting(name, start, n):
    lim = Limiter("5/1m", store=SharedTable.attach(name, on_full="evict"))
    for i in range(start, start + n):
        lim.hit(i)


def test_processes_flooding_an_evicting_table_leave_it_sound(table_name):
    import multiprocessing as mp
    table = SharedTable.open(table_name, capacity=500, on_full="evict")
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=_flood_evicting, args=(table_name, w * 50_000, 20_000))
               for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    stats = table.stats()
    assert stats.evictions > 0 and stats.locked_slots == 0 and stats.lock_timeouts == 0
    assert table.verify() == []
    from fastlimit.stores.metrics import prometheus_text
    assert (f'fastlimit_table_evictions_total{{table="{table_name}"}} {stats.evictions}'
            in prometheus_text(table))


def test_a_new_anonymous_caller_gets_in_during_a_flood_on_an_evicting_table(table_name):
    clock = FakeClock()
    policy = Policy.from_dict({
        "store": {"table": table_name, "capacity": 1000, "anonymous_on_full": "evict"},
        "identities": {"session": {"rate": "100/1m"}, "anonymous": {"rate": "5/1m"}},
        "routes": {"POST /login": "5/1m"},
    }, clock=clock)
    for i in range(10 * 1000):
        policy.hit("POST", "/login", None, _ip(i))
    late = [policy.hit("GET", "/", None, f"198.51.100.{i}").allowed for i in range(100)]
    assert all(late), "the flood's own keys were forgotten first"
    assert policy.anonymous_store.stats().evictions > 0
    assert policy.anonymous_store.verify() == []
    policy.close()
