"""Who makes a request: ``identify(view)`` callables and the helpers that
make the common ones.

An ``identify`` callable takes a :class:`~fastlimit.web.RequestView` and
returns the :class:`~fastlimit.Identity` the application authenticated, or
None for an anonymous caller.  A credential that is present but unknown
gives :meth:`Identity.invalid` (limited like an anonymous caller, per IP);
an absent one gives None, and :func:`first_of` then asks the next helper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastlimit.policy.identity import Identity
from fastlimit.web._serve import FirstOf, HeaderIdentity
from fastlimit.web.view import RequestView, header_reader

__all__ = ["Identify", "api_key_header", "bearer_token", "first_of", "session_cookie"]

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

    # compiled: it runs on every request (fastlimit.web._serve.HeaderIdentity)
    return HeaderIdentity("session", lookup, header_reader("cookie"), Identity, _INVALID,
                          cookie)


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


def _header_identity(kind: str, lookup: Callable[[str], Any], name: str) -> Identify:
    # compiled: it runs on every request (fastlimit.web._serve.HeaderIdentity)
    return HeaderIdentity(kind, lookup, header_reader(name), Identity, _INVALID)


_INVALID = Identity.invalid()
# Identity's field order, without the keyword handling of its __new__: this
# runs on every request.
_new_identity = tuple.__new__
