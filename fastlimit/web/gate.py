"""The step from a request to a :class:`~fastlimit.PolicyDecision` that the
WSGI and ASGI middlewares share, and :class:`RouteLimit`, the same step
inside chosen routes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from fastlimit.errors import ConfigurationError, RateLimited
from fastlimit.policy._plan import normalize_path
from fastlimit.policy.identity import Identity
from fastlimit.policy.policy import Policy
from fastlimit.stores.workers import warn_if_split
from fastlimit.web._serve import Check, denial_headers
from fastlimit.web.identify import Identify, _anonymous
from fastlimit.web.proxies import ForwardedHeader, TrustedProxies
from fastlimit.web.view import RequestView, _ASGIView, _WSGIView

__all__ = ["Exemptions", "Gate", "Middleware", "Outcome", "RateLimited", "RouteLimit",
           "denial_headers", "merge_headers"]

App = TypeVar("App")

log = logging.getLogger("fastlimit")

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


class _Refusal:
    """A request answered without a decision of the policy's: its status and
    JSON body, no rate-limit fields, nothing held."""

    allowed = False
    status: int
    body: bytes
    content_type = "application/json"
    holding = False

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.headers: list[tuple[str, str]] = []

    def release(self) -> None:
        pass


class _TooLarge(_Refusal):
    """A request whose cost exceeds a limit's burst can never pass: 413."""

    status = 413
    body = (b'{"success":false,"error":{"code":"PAYLOAD_TOO_LARGE",'
            b'"message":"Request exceeds the rate limit\'s capacity"}}')


class _Misconfigured(_Refusal):
    """A request the application's configuration could not decide (a
    callback returned what it must not): 500, the details in the log only."""

    status = 500
    body = (b'{"success":false,"error":{"code":"INTERNAL_ERROR",'
            b'"message":"The rate limiter is misconfigured"}}')


class _Passed:
    """A request let through uncounted (``enabled=False``)."""

    allowed = True
    status = None
    content_type = "application/json"
    body = None
    holding = False
    headers: list[tuple[str, str]] = []

    def release(self) -> None:
        pass


_PASSED = _Passed()

# How many distinct mistakes a gate logs: a mistake's key may carry a value
# from a request (an unknown tier), so the set it remembers is bounded.
_MAX_MISTAKES = 256


Cost = int | Callable[[RequestView], int]
Files = Callable[[RequestView], "int | None"]

# The per-IP key of requests with no client address (a Unix socket peer, not
# a trusted proxy or one that sent no usable forwarding header): they share
# one bucket, rather than raising.  No address normalises to this text.
NO_ADDRESS = "unix"

