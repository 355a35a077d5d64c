"""A limit written next to a view (``@limiter.limit("5/minute")``), as the
framework integrations share it: each is a small :class:`~fastlimit.Policy`
of one route limit on every path, run through the same decision path as the
middlewares (:class:`~fastlimit.web.RouteLimit`), on the integration's store.

A limit named twice (``name=``) is one bucket per key, shared by every view
that names it; naming it twice with different rates is an error.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from fastlimit.errors import CallbackError, ConfigurationError, RateLimited
from fastlimit.limiters.rate import Rate
from fastlimit.policy.identity import Identity
from fastlimit.policy.overrides import Overrides
from fastlimit.policy.policy import Policy
from fastlimit.policy.spec import IDENTITY_KINDS
from fastlimit.web.gate import Outcome, RouteLimit
from fastlimit.web.identify import Identify
from fastlimit.web.view import RequestView

__all__ = ["Counted", "KeyKind", "Rule", "RuleSet", "app_table", "binding", "refund",
           "release"]

log = logging.getLogger("fastlimit")

KeyKind = Literal["ip", "identity"]
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def refund(outcome: Outcome, cost: int) -> None:
    """Give back what an allowed decision counted (``deduct_when`` said the
    response should not count, or a later limit denied the request)."""
    for check in getattr(outcome, "checks", ()):
        if not check.shadow:
            check.limiter.refund(check.key, cost)


def cost_of(rule: Rule | None, args: tuple[Any, ...]) -> int:
    """What the request counted under ``rule`` (a policy's: 1)."""
    if rule is None:
        return 1
    cost = rule.cost
    return cost if isinstance(cost, int) else int(cost(*args))


# What one request counted: each allowed decision, with the view rule it
# came from (None: the application's policy).
Counted = list[tuple[Outcome, "Rule | None"]]


def binding(counted: Counted) -> Outcome | None:
    """The decision whose headers the response carries: the one with the
    least remaining (the limit the client meets first)."""
    best, least = None, None
    for outcome, _ in counted:
        decision = getattr(outcome, "decision", None)
        if decision is not None and (least is None or decision.remaining < least):
            best, least = outcome, decision.remaining
    return best


def release(counted: Counted) -> None:
    """Release what the decisions hold (leases), once the response is sent."""
    for outcome, _ in counted:
        outcome.release()
    counted.clear()


def app_table(framework: str, app: str) -> str:
    """The shared table an integration opens when none is configured: one
    per application (``flask-<import name>``), so all its workers share
    limits and two applications never share a table by accident."""
    return f"{framework}-{_NAME.sub('-', app).strip('.-') or 'app'}"


def name_of(view: Callable[..., Any]) -> str:
    """A limit's default name: its view's module and qualified name."""
    text = f"{getattr(view, '__module__', '')}.{getattr(view, '__qualname__', repr(view))}"
    return _NAME.sub("-", text).strip(".-") or "view"


class Rule:
    """One ``limit(...)``: its rates, whom it counts per, when it applies."""

    def __init__(self, rate: str | Iterable[str], *, key: KeyKind | Callable[..., Any] = "ip",
                 cost: int | Callable[..., int] = 1, name: str | None = None,
                 exempt_when: Callable[..., bool] | None = None,
                 deduct_when: Callable[[Any], bool] | None = None,
                 methods: Iterable[str] | None = None) -> None:
        self.rates = Rate.parse_many(rate)
        if not (key in ("ip", "identity") or callable(key)):
            raise ConfigurationError(
                f"key must be 'ip', 'identity' or a callable returning the key, got {key!r}")
        self.key = key
        if isinstance(cost, bool) or not (isinstance(cost, int) and cost >= 1 or callable(cost)):
            raise ConfigurationError(f"cost must be an int >= 1 or a callable, got {cost!r}")
        self.cost = cost
        self.name = name
        self.named_by_caller = False  # a default name, from where limit() was called
        for what, f in (("exempt_when", exempt_when), ("deduct_when", deduct_when)):
            if f is not None and not callable(f):
                raise ConfigurationError(f"{what} must be a callable or None, got {f!r}")
        self.exempt_when = exempt_when
        # Starlette's may take the request, as its key and cost do (slowapi's
        # does); a callable of no argument is called with none (flask-limiter's)
        self._exempt_args = exempt_when is not None and _takes_arguments(exempt_when)
        self.deduct_when = deduct_when
        if isinstance(methods, str):
            raise ConfigurationError(f"methods must be a list of methods, got the str "
                                     f"{methods!r} (write [{methods!r}])")
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)

    def applies(self, method: str, args: tuple[Any, ...] = ()) -> bool:
        """Whether the rule counts a request of ``method``; ``args``: what
        the integration's callables take (Starlette: the request)."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.exempt_when is None:
            return True
        return not (self.exempt_when(*args) if self._exempt_args else self.exempt_when())


def _takes_arguments(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has a positional parameter (a callable whose
    signature cannot be read is taken to have none)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in parameters)


class RuleSet:
    """The rules' compiled limits on one store, made at first use (the
    store is known only once the application is configured)."""

    def __init__(self, store: Any, *, identify: Identify | None,
                 key_args: Callable[[], tuple[Any, ...]] = tuple,
                 headers: Mapping[str, Any] | None = None,
                 trusted_proxies: Iterable[str] = (),
                 clock: Callable[[], int] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.identify = identify
        self.key_args = key_args
        self.headers = dict(headers or {})
        self.trusted_proxies = tuple(trusted_proxies)
        self.overrides = Overrides()
        self._rates: dict[str, tuple[Rate, ...]] = {}
        self._limits: dict[int, RouteLimit] = {}
        self._policies: list[Policy] = []

    def limit_of(self, rule: Rule, name: str) -> RouteLimit:
        found = self._limits.get(id(rule))
        if found is not None:
            return found
        known = self._rates.setdefault(name, rule.rates)
        if known != rule.rates:
            raise ConfigurationError(
                f"limit {name!r} is given as {';'.join(map(str, known))} and as "
                f"{';'.join(map(str, rule.rates))}: a shared limit has one set of rates")
        per = "ip" if rule.key == "ip" else "identity"
        policy = Policy.from_dict({
            "policy": {"name": "views"},
            # a view's limit replaces nobody's identity limit: every kind unlimited
            "identities": {kind: {"rate": "unlimited"} for kind in IDENTITY_KINDS},
            "routes": {name: {"match": "* /**", "rate": [str(r) for r in rule.rates],
                              "per": per, "dedicated": True}},
            "headers": self.headers,
        }, store=self.store, overrides=self.overrides, clock=self.clock)
        self._policies.append(policy)
        made = RouteLimit(policy, identify=self._identify(rule),
                          trusted_proxies=self.trusted_proxies, cost=self._cost(rule))
        self._limits[id(rule)] = made
        return made

    def _identify(self, rule: Rule) -> Identify | None:
        if rule.key == "ip":
            return None
        if rule.key == "identity":
            return self.identify
        key, args = rule.key, self.key_args

        def by_key(view: RequestView) -> Identity | None:
            value = key(*args())
            if value is None:
                return None  # per IP
            if not isinstance(value, str) or not value:
                raise CallbackError.returned(
                    "the key callable", key, value,
                    "a non-empty str, or None to count the caller by IP")
            return Identity.token(value)
        return by_key

    def _cost(self, rule: Rule) -> int | Callable[[RequestView], int]:
        cost, args = rule.cost, self.key_args
        if isinstance(cost, int):
            return cost

        def counted(view: RequestView) -> int:
            value = cost(*args())
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CallbackError.returned("the cost callable", cost, value, "an int >= 0")
            return value
        return counted

    def count(self, request: Mapping[str, Any], method: str, gate: RouteLimit | None,
              rules: Iterable[Rule], counted: Counted) -> None:
        """Count ``request`` (a WSGI environ or an ASGI scope) under the
        application's policy (``gate``) and every rule that applies, into
        ``counted``: all or nothing.

        Raises:
            RateLimited: one denied; what the others counted is given back.
        """
        try:
            if gate is not None:
                counted.append((gate.check(request), None))
            args = self.key_args() if rules else ()
            for rule in rules:
                if rule.applies(method, args):
                    assert rule.name is not None
                    counted.append((self.limit_of(rule, rule.name).check(request), rule))
        except RateLimited:
            args = self.key_args()
            for outcome, counted_rule in counted:  # a denial consumes nothing
                refund(outcome, cost_of(counted_rule, args))
            release(counted)
            raise

    def settle(self, counted: Counted, response: Any) -> Outcome | None:
        """After the response: give back what ``deduct_when(response)`` says
        should not count; the decision whose headers the response carries."""
        args = self.key_args()
        for outcome, given in counted:
            if given is not None and given.deduct_when is not None and not given.deduct_when(
                    response):
                refund(outcome, cost_of(given, args))
        return binding(counted)

    def close(self) -> None:
        for policy in self._policies:
            policy.close()
        self._policies.clear()
        self._limits.clear()
