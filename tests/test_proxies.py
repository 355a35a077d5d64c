"""TrustedProxies.client_ip against a statement of the rule in plain Python
(ipaddress and str.split), on generated peers, networks and headers: the
compiled reader scans X-Forwarded-For from its right end and reads IPv4 in C,
so its edges (leading zeros, spaces, ports, more networks than its arrays
hold, IPv6 and mapped addresses) are checked here against the statement."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fastlimit.web import RequestView, TrustedProxies

# A hop: "[v6]" with anything after the bracket, or text with at most one
# colon (a port after it), or an address with colons (bare IPv6).
_HOP = re.compile(r"\[(?P<bracketed>[^\]]*)\].*|\[.*|(?P<host>[^:]*)(?::[^:]*)?|(?P<bare>.*)",
                  re.S)


def _address(text: str) -> str | None:
    """A hop as the statement reads it: brackets and a port dropped."""
    m = _HOP.fullmatch(text.strip())
    assert m is not None  # the last branch matches anything
    candidate = m.group("bracketed") or m.group("host") or m.group("bare") or ""
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _trusted(networks: list[str], address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:a.b.c.d is a.b.c.d
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def statement(networks: list[str], peer: str | None, hops: list[str] | None) -> str | None:
    """The right-most hop that is not a trusted proxy, walking left from a
    trusted peer; a hop that is no address ends the walk at the proxy that
    reported it.  An empty REMOTE_ADDR is no peer."""
    peer = peer or None
    if peer is None or not _trusted(networks, peer):
        return peer
    client = peer
    for hop in reversed(hops or []):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not _trusted(networks, address):
            break
    return client


def _client(networks: list[str], peer: str | None, xff: str | None) -> str | None:
    environ = {"REMOTE_ADDR": peer} if peer is not None else {}
    if xff is not None:
        environ["HTTP_X_FORWARDED_FOR"] = xff
    return TrustedProxies(networks).client_ip(RequestView.from_environ(environ))


octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["256", "00", "01", "999", ""]))
dotted = st.lists(octet, min_size=3, max_size=5).map(".".join)
ipv6 = st.sampled_from(["::1", "2001:db8::7", "2001:DB8:0::7", "::ffff:10.1.2.3", "fe80::1"])
hop_text = st.one_of(
    dotted,
    st.sampled_from(["10.0.0.7", "10.9.9.9", "192.168.4.4", "203.0.113.5", "unknown",
                     "_hidden", "1.2.3.4:8080", "[2001:db8::7]:443", "１.2.3.4"]),
    ipv6,
    st.text(alphabet="0123456789.: abf[]", max_size=16),
)
spaced = st.tuples(st.sampled_from(["", " ", "  ", "\t"]), hop_text,
                   st.sampled_from(["", " ", "\t"])).map("".join)
networks = st.lists(st.sampled_from(
    ["10.0.0.0/8", "192.168.0.0/16", "127.0.0.1", "203.0.113.0/24", "2001:db8::/32",
     "::1"] + [f"172.16.{i}.0/24" for i in range(20)]), max_size=24)


@settings(max_examples=600, deadline=None)
@given(networks=networks, peer=st.one_of(hop_text, st.sampled_from(["10.0.0.2", "::1"])),
       hops=st.one_of(st.none(), st.lists(spaced, min_size=1, max_size=5)))
def test_client_ip_follows_the_statement(networks, peer, hops):
    xff = None if hops is None else ",".join(hops)
    assert _client(networks, peer, xff) == statement(networks, peer, hops)


def test_more_trusted_networks_than_the_compiled_arrays_hold():
    nets = [f"172.16.{i}.0/24" for i in range(40)]
    assert _client(nets, "172.16.39.1", "198.51.100.1, 172.16.30.9") == "198.51.100.1"
    assert _client(nets, "172.16.39.1", "172.16.0.1") == "172.16.0.1"  # trusted all the way
    assert _client(nets, "172.17.0.1", "198.51.100.1") == "172.17.0.1"


def test_ipv4_read_exactly_as_ipaddress_reads_it():
    # A trusted peer reports each text; only a true dotted quad becomes the
    # client, anything else leaves the proxy itself as the client.
    for text, expected in [("1.2.3.4", "1.2.3.4"), ("255.255.255.255", "255.255.255.255"),
                           ("01.2.3.4", "10.0.0.2"), ("1.2.3.256", "10.0.0.2"),
                           ("1.2.3", "10.0.0.2"), ("1.2.3.4.5", "10.0.0.2"),
                           ("1..3.4", "10.0.0.2"), ("0.0.0.0", "0.0.0.0"),
                           (" 1.2.3.4\t", "1.2.3.4"), ("1.2.3.4:80", "1.2.3.4")]:
        assert _client(["10.0.0.0/8"], "10.0.0.2", text) == expected, text
