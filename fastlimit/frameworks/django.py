"""Django: a middleware for ``settings.MIDDLEWARE`` and a view decorator, as
django-ratelimit's users write them, with system checks for the mistakes
that would switch limits off.

::

    MIDDLEWARE = [..., "fastlimit.django.RateLimitMiddleware"]
    FASTLIMIT = {"POLICY": BASE_DIR / "policy.toml", "TABLE": "myapp"}

    # views.py: from fastlimit.django import ratelimit

    @ratelimit("5/minute", key="ip")
    def login(request): ...

``settings.FASTLIMIT`` (all optional): ``POLICY`` (a policy file the
middleware enforces on every request), ``TABLE`` (the shared table; default
``django-<settings module>``, so every worker shares it), ``STORAGE_URI``
(see :func:`fastlimit.store_from_url`; instead of a table), ``ENABLED``
(False: nothing is counted), ``HEADERS`` (the ``[headers]`` style of the
decorators' limits), ``TRUSTED_PROXIES`` (the proxies allowed to report the
client address in ``X-Forwarded-For``; default none: the socket peer is the
client).  A test's ``override_settings(FASTLIMIT=...)`` applies from the
next request.  ``python manage.py check`` reports a bad setting as
``fastlimit.E001``, a policy without an anonymous rule as ``fastlimit.W002``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from fastlimit.errors import ConfigurationError, RateLimited
from fastlimit.frameworks.rules import Counted, Rule, RuleSet, app_table, release
from fastlimit.policy.policy import Policy
from fastlimit.stores.table import SharedTable
from fastlimit.stores.url import store_from_url
from fastlimit.web.gate import Outcome, RouteLimit

__all__ = ["RateLimitMiddleware", "check_settings", "ratelimit"]

log = logging.getLogger("fastlimit")
_KEYS = frozenset({"POLICY", "TABLE", "STORAGE_URI", "ENABLED", "HEADERS", "TRUSTED_PROXIES"})
_COUNTED = "fastlimit_counted"


def _settings() -> dict[str, Any]:
    from django.conf import settings

    value = getattr(settings, "FASTLIMIT", {})
    if not isinstance(value, dict):
        raise ConfigurationError(f"settings.FASTLIMIT must be a dict, got {value!r}")
    unknown = set(value) - _KEYS
    if unknown:
        raise ConfigurationError(
            f"settings.FASTLIMIT: unknown key {sorted(unknown)[0]!r}; expected some of "
            f"{', '.join(sorted(_KEYS))}")
    return value


class _State:
    """The store, the policy and the decorators' limits of this process,
    made once from the settings."""

    _lock = threading.Lock()
    _made: _State | None = None

    def __init__(self) -> None:
        from django.conf import settings

        config = _settings()
        self.enabled = bool(config.get("ENABLED", True))
        uri = config.get("STORAGE_URI")
        module = str(getattr(settings, "SETTINGS_MODULE", None) or "app")
        table = config.get("TABLE") or app_table("django", module)
        self.store: Any = store_from_url(uri) if uri else SharedTable.open(table)
        path = config.get("POLICY")
        proxies = config.get("TRUSTED_PROXIES", ())
        if isinstance(proxies, str):
            raise ConfigurationError(f"settings.FASTLIMIT TRUSTED_PROXIES: expected a list of "
                                     f"addresses or networks, got the str {proxies!r}")
        self.gate = None if not path else RouteLimit(Policy.from_file(path, store=self.store),
                                                     trusted_proxies=proxies)
        self.rules = RuleSet(self.store, identify=None, key_args=_current_request,
                             headers=config.get("HEADERS"), trusted_proxies=proxies)

    @classmethod
    def get(cls) -> _State:
        made = cls._made  # the usual: made already, no lock
        if made is not None:
            return made
        with cls._lock:
            if cls._made is None:
                cls._made = cls()
                _follow_settings()
            return cls._made

    @classmethod
    def forget(cls, setting: str = "FASTLIMIT", **kwargs: Any) -> None:
        """Make the state anew at its next use: ``settings.FASTLIMIT``
        changed (``override_settings`` in a test)."""
        if setting == "FASTLIMIT":
            with cls._lock:
                cls._made = None


def _follow_settings() -> None:
    # Django sends setting_changed only from its test utilities
    # (override_settings): what a test switches, the next request sees.
    from django.test.signals import setting_changed

    setting_changed.connect(_State.forget, dispatch_uid="fastlimit", weak=False)


_request = threading.local()


def _current_request() -> tuple[Any, ...]:
    return (getattr(_request, "value", None),)


def _answer(outcome: Outcome) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(outcome.body or b"", status=outcome.status or 429,
                            content_type=outcome.content_type)
    for name, value in outcome.headers:
        response[name] = value
    return response


def _add_headers(state: _State, counted: Counted, response: Any) -> Any:
    shown = state.rules.settle(counted, response) if counted else None
    if shown is not None:
        for name, value in shown.headers:
            if name not in response:
                response[name] = value
    return response


class RateLimitMiddleware:
    """The ``POLICY`` on every request; the rate-limit fields on every
    response; a denial answered with the policy's 429 (the view is not
    called)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        _State.get()  # a bad setting fails at start-up, not at the first request

    def __call__(self, request: Any) -> Any:
        state = _State.get()
        if not state.enabled:
            return self.get_response(request)
        counted: Counted = []
        setattr(request, _COUNTED, counted)
        try:
            state.rules.count(request.META, request.method, state.gate, (), counted)
        except RateLimited as denied:
            return _answer(denied.outcome)
        try:
            return _add_headers(state, counted, self.get_response(request))
        finally:
            release(counted)