# The names a rate-limit header can have: the application's own win.
RATE_HEADERS = frozenset({"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                          "ratelimit", "ratelimit-policy", "retry-after"})


class Exemptions:
    """Paths never counted: exact ones (``"/healthz"``) and prefixes
    (``"/static/**"``: ``/static`` and every path below it, matched on the
    normalised path, so ``/static/../login`` is not under it).

    Raises:
        TypeError, ValueError: a str where a collection belongs, or a path
            that cannot work (naming it and the forms accepted).

    Example:
        >>> exempt = Exemptions(["/healthz", "/static/**"])
        >>> [exempt.covers(p) for p in ("/healthz", "/static/a.js", "/static/../login")]
        [True, True, False]
    """

    def __init__(self, paths: Collection[str] = ()) -> None:
        if isinstance(paths, str):
            raise TypeError(f"exempt_paths must be a collection of paths, got the str "
                            f"{paths!r} (write [{paths!r}])")
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"exempt path {path!r}: expected a path starting with '/'")
            if path.endswith("/**"):
                prefixes.append(normalize_path(path[:-3] or "/").rstrip("/") or "/")
            elif "*" in path or "{" in path:
                raise ValueError(f"exempt path {path!r}: expected an exact path ('/healthz') "
                                 f"or a prefix ending in '/**' ('/static/**')")
            else:
                exact.add(path)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def covers(self, path: str) -> bool:
        """Whether ``path`` (as routed) is exempt."""
        return path in self.exact or (bool(self.prefixes) and self.under(path))

    def under(self, path: str) -> bool:
        """Whether ``path`` is under one of the prefixes."""
        # normalised first: "/static/../login" is /login, and counts
        path = normalize_path(path)
        return any(p == "/" or path == p or path.startswith(p + "/") for p in self.prefixes)


def _mount(mount: str) -> str:
    if not isinstance(mount, str):
        raise TypeError(f"mount must be a str, got {mount!r}")
    if mount and not (mount.startswith("/") and not mount.endswith("/")):
        raise ValueError(f"mount must be '' or a path like '/api' (a leading '/', no "
                         f"trailing one), got {mount!r}")
    return mount


# How many requests the middleware looks at for deployment mistakes: the
# first few, then the look costs nothing.
_WATCH_PREFIXED = 100
_WATCH_REQUESTS = 1000

_LOOPBACK = ("127.", "::1", "::ffff:127.")


class DeploymentWatch:
    """Looks at the first requests the middleware sees for two deployment
    mistakes that switch limits off or deny the wrong people, and warns
    once of each (logger ``fastlimit``):

    - the application is served under a prefix (``SCRIPT_NAME``,
      ``root_path``) and its requests match no route of the policy, while
      the prefixed path would: routes are matched on the path the
      application routes on, so routes written with the prefix never apply;
    - requests come from a local proxy (a Unix socket or loopback peer)
      with ``X-Forwarded-For`` / ``Forwarded``, and no proxy is trusted:
      every client behind the proxy shares the proxy's per-IP bucket.

    Called with the views of the first requests; False once it is done.
    """

    def __init__(self, policy: Policy, *, prefix: bool, forwarded: bool) -> None:
        self.policy = policy
        self.matches = policy._routes.matches
        self.prefix = prefix and len(policy._routes) > 0
        self.forwarded = forwarded
        # a table made after the fork: this worker's alone (looked at once
        # the server's workers are all up, at the first request)
        self.split = policy.made_in is not None
        self.seen = self.prefixed = 0

    @property
    def watching(self) -> bool:
        return self.prefix or self.forwarded or self.split

    def __call__(self, view: RequestView) -> bool:
        self.seen += 1
        if self.split:
            self.split = False
            if self.policy.made_in == os.getpid():
                warn_if_split(f"policy {self.policy.name!r} (no [store] table)",
                              "Name a table shared by every worker: [store] table = "
                              "\"myapp\" in the policy, or store=SharedTable.open(\"myapp\").")
        if self.prefix:
            self._look_for_prefix(view)
        if self.forwarded:
            self._look_for_proxy(view)
        return (self.prefix or self.forwarded) and self.seen < _WATCH_REQUESTS

    def _look_for_prefix(self, view: RequestView) -> None:
        raw = view.raw
        prefix = raw.get("root_path") if isinstance(view, _ASGIView) else raw.get("SCRIPT_NAME")
        if not prefix or not isinstance(prefix, str):
            return
        if self.matches(view.method, view.path):
            self.prefix = False  # the routes are written as the application routes: fine
            return
        mount = prefix.rstrip("/")
        full = mount + view.path
        if self.matches(view.method, full):
            self.prefix = False
            log.warning(
                "requests arrive under the prefix %r, and policy %r's routes are written "
                "with it: %s %s matches a route, but fastlimit matches routes on the path "
                "the application routes on, %r, which matches none, so those limits do not "
                "apply. Write the routes without the prefix, or pass mount=%r to the "
                "middleware.", prefix, self.policy.name, view.method, full, view.path, mount)
            return
        self.prefixed += 1
        if self.prefixed >= _WATCH_PREFIXED:
            self.prefix = False
            log.warning(
                "the first %d requests under the prefix %r matched no route of policy %r: "
                "fastlimit matches routes on the path the application routes on (without "
                "the prefix, e.g. %r). If the routes are written with the prefix, pass "
                "mount=%r to the middleware.", self.prefixed, prefix, self.policy.name,
                view.path, mount)

    def _look_for_proxy(self, view: RequestView) -> None:
        peer = view.peer
        if peer is not None and not peer.startswith(_LOOPBACK):
            return
        sent = [name for name in ("x-forwarded-for", "forwarded") if view.header(name)]
        if not sent:
            return
        self.forwarded = False
        log.warning(
            "requests from %s carry %s, but no proxy is trusted: every client behind that "
            "proxy counts as %r under the per-IP limits, one bucket for all of them. Pass "
            "trusted_proxies=[%r] (and forwarded_header=) to the middleware.",
            "a Unix socket peer" if peer is None else f"the local peer {peer}",
            " and ".join(sent), NO_ADDRESS if peer is None else peer,
            "unix" if peer is None else peer)


class Gate:
    """The request-to-decision step both middlewares run.

    Args: as for :class:`fastlimit.wsgi.RateLimitMiddleware`.
    """

    def __init__(self, policy: Policy, *, identify: Identify | None = None,
                 trusted_proxies: Iterable[str] | TrustedProxies = (),
                 forwarded_header: ForwardedHeader = "x-forwarded-for",
                 cost: Cost = 1, exempt_paths: Collection[str] = (), mount: str = "",
                 files: Files | None = None, enabled: bool = True) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"expected a fastlimit.Policy, got {type(policy).__name__}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        self.policy = policy
        self.enabled = enabled
        self.mount = _mount(mount)
        if identify is not None and not callable(identify):
            raise TypeError(f"identify must be a callable of the request view, got "
                            f"{identify!r}")
        self.identify: Identify = identify or _anonymous
        # The kinds of identity the application gives that the policy has
        # no rule for meet no identity limit: said now for the ones known
        # (every request may come without a credential), at the first such
        # request for the others (an identify of the application's).
        given = getattr(identify, "kinds", None) or frozenset()
        for kind in policy.missing_identities(("anonymous", *sorted(given))):
            policy._unruled(kind, "" if kind == "anonymous" else " (identify gives them)")
        self.proxies = (trusted_proxies if isinstance(trusted_proxies, TrustedProxies)
                        else TrustedProxies(trusted_proxies, header=forwarded_header))
        if isinstance(cost, bool) or not (isinstance(cost, int) or callable(cost)):
            raise TypeError(f"cost must be an int or a callable, got {cost!r}")
        self.cost = cost
        self._fixed_cost = cost if isinstance(cost, int) else None
        if files is not None and not callable(files):
            raise TypeError(f"files must be a callable of the request view, got {files!r}")
        self.files = files
        # the compiled address step, unless a subclass has its own client_ip
        own = type(self.proxies).client_ip is not TrustedProxies.client_ip
        self._proxies = (None if not self.proxies.enabled else
                         self.proxies.client_ip if own else self.proxies._client)
        watch = DeploymentWatch(policy, prefix=not mount, forwarded=not self.proxies.enabled)
        self.watch: Callable[[RequestView], bool] | None = watch if watch.watching else None
        """What the middleware calls with its first requests' views, until
        it returns False (a :class:`DeploymentWatch`), or None."""
        exempt = Exemptions(exempt_paths)
        self.exempt_paths = exempt.exact
        self.exempt_under: Callable[[str], bool] | None = (
            exempt.under if exempt.prefixes else None)
        """What the middleware asks of a path not exempt by name: whether it
        is under an exempt prefix (None: there is none)."""
        # The policy's compiled decision path, called in C, unless the policy
        # is of a class with its own hit: then that is called.
        plan = policy._plan if policy.hit == policy._plan.hit or policy.asynchronous else None
        self._mistakes: set[object] = set()
        self.check: Callable[[RequestView], Outcome] = Check(
            self, plan, no_address=NO_ADDRESS, too_large=_TooLarge,
            misconfigured=self.misconfigured, identity_type=Identity,
            view_types=(_WSGIView, _ASGIView))
        """Count a request (a :class:`RequestView`) under the policy: the
        middlewares' per-request step, compiled (:mod:`fastlimit.web._serve`)."""


    def misconfigured(self, error: ConfigurationError) -> Outcome:
        """The answer to a request a callback's mistake left undecided: 500,
        logged once per distinct mistake (logger ``fastlimit``)."""
        mistake = getattr(error, "mistake", None) or str(error)
        if mistake not in self._mistakes and len(self._mistakes) < _MAX_MISTAKES:
            self._mistakes.add(mistake)
            log.error("fastlimit: %s. Requests that meet this are answered 500 (logged "
                      "once).", error, exc_info=error)
        return _Misconfigured(error)


class Middleware(Generic[App]):
    """What both middlewares are made of: the application, the gate, and
    the wiring of their compiled call (``_wiring``: what ``_wire`` takes).

    Args: as for :class:`fastlimit.wsgi.RateLimitMiddleware`.
    """

    _wiring: tuple[Any, ...]
    _wire: Callable[..., None]
    _awaits = False  # the ASGI middleware's: it awaits a policy on an asyncio store
    app: App
    gate: Gate

    def __init__(self, app: App, policy: Policy, *, identify: Identify | None = None,
                 trusted_proxies: Iterable[str] | TrustedProxies = (),
                 forwarded_header: ForwardedHeader = "x-forwarded-for",
                 cost: Cost = 1, exempt_paths: Collection[str] = (), mount: str = "",
                 files: Files | None = None, enabled: bool = True) -> None:
        if getattr(policy, "asynchronous", False) and not self._awaits:
            raise ConfigurationError(
                f"policy {policy.name!r} counts on an asyncio store ({policy.store!r}): a "
                f"{type(self).__module__}.{type(self).__name__} cannot await it; use the ASGI "
                f"middleware (fastlimit.asgi), or give the policy a RedisBackend")
        self.app = app
        self.gate = Gate(policy, identify=identify, trusted_proxies=trusted_proxies,
                         forwarded_header=forwarded_header, cost=cost, exempt_paths=exempt_paths,
                         mount=mount, files=files, enabled=enabled)
        self._wire(*self._wiring)  # every request's call is compiled (web/_serve.pyx)

    @property
    def policy(self) -> Policy:
        return self.gate.policy


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
        fastlimit.errors.RateLimited: rate limited (429)
    """

    def __init__(self, policy: Policy, *, identify: Identify | None = None,
                 trusted_proxies: Iterable[str] | TrustedProxies = (),
                 forwarded_header: ForwardedHeader = "x-forwarded-for",
                 cost: Cost = 1, mount: str = "", files: Files | None = None,
                 enabled: bool = True) -> None:
        if getattr(policy, "asynchronous", False):
            raise ConfigurationError(
                f"policy {policy.name!r} counts on an asyncio store ({policy.store!r}): a "
                f"RouteLimit's check is synchronous; use the ASGI middleware or "
                f"`await policy.ahit(...)`, or give the policy a RedisBackend")
        self.gate = Gate(policy, identify=identify, trusted_proxies=trusted_proxies,
                         forwarded_header=forwarded_header, cost=cost, mount=mount, files=files,
                         enabled=enabled)
        self._watch = self.gate.watch  # the first requests' look for deployment mistakes

    def check(self, request: Mapping[str, Any]) -> Outcome:
        """Count the request (a WSGI environ or an ASGI scope).

        Returns:
            the allowed decision: add its ``headers`` to the response and
            call its ``release()`` when the response is sent.

        Raises:
            RateLimited: denied (nothing to release).
        """
        if not self.gate.enabled:
            return _PASSED
        mount = self.gate.mount
        view = (RequestView.from_scope(request, mount) if "type" in request
                else RequestView.from_environ(request, mount))
        if self._watch is not None and not self._watch(view):
            self._watch = None
        outcome = self.gate.check(view)
        if not outcome.allowed:
            outcome.release()
            raise RateLimited(outcome)
        return outcome


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
