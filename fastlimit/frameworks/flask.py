"""Flask: limits next to the views, as flask-limiter's users write them.

::

    limiter = FlaskLimiter(app)                 # or limiter.init_app(app) in a factory

    @app.post("/login")
    @limiter.limit("5/minute;20/day", deduct_when=lambda r: r.status_code == 401)
    def login(): ...

    @app.get("/healthz")
    @limiter.exempt
    def health(): ...

    limiter.limit("100/hour", key="identity")(admin_blueprint)

Configuration (``app.config``; arguments win): ``FASTLIMIT_POLICY`` (a
policy file enforced on every request), ``FASTLIMIT_TABLE`` (the shared
table's name; default ``flask-<app.import_name>``, so every worker of the
app shares its limits), ``FASTLIMIT_STORAGE_URI`` (see
:func:`fastlimit.store_from_url`; instead of a table), ``FASTLIMIT_ENABLED``
(False: nothing is counted, as in tests), ``FASTLIMIT_HEADERS`` (the
``[headers]`` style of the view limits: ``{"reset": "delta", "ietf": True}``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastlimit.errors import RateLimited
from fastlimit.frameworks.rules import (
    Counted,
    KeyKind,
    Rule,
    RuleSet,
    app_table,
    name_of,
    release,
)
from fastlimit.policy.policy import Policy
from fastlimit.stores.table import SharedTable
from fastlimit.stores.url import store_from_url
from fastlimit.web.gate import Outcome, RouteLimit
from fastlimit.web.identify import Identify

__all__ = ["FlaskLimiter"]

log = logging.getLogger("fastlimit")
F = TypeVar("F")
_RULES = "_fastlimit_rules"
_EXEMPT = "_fastlimit_exempt"


class FlaskLimiter:
    """Rate limits for a Flask application: a policy on every request
    and ``@limit`` on views and blueprints, counted in one shared table.

    Args:
        app: the application (or call :meth:`init_app` later).
        policy: a :class:`~fastlimit.Policy` enforced on every request
            (default: ``FASTLIMIT_POLICY``, else none).
        identify: ``identify(view) -> Identity | None``, for the policy and
            for ``key="identity"`` limits.
        default_limits: rates counted per IP on every route no other limit
            of this limiter names (``["200/day", "50/hour"]``), each route
            (endpoint) a budget of its own, as flask-limiter counts them;
            one budget across routes is a policy (``policy=``).
        store: the store (default: ``FASTLIMIT_STORAGE_URI``, else the
            table ``FASTLIMIT_TABLE``, else ``flask-<import name>``).
        on_breach: called with the denying decision before the 429 is sent.
        trusted_proxies: proxies allowed to report the client address.
        clock: the view limits' (and a ``FASTLIMIT_POLICY``'s) monotonic
            int-ns clock; tests: a :class:`~fastlimit.FakeClock` (on a
            table of their own: a table keeps the clock it was first used on).
    """

    def __init__(self, app: Any = None, *, policy: Policy | None = None,
                 identify: Identify | None = None, default_limits: Iterable[str] = (),
                 store: Any = None, on_breach: Callable[[Outcome], None] | None = None,
                 trusted_proxies: Iterable[str] = (),
                 clock: Callable[[], int] | None = None) -> None:
        self.policy = policy
        self.clock = clock
        self.identify = identify
        self.store = store
        self.on_breach = on_breach
        self.trusted_proxies = tuple(trusted_proxies)
        self.enabled = True
        defaults = list(default_limits)
        self._default = Rule(defaults, name="default") if defaults else None
        self._defaults: dict[str | None, Rule] = {}  # per endpoint: the app's routes
        self._blueprints: dict[str, list[Rule]] = {}
        self._rules: RuleSet | None = None
        self._gate: RouteLimit | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Read ``app.config`` and install the checks on ``app``."""
        import flask

        config = app.config
        self.enabled = bool(config.get("FASTLIMIT_ENABLED", True))
        if self.store is None:
            uri = config.get("FASTLIMIT_STORAGE_URI")
            table = config.get("FASTLIMIT_TABLE") or app_table("flask", app.import_name)
            self.store = store_from_url(uri) if uri else SharedTable.open(table)
        if self.policy is None and config.get("FASTLIMIT_POLICY"):
            self.policy = Policy.from_file(config["FASTLIMIT_POLICY"], store=self.store,
                                           clock=self.clock)
        if self.policy is not None:
            self._gate = RouteLimit(self.policy, identify=self.identify,
                                    trusted_proxies=self.trusted_proxies)
        self._rules = RuleSet(self.store, identify=self.identify,
                              headers=config.get("FASTLIMIT_HEADERS"),
                              trusted_proxies=self.trusted_proxies, clock=self.clock)
        self._flask = flask
        app.before_request(self._before)
        app.after_request(self._after)
        app.teardown_request(self._teardown)

    # -- what users write ----------------------------------------------------

    def limit(self, rate: str | Iterable[str], *, key: KeyKind | Callable[[], Any] = "ip",
              cost: int | Callable[[], int] = 1, name: str | None = None,
              exempt_when: Callable[[], bool] | None = None,
              deduct_when: Callable[[Any], bool] | None = None,
              methods: Iterable[str] | None = None) -> Callable[[F], F]:
        """A limit on a view or a blueprint: ``rate`` (several: all must
        pass, ``"10/second;1000/day"``) counted per ``key``: ``"ip"``,
        ``"identity"`` (as ``identify`` says; anonymous callers per IP) or
        ``key()`` -> str (None: per IP).  Views and blueprints that give the
        same ``name`` share one bucket per key.  ``exempt_when()`` True:
        not counted; ``deduct_when(response)`` False: given back after the
        response (count only failed logins); ``methods``: only these."""
        def decorate(target: F) -> F:
            rule = Rule(rate, key=key, cost=cost, name=name, exempt_when=exempt_when,
                        deduct_when=deduct_when, methods=methods)
            if hasattr(target, "before_request") and hasattr(target, "register"):
                rule.name = rule.name or f"blueprint.{target.name}"  # type: ignore[attr-defined]
                self._blueprints.setdefault(target.name, []).append(rule)  # type: ignore[attr-defined]
            else:
                rule.name = rule.name or name_of(target)  # type: ignore[arg-type]
                rules = getattr(target, _RULES, None)
                if rules is None:
                    rules = []
                    setattr(target, _RULES, rules)
                rules.append(rule)
            return target
        return decorate

    def exempt(self, view: F) -> F:
        """Never count requests to ``view`` (nor the policy, nor defaults)."""
        setattr(view, _EXEMPT, True)
        return view

    # -- the request's steps ---------------------------------------------------

    def _before(self) -> Any:
        if not self.enabled:
            return None
        flask = self._flask
        request = flask.request
        view = flask.current_app.view_functions.get(request.endpoint)
        if view is not None and getattr(view, _EXEMPT, False):
            return None
        rules: list[Rule] = list(getattr(view, _RULES, ()))
        for blueprint in request.blueprints:
            rules += self._blueprints.get(blueprint, ())
        if not rules and self._default is not None:
            rules = [self._default_of(request.endpoint)]
        counted: Counted = []
        flask.g._fastlimit = counted
        assert self._rules is not None
        try:
            self._rules.count(request.environ, request.method, self._gate, rules, counted)
        except RateLimited as denied:
            return self._denial(denied.outcome)
        return None

    def _default_of(self, endpoint: str | None) -> Rule:
        """The default limits' rule of ``endpoint``: a bucket of its own (the
        endpoints are the application's, a bounded set; unrouted requests,
        a 404 whatever their path, share one)."""
        rule = self._defaults.get(endpoint)
        if rule is None:
            assert self._default is not None
            rule = copy.copy(self._default)
            rule.name = f"default.{endpoint or '-'}"
            self._defaults[endpoint] = rule
        return rule

    def _denial(self, outcome: Outcome) -> Any:
        request = self._flask.request
        if outcome.status != 500:  # a 500 (a callback's mistake) is logged where it is met
            # info, not warning: a flood of 429s must not flood the warning log
            log.info("rate limited: %s %s from %s (%s)", request.method, request.path,
                     request.remote_addr, getattr(outcome, "limit", None))
            if self.on_breach is not None:
                self.on_breach(outcome)
        response = self._flask.make_response(outcome.body or b"", outcome.status or 429)
        response.headers["Content-Type"] = outcome.content_type
        for name, value in outcome.headers:
            response.headers[name] = value
        return response

    def _after(self, response: Any) -> Any:
        counted: Counted = getattr(self._flask.g, "_fastlimit", [])
        assert self._rules is not None
        shown = self._rules.settle(counted, response) if counted else None
        if shown is not None:
            for name, value in shown.headers:
                response.headers.setdefault(name, value)
        return response

    def _teardown(self, error: BaseException | None) -> None:
        release(getattr(self._flask.g, "_fastlimit", []))

