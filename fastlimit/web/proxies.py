"""The client address: the socket peer, or what a trusted proxy reported."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from fastlimit.errors import ConfigurationError
from fastlimit.http._addr import ipv4
from fastlimit.web._serve import ClientAddress
from fastlimit.web.view import RequestView, header_reader

__all__ = ["ForwardedHeader", "TrustedProxies"]

ForwardedHeader = Literal["x-forwarded-for", "forwarded"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Which peers may say who the client is, and the header they say it in.

    The client address is the socket peer, unless the peer is a trusted
    proxy: then it is the right-most address in the forwarding header that
    is not itself a trusted proxy (each proxy appends the address it got
    the request from, so everything left of that is what the client
    wrote, and could be made up).  A header from an untrusted peer is
    never read.  Only one header is read (``X-Forwarded-For`` by default,
    or RFC 7239 ``Forwarded``): a proxy that sets one passes the other
    through from the client unchanged.

    Args:
        proxies: IP addresses and networks (``"10.0.0.0/8"``); ``"unix"``
            trusts peers on a Unix socket (they have no address).
        header: ``"x-forwarded-for"`` or ``"forwarded"``.

    Raises:
        ConfigurationError: an entry is not an address or network.

    Example:
        >>> proxies = TrustedProxies(["10.0.0.0/8"])
        >>> def ip(peer, xff):
        ...     return proxies.client_ip(RequestView.from_environ(
        ...         {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": xff}))
        >>> ip("203.0.113.9", "1.2.3.4")          # not a proxy: its header is ignored
        '203.0.113.9'
        >>> ip("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.3")
        '198.51.100.7'
    """

    def __init__(self, proxies: Iterable[str] = (), *,
                 header: ForwardedHeader = "x-forwarded-for") -> None:
        if isinstance(proxies, str):
            proxies = [p for p in proxies.replace(",", " ").split() if p]
        nets: list[_Network] = []
        self.unix = False
        for entry in proxies:
            if entry == "unix":
                self.unix = True
                continue
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"trusted_proxies: expected IP addresses or networks (or 'unix'), "
                    f"got {entry!r}") from None
        if header not in ("x-forwarded-for", "forwarded"):
            raise ConfigurationError(
                f"forwarded header must be 'x-forwarded-for' or 'forwarded', got {header!r}")
        self.networks: tuple[_Network, ...] = tuple(nets)
        self.header = header
        self.enabled = bool(nets) or self.unix
        # Compiled: it runs on every request.  IPv4 addresses (most
        # clients, a new one on most requests) are read and checked in C,
        # with nothing remembered per address.
        v4 = tuple((int(n.network_address), int(n.netmask))
                   for n in nets if isinstance(n, ipaddress.IPv4Network))
        self._client = ClientAddress(
            header_reader(header), self.unix, v4, self._is_trusted, _hop_address,
            None if header == "x-forwarded-for" else _forwarded_hops)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def client_ip(self, view: RequestView) -> str | None:
        """The client address of ``view`` (see the class docs)."""
        if not self.enabled:
            return view.peer
        found: str | None = self._client(view)
        return found

    def __repr__(self) -> str:
        names = [str(n) for n in self.networks] + (["unix"] if self.unix else [])
        return f"<TrustedProxies {names} via {self.header}>"


def _forwarded_hops(value: str) -> list[str]:
    """The ``for=`` of each RFC 7239 element (``""`` where it has none)."""
    hops: list[str] = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            key, eq, val = pair.partition("=")
            if eq and key.strip().lower() == "for":
                found = val.strip().strip('"')
                break
        hops.append(found)
    return hops


def _hop_address(hop: str) -> str | None:
    """A forwarded hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``)
    as a normalised address, or None if it is not one."""
    hop = hop.strip()
    if ipv4(hop) >= 0:
        return hop  # a dotted quad ipv4() accepts is in normal form
    if hop.startswith("["):
        end = hop.find("]")
        hop = hop[1:end] if end > 0 else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None
