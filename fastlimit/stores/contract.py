"""What a store provides: the contract every store of limit state follows.

A store holds state of up to three kinds (:data:`Kind`) and says which in
:attr:`Store.kinds`; for each kind it hands out one state object per name:

- ``rate_state(name, emission_interval_ns, burst)``: a :class:`RateState`,
  GCRA for every key of one limiter (what :class:`~fastlimit.Limiter`
  binds);
- ``quota_counts(name, limit)``: :class:`QuotaCounts`, calendar counts of one
  quota (what :class:`~fastlimit.Quota` counts with);
- ``lease_slots(name)``: :class:`LeaseSlots`, the leases in flight of one
  concurrency limit (what :class:`~fastlimit.ConcurrencyLimit` takes).

Some state objects can do more, and say so by having the methods of a
capability protocol, which callers check with ``isinstance``:
:class:`Bookable` (book a hit at its turn: ``Limiter.reserve`` and the
waits in order), :class:`Holdable` (raise a key to what an upstream server
reported: the client throttle), :class:`Renewable` (leases that expire
unless renewed).  Without them, waits retry and holds do nothing.

The arithmetic is not a store's to choose: a rate state answers exactly as
:mod:`fastlimit.core.gcra` says, and quota counts as
:mod:`fastlimit.core.quota` says.  ``tests/test_store_contract.py`` runs the
contract against every store; a new store (Memcached, Postgres) passes it
by adding its factory to that test's list.  "Writing a store" in the README
walks through one.

Stores for asyncio code follow the same contract with coroutine methods
(:class:`AsyncStore`, :class:`AsyncRateState`, :class:`AsyncQuotaCounts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from fastlimit.core.results import Acquired, Booked, OnFull, QuotaMode, Step
from fastlimit.errors import ConfigurationError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from fastlimit._core import Decision

__all__ = [
    "Acquired",
    "AsyncQuotaCounts",
    "AsyncRateState",
    "AsyncStore",
    "Booked",
    "Bookable",
    "Holdable",
    "Kind",
    "LeaseSlots",
    "OnFull",
    "OnFullName",
    "QuotaCounts",
    "QuotaMode",
    "RateState",
    "Renewable",
    "Step",
    "Store",
    "check_clock",
    "key_identity",
    "key_list",
    "on_full_code",
    "require_sync",
]

Kind = Literal["rate", "quota", "concurrency"]
"""The kinds of state: GCRA rates, calendar quota counts, concurrency leases."""

OnFullName = Literal["deny", "allow", "raise"]
"""What a check gets when its store cannot answer, as limiters are told it."""

Key = str | bytes | int


@runtime_checkable
class RateState(Protocol):
    """GCRA for every key of one named limiter, on one store.

    Every method answers as :mod:`fastlimit.core.gcra` states; when the
    store cannot answer (a full table, Redis down) it answers by
    :attr:`on_full`: as for a fresh key (allow), denied for one increment
    (deny), or raises.  Costs are ints in ``[0, burst]`` (``0`` asks as a
    hit of 1 and counts nothing); a cost above the burst raises
    :class:`~fastlimit.CapacityError`.
    """

    name: str
    emission_interval_ns: int
    burst: int
    tolerance_ns: int
    clock: Callable[[], int] | None

    @property
    def on_full(self) -> int: ...  # an OnFull code
    def allow(self, key: Key, cost: int = 1) -> bool: ...
    def hit(self, key: Key, cost: int = 1) -> Decision: ...
    def peek(self, key: Key, cost: int = 1) -> Decision: ...
    def refund(self, key: Key, cost: int = 1) -> bool: ...
    def reset(self, key: Key) -> None: ...
    def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                 cost: int = 1) -> npt.NDArray[np.bool_]: ...


@runtime_checkable
class Bookable(Protocol):
    """A rate state that books a hit at the earliest time it passes."""

    def reserve(self, key: Key, cost: int = 1, max_wait_ns: int = ...) -> tuple[int, int]:
        """``(at_ns, tat_ns)``: counted now for the slot at ``at_ns`` (on the
        limiter's clock), or ``at_ns`` a :class:`Booked` code (too far; no
        slot); ``tat_ns`` is what :meth:`cancel` takes."""
        ...

    def cancel(self, key: Key, cost: int, tat_ns: int) -> bool:
        """Undo the booking that left ``tat_ns``, if nothing was counted since."""
        ...


@runtime_checkable
class Holdable(Protocol):
    """A rate state that can be raised to what an upstream server reported."""

    def hold(self, key: Key, ahead_ns: int) -> int:
        """Raise ``key``'s tat to ``now + ahead_ns`` unless it is later (never
        loosens): how far ahead it is after, or ``Booked.NO_SLOT``."""
        ...


@runtime_checkable
class QuotaCounts(Protocol):
    """Calendar counts of one named quota, per period tag (an int that grows
    with time; the caller maps its wall clock to tags)."""

    name: str
    limit: int

    @property
    def on_full(self) -> int: ...  # an OnFull code

    def step(self, key: Key, tag: int, cost: int, mode: int,
             left_ns: int = 0) -> tuple[Step, int]:
        """One :class:`QuotaMode` step: its result and the period's count
        after it.  ``left_ns`` is the time to the period's end (a store that
        expires keys keeps them that long)."""
        ...

    def answer(self, key: Key, tag: int, cost: int, mode: int, left_ns: int = 0) -> Decision:
        """The Decision of a consume or peek step (:mod:`fastlimit.core.quota`)."""
        ...

    def reset(self, key: Key) -> None: ...


@runtime_checkable
class LeaseSlots(Protocol):
    """The leases in flight of one named concurrency limit."""

    name: str

    @property
    def on_full(self) -> int: ...  # an OnFull code
    @property
    def reclaimed(self) -> int: ...  # leases of dead holders taken over

    def acquire(self, key: Key, limit: int, start: int = 0) -> int:
        """A lease of one of ``key``'s ``limit``: its token (>= 0), or an
        :class:`Acquired` code.  ``start`` spreads acquirers over slots."""
        ...

    def release(self, key: Key, token: int) -> bool: ...
    def in_flight(self, key: Key, limit: int) -> int: ...


@runtime_checkable
class Renewable(Protocol):
    """Leases that expire unless renewed (a store that cannot see its
    holders die): :meth:`fastlimit.Lease.renew` calls it."""

    def renew(self, key: Key, token: int) -> bool: ...


@runtime_checkable
class Store(Protocol):
    """Where limit state lives: a :class:`~fastlimit.SharedTable`, a
    :class:`~fastlimit.RedisBackend`, or a store of your own."""

    @property
    def kinds(self) -> frozenset[Kind]:
        """The kinds of state this store holds (a quota table holds quotas
        only, a rate table rates and leases, Redis all three)."""
        ...

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None,
                   on_full: OnFullName | None = None) -> RateState: ...

    def quota_counts(self, name: str, limit: int, *,
                     on_full: OnFullName | None = None) -> QuotaCounts: ...

    def lease_slots(self, name: str, *, on_full: OnFullName | None = None,
                    clock: Callable[[], int] | None = None) -> LeaseSlots: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncRateState(Protocol):
    """:class:`RateState` for asyncio: the same answers, awaited."""

    name: str
    emission_interval_ns: int
    burst: int
    tolerance_ns: int
    clock: Callable[[], int] | None

    async def allow(self, key: Key, cost: int = 1) -> bool: ...
    async def hit(self, key: Key, cost: int = 1) -> Decision: ...
    async def peek(self, key: Key, cost: int = 1) -> Decision: ...
    async def refund(self, key: Key, cost: int = 1) -> bool: ...
    async def reset(self, key: Key) -> None: ...
    async def hit_many(self, keys: Iterable[Key] | npt.NDArray[np.integer[Any]],
                       cost: int = 1) -> npt.NDArray[np.bool_]: ...


@runtime_checkable
class AsyncQuotaCounts(Protocol):
    """:class:`QuotaCounts` for asyncio."""

    name: str
    limit: int

    @property
    def on_full(self) -> int: ...

    async def step(self, key: Key, tag: int, cost: int, mode: int,
                   left_ns: int = 0) -> tuple[Step, int]: ...
    async def answer(self, key: Key, tag: int, cost: int, mode: int,
                     left_ns: int = 0) -> Decision: ...
    async def reset(self, key: Key) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    """A store whose state objects' methods are coroutines."""

    @property
    def kinds(self) -> frozenset[Kind]: ...

    def rate_state(self, name: str, emission_interval_ns: int, burst: int, *,
                   clock: Callable[[], int] | None = None,
                   on_full: OnFullName | None = None) -> AsyncRateState: ...

    def quota_counts(self, name: str, limit: int, *,
                     on_full: OnFullName | None = None) -> AsyncQuotaCounts: ...


