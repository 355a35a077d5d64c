from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastlimit.web.gate import Gate

def scope_header(headers: Any, wanted: bytes) -> str | None: ...
def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]: ...

class Lane:
    def __init__(self, gate: Any, *, planned: bool, limiter_type: type, result_type: type,
                 decision_type: type, no_address: str,
                 view_types: tuple[type | None, type | None] = ...) -> None: ...
    def check(self, view: Any) -> Any: ...

class AddHeaders:
    def __init__(self, start_response: Callable[..., Any], extra: list[tuple[str, str]],
                 names: frozenset[str],
                 merge: Callable[[Any, list[tuple[str, str]]], list[tuple[str, str]]]) -> None: ...
    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Any: ...

class SendHeaders:
    def __init__(self, send: Callable[[Any], Awaitable[None]], extra: list[tuple[bytes, bytes]],
                 names: frozenset[bytes], merge: Callable[..., Any]) -> None: ...
    def __call__(self, message: Any) -> Awaitable[None]: ...

class WSGICall:
    app: Any
    gate: Gate
    def _wire(self, view_type: type, deny: Callable[..., Any], released: Callable[..., Any],
              names: frozenset[str], merge: Callable[..., Any]) -> None: ...
    def __call__(self, environ: Any, start_response: Callable[..., Any]) -> Any: ...

class ASGICall:
    app: Any
    gate: Gate
    def _wire(self, view_type: type, deny: Callable[..., Any], encode: Callable[..., Any],
              names: frozenset[bytes], merge: Callable[..., Any]) -> None: ...
    async def handle(self, scope: Any, receive: Any, send: Any) -> None: ...

def start_directly(cls: type[ASGICall]) -> None: ...

class HeaderIdentity:
    def __init__(self, kind: str, lookup: Callable[[str], Any], name: str, environ_key: str,
                 raw_name: bytes, identity_type: type, invalid: Any,
                 wsgi_view: type, asgi_view: type) -> None: ...
    def __call__(self, view: Any) -> Any: ...

class FirstOf:
    def __init__(self, identifiers: Any) -> None: ...
    def __call__(self, view: Any) -> Any: ...

class DecisionFields:
    allowed: bool
    resolution: Any
    result: Any
    kind: str | None
    _denied_by: str | None
    _policy: Any
    _wall_ns: int
    _headers: list[tuple[str, str]] | None
    _binding: int | None
    _leases: Sequence[Any]

class ViewFields:
    method: str
    path: str
    peer: str | None
    client_ip: str | None
    raw: Any

def wsgi_view(view: ViewFields, environ: Any) -> Any: ...
def asgi_view(view: ViewFields, scope: Any) -> Any: ...
