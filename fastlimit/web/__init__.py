"""HTTP servers and frameworks: the WSGI and ASGI middlewares
(:mod:`.wsgi`, :mod:`.asgi`) and what they share: a neutral view of the
request (:mod:`.view`), the client address from trusted proxies only
(:mod:`.proxies`), the identity helpers (:mod:`.identify`), and the step from
a request to a :class:`~fastlimit.PolicyDecision` (:mod:`.gate`; compiled
in ``_serve``).

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

from typing import TYPE_CHECKING

from fastlimit._lazy import lazy_attributes

if TYPE_CHECKING:
    from fastlimit.http._addr import ip_key as ip_key
    from fastlimit.web.gate import Exemptions as Exemptions
    from fastlimit.web.gate import Outcome as Outcome
    from fastlimit.web.gate import RateLimited as RateLimited
    from fastlimit.web.gate import RouteLimit as RouteLimit
    from fastlimit.web.identify import Identify as Identify
    from fastlimit.web.identify import api_key_header as api_key_header
    from fastlimit.web.identify import bearer_token as bearer_token
    from fastlimit.web.identify import first_of as first_of
    from fastlimit.web.identify import session_cookie as session_cookie
    from fastlimit.web.proxies import TrustedProxies as TrustedProxies
    from fastlimit.web.view import RequestView as RequestView

__all__ = [
    "Exemptions",
    "Identify",
    "Outcome",
    "RateLimited",
    "RequestView",
    "RouteLimit",
    "TrustedProxies",
    "api_key_header",
    "bearer_token",
    "first_of",
    "ip_key",
    "session_cookie",
]

__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(("Exemptions", "Outcome", "RateLimited", "RouteLimit"),
                    "fastlimit.web.gate"),
    **dict.fromkeys(("Identify", "api_key_header", "bearer_token", "first_of", "session_cookie"),
                    "fastlimit.web.identify"),
    "TrustedProxies": "fastlimit.web.proxies",
    "ip_key": "fastlimit.http._addr",
    "RequestView": "fastlimit.web.view",
    "wsgi": "fastlimit.web.wsgi",
    "asgi": "fastlimit.web.asgi",
}, globals())
