"""The GCRA oracle the stores are checked against: a key -> tat map driven
by fastlimit/core/gcra.py, the one statement of the arithmetic (itself
checked against DESIGN.md's numbers in tests/test_gcra_statement.py).
Plain Python integers: no shared memory, no hashing, no races."""

from __future__ import annotations

from fastlimit.core import gcra


class Model:
    def __init__(self, emission_interval_ns: int, burst: int) -> None:
        self.t = emission_interval_ns
        self.burst = burst
        self.tau = gcra.tolerance_ns(emission_interval_ns, burst)
        self.tat: dict[object, int] = {}

    def hit(self, key: object, now: int, cost: int = 1, consume: bool = True) -> gcra.Answer:
        if cost == 0:  # behaves as peek
            consume = False
        inc = gcra.increment_ns(cost, self.t)
        tat = self.tat.get(key, now)
        allowed, after = gcra.step(tat, now, inc, self.tau, consume)
        if allowed and consume:
            self.tat[key] = after
        return gcra.answer(allowed, after - now, inc, self.t, self.burst)

    def reset(self, key: object) -> None:
        self.tat.pop(key, None)
