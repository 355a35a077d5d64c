"""What the WSGI and ASGI middleware share: a neutral view of the request,
the client address (from trusted proxies only), the identity helpers, and
the step from a request to a :class:`~fastlimit.PolicyDecision`.

An ``identify`` callable takes a :class:`RequestView` and returns the
:class:`~fastlimit.Identity` the application authenticated, or None for an
anonymous caller.  The helpers here cover the common cases::

    identify = first_of(
        api_key_header(lambda key: KEYS.get(key)),        # -> (tier, account) or None
        session_cookie(lambda sid: SESSIONS.get(sid)),    # -> user id or None
    )

A credential that is present but unknown gives :meth:`Identity.invalid`
(limited like an anonymous caller, per IP); an absent one gives None, and
:func:`first_of` then asks the next helper.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from fastlimit._lane import (
    FirstOf,
    HeaderIdentity,
    Lane,
    ViewFields,
    asgi_view,
    scope_header,
    wsgi_view,
)
from fastlimit.composite import CompositeResult
from fastlimit.errors import CapacityError, ConfigurationError
from fastlimit.limiter import Limiter
from fastlimit.policy import Identity, Policy, PolicyDecision

__all__ = [
    "Identify",
    "Outcome",
    "RateLimited",
    "RequestView",
    "RouteLimit",
    "TrustedProxies",
    "api_key_header",
    "bearer_token",
    "first_of",
    "session_cookie",
]

ForwardedHeader = Literal["x-forwarded-for", "forwarded"]


class RequestView(ViewFields):
    """One HTTP request as fastlimit sees it, whether it came as a WSGI
    environ or an ASGI scope.  ``identify`` and ``cost`` callables get one.

    Attributes:
        method: the request method, upper case.
        path: the path as routed: percent-decoded, without the query.
        peer: the socket peer's address (WSGI ``REMOTE_ADDR``, ASGI
            ``scope["client"][0]``), or None (a Unix socket).
        client_ip: the client address the limits use: the peer, or what a
            trusted proxy reported (see :class:`TrustedProxies`).
        raw: the WSGI environ or the ASGI scope itself.

    Example:
        >>> view = RequestView.from_environ({"REQUEST_METHOD": "GET", "PATH_INFO": "/a",
        ...     "REMOTE_ADDR": "10.0.0.1", "HTTP_X_API_KEY": "k1",
        ...     "HTTP_COOKIE": "theme=dark; session=s9"})
        >>> view.method, view.path, view.peer, view.header("x-api-key"), view.cookie("session")
        ('GET', '/a', '10.0.0.1', 'k1', 's9')
    """

    # The fields live in the compiled base (fastlimit._lane.ViewFields).
    __slots__ = ()

    method: str
    path: str
    peer: str | None
    client_ip: str | None
    raw: Mapping[str, Any]

    @staticmethod
    def from_environ(environ: Mapping[str, Any]) -> RequestView:
        """The view of a WSGI request."""
        return _WSGIView(environ)

    @staticmethod
    def from_scope(scope: Mapping[str, Any]) -> RequestView:
        """The view of an ASGI ``http`` request."""
        return _ASGIView(scope)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or None; repeated
        headers are joined with ``,``."""
        raise NotImplementedError

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name``, or None."""
        header = self.header("cookie")
        if not header or name not in header:
            return None
        for part in header.replace(",", ";").split(";"):
            key, eq, value = part.partition("=")
            if eq and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
        return None

    @property
    def content_length(self) -> int | None:
        """The declared body size in bytes, or None (absent or malformed)."""
        value = self.header("content-length")
        if value is None:
            return None
        return _content_length(value)

    def __repr__(self) -> str:
        return f"<RequestView {self.method} {self.path} from {self.client_ip or self.peer}>"


# Larger than any body: what a Content-Length of more than 19 digits is taken
# as, so that it meets every byte cap (None would skip the caps).
_HUGE_LENGTH = 10**19


def _content_length(value: str) -> int | None:
    value = value.strip()
    if not (value.isdigit() and value.isascii()):
        return None
    # int() of a client's 5000 digits raises (Python caps int-from-str at 4300)
    digits = value.lstrip("0")
    return _HUGE_LENGTH if len(digits) > 19 else int(digits or "0")


# Header names are turned into environ keys or ASGI byte names once per
# name, not per request.
@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


@functools.lru_cache(maxsize=256)
def _asgi_name(name: str) -> bytes:
    return name.lower().encode("latin-1")


class _WSGIView(RequestView):
    __slots__ = ()

    def __init__(self, environ: Mapping[str, Any]) -> None:
        wsgi_view(self, environ)

    def header(self, name: str) -> str | None:
        value: str | None = self.raw.get(_environ_key(name))
        return value

    @property
    def content_length(self) -> int | None:
        value = self.raw.get("CONTENT_LENGTH")
        if not value:  # the common case (a GET) costs one look-up
            return None
        return _content_length(value)


class _ASGIView(RequestView):
    __slots__ = ()

    def __init__(self, scope: Mapping[str, Any]) -> None:
        asgi_view(self, scope)

    def header(self, name: str) -> str | None:
        return scope_header(self.raw.get("headers", ()), _asgi_name(name))


# -- the client address ------------------------------------------------------


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
        # Per-address answers are memoised, bounded: most requests come from
        # a few proxies, and a flood of client addresses only evicts.
        self._trusted = functools.lru_cache(maxsize=4096)(self._is_trusted)

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
        peer = view.peer
        if not self.enabled:
            return peer
        if peer is None:
            if not self.unix:
                return None
        elif not self._trusted(peer):
            return peer
        value = view.header(self.header)
        if not value:
            return peer
        hops = _xff_hops(value) if self.header == "x-forwarded-for" else _forwarded_hops(value)
        client = peer
        for hop in reversed(hops):
            address = _hop_address(hop)
            if address is None:
                # "unknown", an obfuscated "_node" or garbage: nothing to key
                # on or trust, so the proxy that reported it is the client.
                break
            client = address
            if not self._trusted(address):
                break
        return client

    def __repr__(self) -> str:
        names = [str(n) for n in self.networks] + (["unix"] if self.unix else [])
        return f"<TrustedProxies {names} via {self.header}>"


def _xff_hops(value: str) -> list[str]:
    return value.split(",")


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


@functools.lru_cache(maxsize=4096)
def _hop_address(hop: str) -> str | None:
    """A forwarded hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``)
    as a normalised address, or None if it is not one."""
    hop = hop.strip()
    if hop.startswith("["):
        end = hop.find("]")
        hop = hop[1:end] if end > 0 else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


# -- identities --------------------------------------------------------------


Identify = Callable[[RequestView], Identity | None]
"""Who makes a request: an Identity, or None for an anonymous caller."""


def api_key_header(lookup: Callable[[str], tuple[str, str | None] | None], *,
                   header: str = "X-API-Key") -> Identify:
    """API keys sent in ``header``; ``lookup(key)`` returns ``(tier,
    account)`` (account may be None) for a valid key, else None.

    Example:
        >>> identify = api_key_header({"k1": ("STARTER", "acct_9")}.get)
        >>> identify(RequestView.from_environ({"HTTP_X_API_KEY": "k1"}))
        Identity(kind='api_key', subject='k1', tier='STARTER', account='acct_9')
        >>> identify(RequestView.from_environ({"HTTP_X_API_KEY": "nope"})).kind
        'invalid'
        >>> identify(RequestView.from_environ({})) is None
        True
    """

    return _header_identity("api_key", lookup, header)


def session_cookie(lookup: Callable[[str], str | None], *,
                   cookie: str = "session") -> Identify:
    """Sessions named by ``cookie``; ``lookup(value)`` returns the subject
    (user id, best) of a valid session, else None.

    Example:
        >>> identify = session_cookie({"s9": "user_7"}.get)
        >>> identify(RequestView.from_environ({"HTTP_COOKIE": "session=s9"}))
        Identity(kind='session', subject='user_7', tier=None, account=None)
    """

    def identify(view: RequestView) -> Identity | None:
        value = view.cookie(cookie)
        if not value:
            return None
        subject = lookup(value)
        if not subject:
            return _INVALID
        return _new_identity(Identity, ("session", subject, None, None))

    return identify


def bearer_token(lookup: Callable[[str], str | None]) -> Identify:
    """API tokens sent as ``Authorization: Bearer <token>`` (seed 002);
    ``lookup(token)`` returns the token's id, the subject its limit and
    overrides are keyed by, for a valid token, else None.  Pass
    ``lambda token: token`` only when a gateway already checked tokens.

    Example:
        >>> identify = bearer_token({"tok_live_1": "tok_1"}.get)
        >>> identify(RequestView.from_environ({"HTTP_AUTHORIZATION": "Bearer tok_live_1"}))
        Identity(kind='token', subject='tok_1', tier=None, account=None)
    """

    return _header_identity("token", lookup, "authorization")


def first_of(*identifiers: Identify) -> Identify:
    """The first identity any of ``identifiers`` finds (None when none does).

    Example:
        >>> identify = first_of(api_key_header({}.get), session_cookie(str.upper))
        >>> identify(RequestView.from_environ({"HTTP_COOKIE": "session=s9"})).subject
        'S9'
    """

    return FirstOf(identifiers)


def _anonymous(view: RequestView) -> Identity | None:
    return None


def _header_identity(kind: str, lookup: Callable[[str], Any], header: str) -> Identify:
    # compiled: it runs on every request (fastlimit._lane.HeaderIdentity)
    return HeaderIdentity(kind, lookup, header, _environ_key(header), _asgi_name(header),
                          Identity, _INVALID,
                          _WSGIView, _ASGIView)


_INVALID = Identity.invalid()
# Identity's field order, without the keyword handling of its __new__: this
# runs on every request.
_new_identity = tuple.__new__


# -- from request to decision ------------------------------------------------


class Outcome(Protocol):
    """What the middleware acts on: a :class:`~fastlimit.PolicyDecision`, or
    the 413 answer to a cost no limit could ever admit."""

    @property
    def allowed(self) -> bool: ...
    @property
    def status(self) -> int | None: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...
    @property
    def body(self) -> bytes | None: ...
    @property
    def content_type(self) -> str: ...
    @property
    def holding(self) -> bool: ...
    def release(self) -> None: ...


class _TooLarge:
    """A request whose cost exceeds a limit's burst can never pass: 413."""

    allowed = False
    status = 413
    content_type = "application/json"
    body = (b'{"success":false,"error":{"code":"PAYLOAD_TOO_LARGE",'
            b'"message":"Request exceeds the rate limit\'s capacity"}}')

    holding = False

    def __init__(self, error: CapacityError) -> None:
        self.error = error
        self.headers: list[tuple[str, str]] = []

    def release(self) -> None:
        pass


