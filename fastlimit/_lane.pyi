from collections.abc import Awaitable, Callable
from typing import Any

from fastlimit._core import Decision

def legacy_fields(decision: Decision, reset_format: int, wall_now_ns: int,
                  limit: tuple[str, str] | None = None) -> list[tuple[str, str]]: ...

class Lane:
    def __init__(self, gate: Any, *, planned: bool, limiter_type: type, result_type: type,
                 decision_type: type, no_address: str) -> None: ...
    def check(self, view: Any) -> Any: ...

class AddHeaders:
    def __init__(self, start_response: Callable[..., Any], extra: list[tuple[str, str]],
                 names: frozenset[str],
                 merge: Callable[[Any, list[tuple[str, str]]], list[tuple[str, str]]]) -> None: ...
    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Any: ...

class SendHeaders:
    def __init__(self, send: Callable[[Any], Awaitable[None]], extra: list[tuple[str, str]],
                 merge: Callable[[Any, list[tuple[str, str]]], list[tuple[bytes, bytes]]]) -> None: ...
    def __call__(self, message: Any) -> Awaitable[None]: ...