ON_FULL_CODES: dict[str, OnFull] = {"deny": OnFull.DENY, "allow": OnFull.ALLOW,
                                    "raise": OnFull.RAISE}

# -- what every store treats alike: for stores written in Python ----------------

_U64 = 1 << 64


def on_full_code(on_full: object) -> OnFull:
    """``on_full`` ("deny", "allow" or "raise") as its code.

    Raises:
        ConfigurationError: naming the bad value and the accepted ones.
    """
    try:
        return ON_FULL_CODES[on_full]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"on_full must be one of 'deny', 'allow', 'raise', got {on_full!r}") from None


def check_clock(clock: object) -> None:
    """Refuse a ``clock`` that is neither None (the store's own) nor callable.

    Raises:
        TypeError: naming the value.
    """
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable or None, got {clock!r}")


def key_identity(key: object) -> bytes | int:
    """Which key ``key`` is, as every store must tell keys apart: a str is
    its UTF-8 bytes (``"a"`` and ``b"a"`` are one key), bytes are
    themselves, an int (a bool too) is its 64-bit two's complement read
    unsigned (``-1`` and ``2**64 - 1`` are one key; ``7`` and ``"7"`` two).

    Raises:
        TypeError: not a str, bytes or int.
        ValueError: an int outside 64 bits, or a str with lone surrogates.
    """
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    if isinstance(key, int):
        if not -(1 << 63) <= key < _U64:
            raise ValueError(f"int keys must fit in 64 bits, got {key}")
        return int(key) % _U64
    raise TypeError(f"keys must be str, bytes or int, got {type(key).__name__}")


