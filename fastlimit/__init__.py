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
"""

# The modules too: fastlimit.wsgi.RateLimitMiddleware after `import fastlimit`.
from fastlimit import asgi, web, wsgi
from fastlimit._core import Decision
from fastlimit.clock import FakeClock
from fastlimit.composite import CompositeResult, LimitCheck, hit_all, peek_all
from fastlimit.concurrency import ConcurrencyLimit, Lease
from fastlimit.errors import (
    BackendError,
    CapacityError,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    FastLimitError,
    TableError,
    TableFullError,
)
from fastlimit.headers import DenialResponse, HeaderStyle
from fastlimit.limiter import Key, Limiter
from fastlimit.overrides import Overrides
from fastlimit.policy import Identity, Policy, PolicyDecision, Resolution
from fastlimit.quota import Quota, QuotaSpec, Usage
from fastlimit.rate import Rate
from fastlimit.spec import PolicySpec, RouteSpec, TierSpec
from fastlimit.table import SharedTable, TableStats

__version__ = "0.1.0"

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
    "Limiter",
    "Quota",
    "LimitCheck",
    "Limiter",
    "Overrides",
    "Policy",
    "PolicyDecision",
    "PolicySpec",
    "QuotaSpec",
    "Rate",
    "Resolution",
    "RouteSpec",
    "SharedTable",
    "TableError",
    "TableFullError",
    "TableStats",
    "Usage",
    "TierSpec",
    "__version__",
    "asgi",
    "hit_all",
    "peek_all",
    "web",
    "wsgi",
]
