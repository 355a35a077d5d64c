"""Fleet mode's hot path in one process: ``allow`` and ``hit`` of a key
with a live lease against the plain shared table's, same run.

Starts ``redis-server`` on a free 127.0.0.1 port (stopped by PID).  Two
cases: *served* (a limit of 10**9/s and a lease of 2**24: every check is
served from the lease) and *known denied* (20,000/s, burst 2,000, the
default lease, after 200,000 checks: the lease is spent and the global
bucket known empty, as under fleet_bench.py's load).  Each figure is the
median over runs of ``ns_per_call`` (calls driven from C by ``map``: ~15 ns
of loop in every figure alike); no Redis round trip is in a timed call
except a refill's, which the medians leave out.  Usage::

    python bench/fleet_hotpath.py [--repeat N]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _util import ns_per_call, redis_server  # noqa: E402


def main() -> None:
    import fastlimit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11)
    args = ap.parse_args()
    res: dict[str, list[float]] = collections.defaultdict(list)
    with redis_server() as server:
        def fleet(prefix: str, lease: int | None = None,
                  lease_period: float = 0.1) -> fastlimit.FleetBackend:
            return fastlimit.FleetBackend(fastlimit.RedisBackend(server.url, prefix=prefix),
                                          fastlimit.SharedTable.anonymous(4096), lease=lease,
                                          lease_period=lease_period)

        big = dict(rate="1000000000/1s", burst=1 << 26)
        served = fastlimit.Limiter(big["rate"], store=fleet("s", lease=1 << 24,
                                                            lease_period=0.5),
                                   name="g", burst=big["burst"])
        plain = fastlimit.Limiter(big["rate"], store=fastlimit.SharedTable.anonymous(4096),
                                  name="p", burst=big["burst"])
        denied = fastlimit.Limiter("20000/1s", store=fleet("d"), name="g", burst=2000)
        plain_denied = fastlimit.Limiter("20000/1s", store=fastlimit.SharedTable.anonymous(4096),
                                         name="p", burst=2000)
        for _ in range(100):
            served.allow("hot")
        for _ in range(200_000):
            denied.allow("hot")
            plain_denied.allow("hot")
        keys = ["hot"] * 5000
        for _ in range(args.repeat):
            res["table allow, allowed"].append(ns_per_call(plain.allow, keys, 3))
            res["fleet allow, served"].append(ns_per_call(served.allow, keys, 3))
            res["table hit, allowed"].append(ns_per_call(plain.hit, keys, 3))
            res["fleet hit, served"].append(ns_per_call(served.hit, keys, 3))
            res["table allow, denied"].append(ns_per_call(plain_denied.allow, keys, 3))
            res["fleet allow, known denied"].append(ns_per_call(denied.allow, keys, 3))
            res["fleet hit, known denied"].append(ns_per_call(denied.hit, keys, 3))
    print(f"# {args.repeat} runs; median ns per call (min)")
    for name, runs in res.items():
        print(f"{name:28s} {statistics.median(runs):7.1f}  ({min(runs):.1f})")


if __name__ == "__main__":
    main()
