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

The names below are imported on first use: ``import fastlimit`` loads no
web stack, CLI or redis-py, and a program that makes one Limiter loads only
the limiter layer and the shared table.  For limits shared by many hosts,
``fastlimit.RedisBackend`` (and ``AsyncRedisBackend`` for asyncio) stand in
for the table; redis-py is needed only by those who use them.
"""

from typing import TYPE_CHECKING

from fastlimit import _platform
from fastlimit._lazy import lazy_attributes

_platform.check()  # Linux's /dev/shm and /proc, or an ImportError naming what is missing

if TYPE_CHECKING:
    from fastlimit import asgi as asgi
    from fastlimit import web as web
    from fastlimit import wsgi as wsgi
    from fastlimit._core import Decision as Decision
    from fastlimit.clock import FakeClock as FakeClock
    from fastlimit.errors import BackendError as BackendError
    from fastlimit.errors import CallbackError as CallbackError
    from fastlimit.errors import CapacityError as CapacityError
    from fastlimit.errors import ConcurrencyLimitExceeded as ConcurrencyLimitExceeded
    from fastlimit.errors import ConfigurationError as ConfigurationError
    from fastlimit.errors import FastLimitError as FastLimitError
    from fastlimit.errors import RateLimited as RateLimited
    from fastlimit.errors import RateLimitExceeded as RateLimitExceeded
    from fastlimit.errors import TableError as TableError
    from fastlimit.errors import TableFullError as TableFullError
    from fastlimit.http.headers import DenialResponse as DenialResponse
    from fastlimit.http.headers import HeaderStyle as HeaderStyle
    from fastlimit.limiters.composite import CompositeResult as CompositeResult
    from fastlimit.limiters.composite import LimitCheck as LimitCheck
    from fastlimit.limiters.composite import hit_all as hit_all
    from fastlimit.limiters.composite import peek_all as peek_all
    from fastlimit.limiters.concurrency import ConcurrencyLimit as ConcurrencyLimit
    from fastlimit.limiters.concurrency import Lease as Lease
    from fastlimit.limiters.limiter import Key as Key
    from fastlimit.limiters.limiter import Limiter as Limiter
    from fastlimit.limiters.progress import WaitLog as WaitLog
    from fastlimit.limiters.quota import Quota as Quota
    from fastlimit.limiters.quota import QuotaSpec as QuotaSpec
    from fastlimit.limiters.quota import Usage as Usage
    from fastlimit.limiters.rate import Rate as Rate
    from fastlimit.limiters.waiting import Reservation as Reservation
    from fastlimit.policy.identity import Identity as Identity
    from fastlimit.policy.overrides import Overrides as Overrides
    from fastlimit.policy.policy import Policy as Policy
    from fastlimit.policy.policy import PolicyDecision as PolicyDecision
    from fastlimit.policy.policy import Resolution as Resolution
    from fastlimit.policy.spec import PolicySpec as PolicySpec
    from fastlimit.policy.spec import RouteSpec as RouteSpec
    from fastlimit.policy.spec import TierSpec as TierSpec
    from fastlimit.stores.fleet import FleetBackend as FleetBackend
    from fastlimit.stores.redis import AsyncRedisBackend as AsyncRedisBackend
    from fastlimit.stores.redis import RedisBackend as RedisBackend
    from fastlimit.stores.table import SharedTable as SharedTable
    from fastlimit.stores.table import TableStats as TableStats
    from fastlimit.stores.url import store_from_url as store_from_url

__version__ = "0.2.0"

_ERRORS = ("BackendError", "CallbackError", "CapacityError", "ConcurrencyLimitExceeded",
           "ConfigurationError", "FastLimitError", "RateLimitExceeded", "RateLimited",
           "TableError", "TableFullError")
_LAZY: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "fastlimit.errors"),
    "Decision": "fastlimit._core",
    "FakeClock": "fastlimit.clock",
    "DenialResponse": "fastlimit.http.headers",
    "HeaderStyle": "fastlimit.http.headers",
    **dict.fromkeys(("CompositeResult", "LimitCheck", "hit_all", "peek_all"),
                    "fastlimit.limiters.composite"),
    "ConcurrencyLimit": "fastlimit.limiters.concurrency",
    "Lease": "fastlimit.limiters.concurrency",
    "Key": "fastlimit.limiters.limiter",
    "Limiter": "fastlimit.limiters.limiter",
    "WaitLog": "fastlimit.limiters.progress",
    **dict.fromkeys(("Quota", "QuotaSpec", "Usage"), "fastlimit.limiters.quota"),
    "Rate": "fastlimit.limiters.rate",
    "Reservation": "fastlimit.limiters.waiting",
    "Identity": "fastlimit.policy.identity",
    "Overrides": "fastlimit.policy.overrides",
    **dict.fromkeys(("Policy", "PolicyDecision", "Resolution"), "fastlimit.policy.policy"),
    **dict.fromkeys(("PolicySpec", "RouteSpec", "TierSpec"), "fastlimit.policy.spec"),
    "RedisBackend": "fastlimit.stores.redis",
    "AsyncRedisBackend": "fastlimit.stores.redis",
    "FleetBackend": "fastlimit.stores.fleet",
    "SharedTable": "fastlimit.stores.table",
    "TableStats": "fastlimit.stores.table",
    "store_from_url": "fastlimit.stores.url",
    # the modules of the README's recipes, after a plain `import fastlimit`
    "asgi": "fastlimit.asgi",
    "web": "fastlimit.web",
    "wsgi": "fastlimit.wsgi",
}

__all__ = sorted([*_LAZY, "__version__"], key=lambda n: (n.islower(), n))

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