def ratelimit(rate: str | Iterable[str], *, key: str | Callable[[Any], Any] = "ip",
              method: str | Iterable[str] | None = None, block: bool = True,
              name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Limit a view: ``rate`` (several: ``"10/s;100/h"``, all must pass)
    per ``key``: ``"ip"``, ``"user"`` (the logged-in user, else the IP),
    ``"header:<name>"`` or ``key(request)`` -> str (None: the IP); only for
    ``method`` (one or a list) when given.  ``block=False``: the view runs
    anyway, with ``request.limited`` True.  Views that give the same ``name``
    share one bucket per key."""
    methods = None if method is None else [method] if isinstance(method, str) else list(method)
    if isinstance(key, str) and not (key in ("ip", "user") or key.startswith("header:")):
        raise ConfigurationError(
            f"key must be 'ip', 'user', 'header:<name>' or a callable of the request, "
            f"got {key!r}")

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        from fastlimit.frameworks.rules import name_of

        rule = Rule(rate, key=_key_function(key), methods=methods, name=name or name_of(view))

        @functools.wraps(view)
        def limited(request: Any, *args: Any, **kwargs: Any) -> Any:
            state = _State.get()
            request.limited = False
            if not state.enabled:
                return view(request, *args, **kwargs)
            counted: Counted = []
            _request.value = request
            try:
                state.rules.count(request.META, request.method, None, (rule,), counted)
            except RateLimited as denied:
                if block:
                    return _answer(denied.outcome)
                request.limited = True
                return view(request, *args, **kwargs)
            finally:
                _request.value = None
            try:
                return _add_headers(state, counted, view(request, *args, **kwargs))
            finally:
                release(counted)
        return limited
    return decorate


def _key_function(key: str | Callable[[Any], Any]) -> Any:
    if key == "ip":
        return "ip"
    if key == "user":
        def user(request: Any) -> str | None:
            found = getattr(request, "user", None)
            return (f"user:{found.pk}" if found is not None and found.is_authenticated
                    else None)
        return user
    if isinstance(key, str):
        header = "HTTP_" + key.removeprefix("header:").upper().replace("-", "_")
        return lambda request: request.META.get(header) or None
    return key


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django's system check of ``settings.FASTLIMIT``: ``fastlimit.E001``
    for what cannot work, ``fastlimit.W002`` for a policy with no rule for
    callers without a credential (they would meet no identity limit)."""
    from django.core.checks import Error, Warning

    found: list[Any] = []
    try:
        config = _settings()
        if config.get("STORAGE_URI"):
            scheme = str(config["STORAGE_URI"]).split("://", 1)[0]
            if scheme not in ("shm", "memory", "redis", "rediss", "unix", "redis+cluster",
                              "redis+sentinel"):
                raise ConfigurationError(f"settings.FASTLIMIT STORAGE_URI: unknown scheme "
                                         f"{scheme!r}")
            if scheme == "memory":
                raise ConfigurationError(
                    "settings.FASTLIMIT STORAGE_URI: memory:// is per process: each worker "
                    "would have its own limits; use shm://NAME or a Redis URL")
        if config.get("POLICY"):
            from fastlimit.policy.config import load_file
            spec = load_file(config["POLICY"])
            if "anonymous" not in spec.identities:
                found.append(Warning(
                    f"{spec.source}: no [identities.anonymous] rule: callers without a "
                    f"credential (or with one that fails) meet no identity limit",
                    id="fastlimit.W002",
                    hint='Add [identities.anonymous] with a rate, or rate = "unlimited" to '
                         'say so.'))
    except (ConfigurationError, OSError) as e:
        return [Error(str(e), id="fastlimit.E001",
                      hint="See fastlimit.django for the settings.FASTLIMIT keys.")]
    return found


def _register() -> None:
    try:
        from django.core import checks
    except ImportError:  # pragma: no cover - the module needs Django
        return
    checks.register(check_settings)


_register()