def key_list(keys: Iterable[Key] | npt.NDArray[np.integer[Any]]) -> list[Key]:
    """The keys of a ``hit_many`` call as a list: a numpy array must be a
    one-dimensional array of integers (an int64 ``-1`` is the key
    ``2**64 - 1``), anything else is iterated.

    Raises:
        TypeError: an array of something other than integers.
        ValueError: an array of more than one dimension.
    """
    import numpy as np

    if isinstance(keys, np.ndarray):
        if keys.dtype.kind not in "iu":
            raise TypeError(f"key arrays must hold integers, got dtype {keys.dtype}")
        if keys.ndim != 1:
            raise ValueError(f"key arrays must be one-dimensional, got shape {keys.shape}")
        as_ints: list[Key] = np.ascontiguousarray(keys).astype(np.uint64, copy=False).tolist()
        return as_ints
    return keys if isinstance(keys, list) else list(keys)


def require_sync(store: object, if_async: str) -> None:
    """Refuse a store that is not a (sync) :class:`Store`; ``if_async`` is
    the message for an :class:`AsyncStore` (what to use instead)."""
    if isinstance(store, Store):
        return
    if isinstance(store, AsyncStore):
        raise ConfigurationError(if_async)
    raise ConfigurationError(
        f"store must be a SharedTable, a RedisBackend or another Store "
        f"(fastlimit.stores.contract), got {store!r}")
