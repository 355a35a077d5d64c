"""What a store's steps answer, by name: the codes the compiled core and
every other store return where a plain yes or no does not say enough."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Acquired", "Booked", "OnFull", "QuotaMode", "Step"]


class Step(IntEnum):
    """The result of one step on a key's state (a quota count, say)."""

    DENIED = 0
    ALLOWED = 1
    NO_SLOT = -1   # a new key found no free slot (a full table; Redis failed)
    STALLED = -2   # the key's slot is locked by a stalled process


class QuotaMode(IntEnum):
    """What a quota step does."""

    PEEK = 0
    CONSUME = 1
    REFUND = 2


class Acquired(IntEnum):
    """What a lease acquire answers when it gives no lease (a lease is its
    token, an int >= 0)."""

    REFUSED = -1     # every lease is held (or the store failed and denies)
    UNRECORDED = -2  # the store could not record one and its policy admits:
                     # the caller proceeds with nothing to give back


class Booked(IntEnum):
    """What a booking (``reserve``) or a ``hold`` answers instead of a time."""

    TOO_FAR = -1  # the slot is further away than the caller would wait
    NO_SLOT = -2  # no slot for the key in the table, and on_full denies


class OnFull(IntEnum):
    """What a check gets when the store cannot answer it: a full table, or
    (on Redis) a failure.  Stores keep it as this code."""

    DENY = 0
    ALLOW = 1
    RAISE = 2
