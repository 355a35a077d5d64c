"""Several rates in one limit ("10/second;1000/day"): every one must pass,
none is consumed by a denial, the headers report the binding one."""

import pytest

from fastlimit import ConfigurationError, FakeClock, Policy


def policy(rate, clock):
    return Policy.from_dict({
        "identities": {"anonymous": {"rate": "1000/1m"}},
        "routes": {"login": {"match": "POST /login", "rate": rate}},
        "headers": {"reset": "delta"},
    }, clock=clock)


@pytest.mark.parametrize("rate", ["2/1s;3/1h", ["2/1s", "3/1h"], "2 per second | 3 per hour"])
def test_every_rate_must_pass(rate):
    clock = FakeClock()
    p = policy(rate, clock)
    hit = lambda: p.hit("POST", "/login", None, "10.0.0.1")  # noqa: E731
    assert [hit().allowed for _ in range(3)] == [True, True, False]  # the second binds
    clock.advance(1)
    assert hit().allowed  # the third of the hour
    clock.advance(1)
    denied = hit()  # the per-second bucket has room, the hour has none
    assert not denied.allowed
    assert dict(denied.headers)["X-RateLimit-Limit"] == "3"
    assert [r.name for r in p.spec.routes] == ["login", "login~1h"]


def test_a_denial_consumes_none_of_the_rates():
    clock = FakeClock()
    p = policy("1/1s;5/1h", clock)
    admitted = 0
    for _ in range(20):  # 10 s of hammering, twice a second
        admitted += p.hit("POST", "/login", None, "10.0.0.1").allowed
        clock.advance(0.5)
    assert admitted == 5  # the hour's 5, not fewer: the 15 denials took nothing


def test_two_rates_over_one_window_are_refused():
    with pytest.raises(ConfigurationError, match="routes.login.rate: expected rates of "
                                                 "different windows"):
        policy("2/1s;5/1s", FakeClock())
