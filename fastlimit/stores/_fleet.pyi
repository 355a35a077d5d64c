"""Stubs for fleet mode's compiled hot path (fastlimit/stores/_fleet.pyx)."""

from typing import final

from fastlimit._core import Decision, Gcra

_Key = str | bytes | int

@final
class Held:
    end_ns: int
    balance: bytes
    kb: bytes
    fp: int
    denied_until_ns: int
    full_at_ns: int
    def __init__(self, end_ns: int, balance: bytes, kb: bytes, fp: int) -> None: ...

class LeaseFront:
    _hot: dict[_Key, Held]
    _bal: Gcra
    _view: Gcra
    _valid: int
    burst: int
    lease: int
    def allow(self, key: _Key, cost: int = 1) -> bool: ...
    def hit(self, key: _Key, cost: int = 1) -> Decision: ...
    def _allow_each(self, keys: list[_Key], cost: int) -> bytearray: ...
    def _served(self, kb: bytes, balance: int) -> Decision: ...
    def _check(self, key: _Key, cost: int) -> Decision: ...
