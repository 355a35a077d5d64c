"""A tiny GCRA oracle, written straight from DESIGN.md, to check the core
against.  Plain Python integers: no shared memory, no hashing, no races."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    allowed: bool
    remaining: int
    reset_after_ns: int
    retry_after_ns: int


class Model:
    def __init__(self, emission_interval_ns: int, burst: int) -> None:
        self.t = emission_interval_ns
        self.burst = burst
        self.tau = burst * emission_interval_ns
        self.tat: dict[object, int] = {}

    def hit(self, key: object, now: int, cost: int = 1, consume: bool = True) -> Step:
        if cost == 0:  # behaves as peek
            cost, consume = 1, False
        tat = self.tat.get(key, now)
        new_tat = max(tat, now) + cost * self.t
        allowed = new_tat - now <= self.tau
        if allowed and consume:
            self.tat[key] = new_tat
        after = new_tat if allowed and consume else tat
        ahead = max(0, after - now)
        remaining = min(self.burst, max(0, (self.tau - ahead) // self.t))
        retry = 0 if allowed else new_tat - self.tau - now
        return Step(allowed, remaining, ahead, retry)

    def reset(self, key: object) -> None:
        self.tat.pop(key, None)
