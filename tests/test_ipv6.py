"""Per-IP limits and IPv6: a client counts under its /64 (or the prefix a
policy or a limit sets), an IPv4-mapped address as the IPv4 address, a
zone id not at all."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastlimit import ConfigurationError, Policy, wsgi
from fastlimit.web import ip_key


def _policy(**extra):
    return Policy.from_dict({"identities": {"anonymous": {"rate": "5/1h"}}, **extra})


@given(st.integers(0, 2**128 - 1), st.integers(1, 128),
       st.sampled_from(["compressed", "exploded", "upper"]))
def test_the_key_is_the_network_ipaddress_writes(value, prefix, form):
    address = ipaddress.IPv6Address(value)
    text = address.exploded if form == "exploded" else str(address)
    text = text.upper() if form == "upper" else text
    if address.ipv4_mapped is not None:
        expected = str(address.ipv4_mapped)
    elif prefix == 128:
        expected = str(address)
    else:
        expected = ipaddress.IPv6Network(f"{address}/{prefix}", strict=False).compressed
    assert ip_key(text, prefix) == expected


@given(st.integers(0, 2**32 - 1))
def test_mapped_ipv4_is_the_ipv4_address(value):
    v4 = str(ipaddress.IPv4Address(value))
    assert ip_key(f"::ffff:{v4}", 64) == v4
    assert ip_key(str(ipaddress.IPv6Address(f"::ffff:{v4}").exploded), 64) == v4
    assert ip_key(v4, 64) == v4


@pytest.mark.parametrize("text", ["unix", "10.0.0.1", "1::2::3", ":", "::g", "12345::",
                                  "1:2:3:4:5:6:7:8:9", "[::1]", "::1.2.3", "1:"])
def test_what_is_not_an_ipv6_address_is_its_own_key(text):
    assert ip_key(text, 64) == text


def test_a_zone_is_dropped():
    assert ip_key("fe80::1%eth0", 128) == ip_key("fe80::1", 128) == "fe80::1"
    assert ip_key("fe80::1:2:3:4%2", 64) == "fe80::/64"


def _call(app, address):
    seen = []
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "REMOTE_ADDR": address}
    b"".join(app(environ, lambda status, headers, exc_info=None: seen.append(status)))
    return seen[0].startswith("200")


def _ok(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]


def test_a_thousand_addresses_of_one_64_share_one_limit():
    app = wsgi.RateLimitMiddleware(_ok, _policy(routes={"POST /login": "5/1h"}))
    admitted = sum(_call(app, f"2001:db8:7:1:{i:x}:{i * 7 % 65536:x}::{i:x}")
                   for i in range(1, 1001))
    assert admitted == 5
    assert _call(app, "2001:db8:7:2::1")  # the next /64 is another client


def test_mapped_and_plain_ipv4_share_one_bucket():
    policy = _policy()
    hits = [policy.hit("GET", "/", client_ip=ip).allowed
            for ip in ["::ffff:192.0.2.1", "192.0.2.1"] * 4]
    assert hits == [True] * 5 + [False] * 3


def test_the_prefix_is_set_per_policy_and_per_limit():
    policy = _policy(policy={"ipv6_prefix": 48},
                     routes={"POST /login": {"rate": "5/1h", "ipv6_prefix": 128}})
    # the anonymous limit: one bucket per /48
    assert [policy.hit("GET", "/", client_ip=f"2001:db8:1:{i:x}::1").allowed
            for i in range(7)] == [True] * 5 + [False] * 2
    # the login route: one per address (the anonymous limit of another /48 still passes)
    assert [policy.hit("POST", "/login", client_ip=f"2001:db8:2::{i:x}").allowed
            for i in range(1, 6)] == [True] * 5
    spec = policy.spec
    assert spec.ipv6_prefix == 48
    assert spec.identities["anonymous"].ipv6_prefix == 48
    assert spec.routes[0].ipv6_prefix == 128


def test_the_default_prefix_is_64():
    spec = _policy(routes={"POST /login": "5/1h"}).spec
    assert spec.ipv6_prefix == spec.identities["anonymous"].ipv6_prefix == 64
    assert spec.routes[0].ipv6_prefix == 64


@pytest.mark.parametrize("bad", [0, 129, -1, True, "64", 64.0])
def test_a_bad_prefix_names_the_key_and_what_is_accepted(bad):
    with pytest.raises(ConfigurationError, match=r"policy\.ipv6_prefix: expected an IPv6 "
                                                 r"prefix length from 1 to 128"):
        _policy(policy={"ipv6_prefix": bad})
    with pytest.raises(ConfigurationError, match=r"routes\.login\.ipv6_prefix"):
        _policy(routes={"login": {"match": "POST /login", "rate": "5/1h",
                                  "ipv6_prefix": bad}})