Cost = int | Callable[[RequestView], int]

# The per-IP key of requests with no client address (a Unix socket peer, not
# a trusted proxy or one that sent no usable forwarding header): they share
# one bucket, rather than raising.  No address normalises to this text.
NO_ADDRESS = "unix"

# The names a rate-limit header can have: the application's own win.
RATE_HEADERS = frozenset({"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                          "ratelimit", "ratelimit-policy", "retry-after"})


class Gate:
    """The request-to-decision step both middlewares run.

    Args: as for :class:`fastlimit.wsgi.RateLimitMiddleware`.
    """

    def __init__(self, policy: Policy, *, identify: Identify | None = None,
                 trusted_proxies: Iterable[str] | TrustedProxies = (),
                 forwarded_header: ForwardedHeader = "x-forwarded-for",
                 cost: Cost = 1, exempt_paths: Collection[str] = ()) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"expected a fastlimit.Policy, got {type(policy).__name__}")
        self.policy = policy
        self.identify: Identify = identify or _anonymous
        self.proxies = (trusted_proxies if isinstance(trusted_proxies, TrustedProxies)
                        else TrustedProxies(trusted_proxies, header=forwarded_header))
        if isinstance(cost, bool) or not (isinstance(cost, int) or callable(cost)):
            raise TypeError(f"cost must be an int or a callable, got {cost!r}")
        self.cost = cost
        self._fixed_cost = cost if isinstance(cost, int) else None
        self._hit = policy.hit
        self._proxies = self.proxies.client_ip if self.proxies.enabled else None
        self.exempt_paths = frozenset(exempt_paths)
        # A subclass's own hit or resolve must see every request.
        planned = (getattr(type(policy).hit, "__code__", None) is Policy.hit.__code__
                   and getattr(type(policy).resolve, "__code__", None) is Policy.resolve.__code__)
        self.check: Callable[[RequestView], Outcome] = Lane(
            self, planned=planned, limiter_type=Limiter, result_type=CompositeResult,
            decision_type=PolicyDecision, no_address=NO_ADDRESS,
            view_types=(_WSGIView, _ASGIView)).check
        """Count a request (a :class:`RequestView`) under the policy: the
        middlewares' per-request step, compiled (:mod:`fastlimit._lane`)."""

    def _general(self, view: RequestView, identity: Identity | None, cost: Any) -> Outcome:
        """What the compiled check hands over: :meth:`Policy.hit`."""
        try:
            return self._hit(view.method, view.path, identity, view.client_ip or NO_ADDRESS,
                             cost=cost, content_length=view.content_length)
        except CapacityError as e:
            return _TooLarge(e)


class RateLimited(Exception):
    """Raised by :meth:`RouteLimit.check` when the policy denies; answer it
    with :attr:`status`, :attr:`headers`, :attr:`body` and
    :attr:`content_type` (see the README's Starlette and Flask recipes)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"rate limited ({outcome.status})")
        self.outcome = outcome
        self.status: int = outcome.status or 429
        self.headers: list[tuple[str, str]] = outcome.headers
        self.body: bytes = outcome.body or b""
        self.content_type: str = outcome.content_type


class RouteLimit:
    """A policy checked inside chosen routes instead of around the whole
    application: a FastAPI dependency, a Flask decorator, a call at the top
    of an endpoint.  Don't count the same request under the same policy in
    both the middleware and a RouteLimit.

    Args: as for :class:`fastlimit.wsgi.RateLimitMiddleware`, without
    ``app`` and ``exempt_paths``.

    Example:
        >>> from fastlimit import Policy
        >>> login = RouteLimit(Policy.from_dict({"identities": {"anonymous": {"rate": "1/1h"}}}))
        >>> environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "REMOTE_ADDR": "10.0.0.1"}
        >>> decision = login.check(environ)     # or an ASGI scope
        >>> decision.release()                  # once the response is sent
        >>> login.check(environ)
        Traceback (most recent call last):
        ...
        fastlimit.web.RateLimited: rate limited (429)
    """

    def __init__(self, policy: Policy, *, identify: Identify | None = None,
                 trusted_proxies: Iterable[str] | TrustedProxies = (),
                 forwarded_header: ForwardedHeader = "x-forwarded-for",
                 cost: Cost = 1) -> None:
        self.gate = Gate(policy, identify=identify, trusted_proxies=trusted_proxies,
                         forwarded_header=forwarded_header, cost=cost)

    def check(self, request: Mapping[str, Any]) -> Outcome:
        """Count the request (a WSGI environ or an ASGI scope).

        Returns:
            the allowed decision: add its ``headers`` to the response and
            call its ``release()`` when the response is sent.

        Raises:
            RateLimited: denied (nothing to release).
        """
        view = (RequestView.from_scope(request) if "type" in request
                else RequestView.from_environ(request))
        outcome = self.gate.check(view)
        if not outcome.allowed:
            outcome.release()
            raise RateLimited(outcome)
        return outcome


def denial_headers(outcome: Outcome, body: bytes) -> list[tuple[str, str]]:
    """The headers of a denial: its content type and length, then the
    policy's headers (Retry-After included)."""
    return [("Content-Type", outcome.content_type), ("Content-Length", str(len(body))),
            *outcome.headers]


def merge_headers(app_headers: Sequence[tuple[str, str]],
                  extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``app_headers`` plus ``extra``, except the rate-limit fields the
    application set itself (a check inside the app knows more)."""
    for name, _ in app_headers:
        if name.lower() in RATE_HEADERS:
            break
    else:
        return [*app_headers, *extra]
    present = {name.lower() for name, _ in app_headers}
    return [*app_headers, *(h for h in extra if h[0].lower() not in present)]
