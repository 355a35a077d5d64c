"""The exceptions fastlimit raises.  A denial is a Decision, never an error:
exceptions are for misuse and for states the caller must handle."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CapacityError",
    "ConfigurationError",
    "FastLimitError",
    "TableError",
    "TableFullError",
]


class FastLimitError(Exception):
    """Base class of every fastlimit exception."""


class ConfigurationError(FastLimitError, ValueError):
    """A rate, limit, policy or option is malformed or out of range."""


class CapacityError(FastLimitError, ValueError):
    """A hit costs more than the burst: it could never pass."""


class TableFullError(FastLimitError):
    """A new key found no free slot (raised only with ``on_full="raise"``)."""


class TableError(FastLimitError, OSError):
    """A shared table cannot be created, attached or used as asked."""


class BackendError(FastLimitError):
    """A remote backend (Redis) failed and the policy says to raise."""
