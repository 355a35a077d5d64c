"""Who makes a request, as the application authenticated it."""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["CredentialKind", "Identity"]

CredentialKind = Literal["api_key", "session", "token", "anonymous", "invalid"]


class Identity(NamedTuple):
    """Who makes a request, as the application authenticated it.

    The policy does not check credentials: the application does, then says
    what it found.  Build identities with the class methods.

    Example:
        >>> Identity.api_key("key_1", tier="STARTER", account="acct_9").subject
        'key_1'
        >>> Identity.invalid().kind
        'invalid'
    """

    kind: CredentialKind
    subject: str | None = None
    tier: str | None = None
    account: str | None = None

    @classmethod
    def api_key(cls, key: str, tier: str, *, account: str | None = None) -> Identity:
        """A valid API key on ``tier``.  The tier limit is counted per
        ``account`` when given (every key of an account shares it), else per
        key; a ``[customers.<account>]`` entry overrides the tier."""
        return cls("api_key", _subject(key), tier, account)

    @classmethod
    def session(cls, subject: str) -> Identity:
        """A valid session; ``subject`` is the session or (better) user id."""
        return cls("session", _subject(subject))

    @classmethod
    def token(cls, token: str) -> Identity:
        """A valid API token (seed 002): limited per token."""
        return cls("token", _subject(token))

    @classmethod
    def anonymous(cls) -> Identity:
        """No credential: limited per source IP."""
        return cls("anonymous")

    @classmethod
    def invalid(cls) -> Identity:
        """A credential that failed to authenticate: limited as anonymous."""
        return cls("invalid")


def _subject(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"an identity needs a non-empty str, got {value!r}")
    return value
