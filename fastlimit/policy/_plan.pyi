"""Stubs for the compiled decision path (fastlimit/policy/_plan.pyx)."""

from collections.abc import Awaitable, Callable
from typing import Any, final

from fastlimit._core import Decision
from fastlimit.limiters.composite import CompositeResult, LimitCheck

@final
class Generation:
    def __init__(self, buffer: Any = None) -> None: ...
    def value(self) -> int: ...
    def set(self, value: int) -> None: ...
    def release(self) -> None: ...

@final
class RouteNode:
    literal: dict[str, RouteNode]
    param: RouteNode | None
    here: dict[str, list[int]]
    tail: dict[str, list[int]]
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

FULL_RETRY_AFTER: int

def normalize_path(path: str) -> str: ...

@final
class RouteIndex:
    def __init__(self, root: RouteNode, exact: dict[str, Any], dynamic: bool,
                 values: list[Any], combine: Callable[[tuple[Any, ...]], Any] | None = None
                 ) -> None: ...
    def match(self, method: str, path: str) -> Any: ...
    def walk(self, method: str, path: str) -> Any: ...

@final
class Bucket:
    name: str
    bucket: str
    rate: Any
    shadow: bool
    ipv6_prefix: int
    by_ip: Bucket
    def __init__(self, name: str, bucket: str, rate: Any, shadow: bool,
                 make_limiter: Callable[[Any, str], Any], ipv6_prefix: int = ...) -> None: ...
    def limiter(self, rate: Any) -> Any: ...

@final
class RouteRule:
    spec: Any
    limit: Bucket
    anonymous: Bucket | None
    per_ip: bool
    dedicated: bool
    def __init__(self, spec: Any, limit: Bucket, anonymous: Bucket | None) -> None: ...

@final
class Usage:
    spec: Any
    concurrency: Any
    name: str
    kind: str
    bytes: bool
    def __init__(self, spec: Any, concurrency: Any) -> None: ...

@final
class RouteSet:
    rules: tuple[RouteRule, ...]
    usages: tuple[Usage, ...]
    dedicated: bool
    def __init__(self, rules: tuple[RouteRule, ...], usages: tuple[Usage, ...]) -> None: ...

@final
class TierPlan:
    spec: Any
    rate: Any
    api_access: bool
    def __init__(self, spec: Any, api: Bucket | None) -> None: ...

@final
class TierUsage: ...

@final
class PolicyDecision:
    """The answer to one request under a policy (see fastlimit.policy.policy)."""

    def byte_cap(self) -> int | None: ...
    def streamed_past_cap(self) -> PolicyDecision: ...
    def finish(self, answer: Any) -> PolicyDecision: ...
    async def settle(self) -> PolicyDecision: ...
    @property
    def pending(self) -> tuple[Any, ...] | None: ...

    allowed: bool
    kind: str | None
    @property
    def resolution(self) -> Any: ...
    @property
    def checks(self) -> tuple[LimitCheck, ...]: ...
    @property
    def result(self) -> CompositeResult: ...
    @property
    def rejected(self) -> str | None: ...
    @property
    def would_allow(self) -> bool: ...
    @property
    def binding(self) -> int | None: ...
    @property
    def limit(self) -> str | None: ...
    @property
    def decision(self) -> Decision | None: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...
    def raw_headers(self) -> list[tuple[bytes, bytes]]: ...
    def render(self, index: int) -> list[tuple[str, str]]: ...
    @property
    def retry_after(self) -> int | None: ...
    @property
    def status(self) -> int | None: ...
    @property
    def content_type(self) -> str: ...
    @property
    def body(self) -> bytes | None: ...
    @property
    def holding(self) -> bool: ...
    def release(self) -> Awaitable[None] | None: ...
    def __bool__(self) -> bool: ...

@final
class Plan:
    def __init__(self, policy: Any, identities: dict[str, Bucket], routes: RouteIndex,
                 tiers: dict[str, TierPlan], customers: dict[str, TierPlan], overrides: Any,
                 wall_clock: Callable[[], int] | None, style: Any, responses: dict[str, Any],
                 concurrency_retry: dict[str, float], *, api_tiers: bool, identity_type: type,
                 resolution_type: type, check_type: type, result_type: type) -> None: ...
    # a store's count_request (one call per request), the module of its ops
    remote: Callable[..., Any] | None
    remote_ops: Any
    remote_async: bool
    def hit(self, method: str, path: str, identity: Any = None, client_ip: str | None = None,
            *, cost: int = 1, content_length: int | None = None,
            files: int | None = None) -> PolicyDecision: ...
    def peek(self, method: str, path: str, identity: Any = None,
             client_ip: str | None = None, *, cost: int = 1) -> PolicyDecision: ...
    def resolve(self, method: str, path: str, identity: Any = None,
                client_ip: str | None = None) -> Any: ...
