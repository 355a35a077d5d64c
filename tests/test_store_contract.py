"""The store contract (fastlimit/stores/contract.py): every store says what
it holds and can do, and the limiters and the policy ask it instead of
testing its class.  The arithmetic each store owes is checked by the tests
that take ``store_factory`` (test_gcra.py's traces against the model, its
misuse and key-identity rules, test_fuzz.py's hostile keys), which run on
the shared table, Redis and the store of README's "Writing a store"."""

import pytest

from fastlimit import (
    ConcurrencyLimit,
    ConfigurationError,
    FakeClock,
    Identity,
    Limiter,
    Policy,
    Quota,
    RedisBackend,
    SharedTable,
)
from fastlimit.examples.memory_store import MemoryStore
from fastlimit.stores.contract import (
    Bookable,
    Holdable,
    LeaseSlots,
    QuotaCounts,
    RateState,
    Renewable,
    Store,
    key_identity,
)

S = 10**9


def test_each_store_says_what_it_holds_and_what_its_states_can_do(store_factory):
    store = store_factory()
    assert isinstance(store, Store)
    rate = store.rate_state("contract", S, 3)
    assert isinstance(rate, RateState)
    bookable, holdable = isinstance(rate, Bookable), isinstance(rate, Holdable)
    if isinstance(store, SharedTable):
        assert store.kinds == {"rate", "concurrency"} and bookable and holdable
        assert isinstance(store.lease_slots("contract"), LeaseSlots)
    elif isinstance(store, RedisBackend):
        assert store.kinds == {"rate", "quota", "concurrency"}
        assert not bookable and not holdable  # waits retry; the client throttle's holds skip
        assert isinstance(store.quota_counts("contract", 5), QuotaCounts)
        assert isinstance(store.lease_slots("contract"), Renewable)
    else:
        assert store.kinds == {"rate"} and not bookable and not holdable


def test_a_store_without_bookings_still_serves_waits_in_turn():
    # Limiter.wait books a turn where the state is Bookable; elsewhere it
    # retries on the limiter's clock: the answers are the same.
    clock = FakeClock()
    lim = Limiter("2/1s", MemoryStore(), clock=clock)
    assert [lim.wait("k", timeout=0) for _ in range(3)] == [True, True, False]
    start = clock()
    assert lim.wait("k", timeout=1)
    assert clock() - start == S // 2


def test_a_store_that_holds_no_leases_is_refused_by_name():
    with pytest.raises(ConfigurationError, match="concurrency limit 'uploads'"):
        ConcurrencyLimit(2, MemoryStore(), name="uploads")
    with pytest.raises(ConfigurationError, match="quota 'chat'"):
        Quota("3/day", store=MemoryStore(), name="chat")


def test_a_policy_counts_quotas_beside_a_store_that_holds_only_rates(tmp_path):
    clock, wall = FakeClock(), FakeClock(1_775_397_600 * S)
    policy = Policy.from_dict({
        "policy": {"name": f"contract-{tmp_path.name}"},
        "store": {"quotas": str(tmp_path / "quotas.tbl")},
        "identities": {"api_key": {"rate": "tier"}},
        "tiers": {"PRO": {"requests_per_minute": 100, "quotas": {"chat": "3/month"}}},
        "quotas": {"chat": {"match": "POST /chat"}},
    }, store=MemoryStore(), clock=clock, wall_clock=wall)
    caller = Identity.api_key("key-1", tier="PRO")
    try:
        answers = [policy.hit("POST", "/chat", caller).allowed for _ in range(4)]
        assert answers == [True, True, True, False]
        assert (tmp_path / "quotas.tbl").exists()
        # the rate counted the 3 quota hits that passed (a denial counts nothing)
        assert [policy.hit("GET", "/other", caller).allowed for _ in range(98)] == [True] * 97 + [
            False]
    finally:
        policy.close()


@pytest.mark.parametrize("key, identity", [
    ("a", b"a"), (b"a", b"a"), ("é", "é".encode()), (7, 7), (True, 1), (-1, 2**64 - 1),
    (2**63, 2**63),
])
def test_key_identity_is_the_one_rule(key, identity):
    assert key_identity(key) == identity


@pytest.mark.parametrize("key, error, named", [
    (2**64, ValueError, "must fit in 64 bits"), (-(2**63) - 1, ValueError, "64 bits"),
    (1.5, TypeError, "float"), (None, TypeError, "NoneType"),
    (bytearray(b"a"), TypeError, "bytearray"), ("\udc80", UnicodeEncodeError, "surrogates"),
])
def test_key_identity_refuses_what_no_store_can_hold(key, error, named):
    with pytest.raises(error, match=named):
        key_identity(key)
