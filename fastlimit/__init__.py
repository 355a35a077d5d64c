"""fastlimit: exact rate limits shared by every process on a host.

GCRA state lives in a lock-free hash table in shared memory, so gunicorn and
uvicorn workers, multiprocessing pools and batch jobs share one set of limits
with no server and no network round trip.

Example:
    >>> import fastlimit
    >>> table = fastlimit.SharedTable.anonymous(capacity=1000)
    >>> lim = fastlimit.Limiter("100/1h", store=table, name="api")
    >>> lim.allow("user:42")
    True
    >>> lim.hit("user:42").remaining
    98

For limits shared by many hosts, ``fastlimit.RedisBackend`` (and
``AsyncRedisBackend`` for asyncio) stand in for the table; they are imported
on first use, so redis-py is needed only by those who use them.
"""

from typing import TYPE_CHECKING

# The modules too: fastlimit.wsgi.RateLimitMiddleware after `import fastlimit`.
from fastlimit import asgi, web, wsgi
from fastlimit._core import Decision
from fastlimit._lazy import lazy_attributes
from fastlimit.clock import FakeClock
from fastlimit.composite import CompositeResult, LimitCheck, hit_all, peek_all
from fastlimit.concurrency import ConcurrencyLimit, Lease
from fastlimit.errors import (
    BackendError,
    CapacityError,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    FastLimitError,
    RateLimitExceeded,
    TableError,
    TableFullError,
)
from fastlimit.headers import DenialResponse, HeaderStyle
from fastlimit.limiter import Key, Limiter
from fastlimit.overrides import Overrides
from fastlimit.policy import Identity, Policy, PolicyDecision, Resolution
from fastlimit.progress import WaitLog
from fastlimit.quota import Quota, QuotaSpec, Usage
from fastlimit.rate import Rate
from fastlimit.spec import PolicySpec, RouteSpec, TierSpec
from fastlimit.table import SharedTable, TableStats
from fastlimit.waiting import Reservation

if TYPE_CHECKING:
    from fastlimit.backends.redis import AsyncRedisBackend as AsyncRedisBackend
    from fastlimit.backends.redis import RedisBackend as RedisBackend

__version__ = "0.1.0"

_LAZY = {
    "RedisBackend": "fastlimit.backends.redis",
    "AsyncRedisBackend": "fastlimit.backends.redis",
}

__all__ = [
    "BackendError",
    "CapacityError",
    "ConcurrencyLimit",
    "ConcurrencyLimitExceeded",
    "CompositeResult",
    "ConfigurationError",
    "Decision",
    "DenialResponse",
    "FakeClock",
    "FastLimitError",
    "HeaderStyle",
    "Identity",
    "Key",
    "Lease",
    "LimitCheck",
    "Limiter",
    "Quota",
    "Overrides",
    "Policy",
    "PolicyDecision",
    "PolicySpec",
    "QuotaSpec",
    "Rate",
    "RateLimitExceeded",
    "Reservation",
    "Resolution",
    "RouteSpec",
    "SharedTable",
    "TableError",
    "TableFullError",
    "TableStats",
    "Usage",
    "TierSpec",
    "WaitLog",
    "__version__",
    "asgi",
    "hit_all",
    "peek_all",
    "web",
    "wsgi",
]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
