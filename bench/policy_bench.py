"""``Policy.hit`` on the seed 000 policy, per caller kind, against
``Limiter.allow`` in the same run.

For every kind of caller the seed has (an API key on a tier, a session, an
anonymous caller, a FREE key answered as invalid, a CUSTOM key with no
limit, an anonymous login: route + identity limit, an upload: dedicated
route + concurrency lease, a quota route: tier + quota + cap),
it times ``Policy.hit`` for one hot caller and for 100,000 distinct callers,
allowed and denied, and divides by ``Limiter.allow`` timed the same way
(one hot key, or as many keys; allowed or denied) in the same run.  Uploads
hold a lease, so their figure is ``hit`` + ``release`` (chained in C:
``map(methodcaller("release"), starmap(hit, calls))``).  The seed's size
caps do not apply to an upload's parts, so no size is passed.

"Allowed" runs use the seed with every rate and quota scaled up (nothing
denies); "denied" runs exhaust each caller first.  Both run on a named
table in /dev/shm and a quota file in a temporary directory, removed at
the end.  Prints ns per call (the least of alternating passes) and ratios.

Usage: python bench/policy_bench.py [--callers N] [--passes K]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import collections
import copy
import itertools
import operator
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from _util import table

import fastlimit
from fastlimit import Identity, Limiter, Policy, SharedTable
from fastlimit.policy.config import tomllib
from fastlimit.stores.table import shm_dir

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = os.path.join(HERE, os.pardir, "examples", "seed000.toml")
_RATE = re.compile(r"^(\d+)(/.*)$")


def scaled(value: Any) -> Any:
    """The seed with every rate and quota multiplied, up to the largest a
    rate may be: no caller of the bench is ever denied."""
    if isinstance(value, dict):
        return {k: (min(10**9, v * 10**8) if k == "requests_per_minute" and isinstance(v, int)
                    else scaled(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [scaled(v) for v in value]
    if isinstance(value, str):
        m = _RATE.match(value)
        if m is not None:
            return f"{min(10**9, int(m.group(1)) * 10**8)}{m.group(2)}"
    return value


def make_policy(data: dict[str, Any], name: str, state: str) -> Policy:
    data = copy.deepcopy(data)
    data["policy"]["name"] = name
    data["store"] = {"table": name, "capacity": 400_000,
                     "quotas": os.path.join(state, f"{name}-quotas.tbl")}
    return Policy.from_dict(data)


# caller kind -> (method, path, identity of caller i, uses client_ip, is an upload)
def kinds(n: int) -> dict[str, Callable[[int], tuple[Any, ...]]]:
    def ip(i: int) -> str:
        return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"

    return {
        "API key, one tier rate": lambda i: (
            "GET", "/v1/items", Identity.api_key(f"key{i}", "STARTER", account=f"acct{i}"),
            "10.0.0.1"),
        "session": lambda i: ("GET", "/v1/items", Identity.session(f"user{i}"), "10.0.0.1"),
        "anonymous, per IP": lambda i: ("GET", "/v1/items", None, ip(i)),
        "FREE key (as invalid)": lambda i: (
            "GET", "/v1/items", Identity.api_key(f"free{i}", "FREE"), ip(i)),
        "CUSTOM key (no limit)": lambda i: (
            "GET", "/v1/items", Identity.api_key(f"c{i}", "CUSTOM"), "10.0.0.1"),
        "anonymous login (route + identity)": lambda i: (
            "POST", "/auth/session/login", None, ip(i)),
        "quota route (tier + quota + cap)": lambda i: (
            "POST", "/images/analyze",
            Identity.api_key(f"key{i}", "STARTER", account=f"acct{i}"), "10.0.0.1"),
        "upload (dedicated route + lease), hit + release": lambda i: (
            "POST", f"/files/uploads/u{i}/parts",
            Identity.api_key(f"key{i}", "STARTER", account=f"acct{i}"), ip(i)),
    }


UPLOAD = "upload (dedicated route + lease), hit + release"


def driver(policy: Policy, kind: str, calls: list[tuple[Any, ...]]) -> Callable[[], None]:
    hit = policy.hit
    if kind == UPLOAD:
        # hit, then release, with no Python frame of the bench's in between
        release = operator.methodcaller("release")
        return lambda: collections.deque(
            map(release, itertools.starmap(hit, calls)), maxlen=0) and None
    return lambda: collections.deque(itertools.starmap(hit, calls), maxlen=0) and None


def drive(fn: Callable[[Any], Any], keys: list[Any]) -> Callable[[], None]:
    return lambda: collections.deque(map(fn, keys), maxlen=0) and None


def exhaust(policy: Policy, calls: list[tuple[Any, ...]]) -> None:
    """Deny every caller of ``calls``: hits as large as the limits take."""
    for args in dict.fromkeys(calls):
        for cost in (500, 200, 100, 50, 30, 10, 5, 3, 1, 1, 1):
            try:
                d = policy.hit(*args, cost=cost, content_length=1000)
            except fastlimit.CapacityError:
                continue
            d.release()
            if not d.allowed:
                break


def measure(runs: list[tuple[str, Callable[[], None], int]], passes: int) -> dict[str, float]:
    """The least ns per call of each run over its passes, the passes
    alternating between runs: the least is the run's own cost with the
    least of the other tenants' noise (timeit's reasoning)."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(passes):
        for name, fn, n in runs:
            t0 = time.perf_counter_ns()
            fn()
            times[name].append((time.perf_counter_ns() - t0) / n)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callers", type=int, default=100_000)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--hot-calls", type=int, default=200_000)
    args = ap.parse_args()
    with open(SEED, "rb") as f:
        seed = tomllib.load(f)
    state = tempfile.mkdtemp(prefix="fastlimit-bench-")
    tag = uuid.uuid4().hex[:8]
    generous = make_policy(scaled(seed), f"bench-allow-{tag}", state)
    strict = make_policy(seed, f"bench-deny-{tag}", state)
    lim_table = SharedTable.open(f"bench-lim-{tag}", capacity=400_000)
    open_lim = Limiter("1000000000/1m", store=lim_table, name="open")
    shut_lim = Limiter("1/1h", store=lim_table, name="shut")
    made = [generous, strict]
    try:
        rows = []
        for spread in ("hot", f"{args.callers:,} callers"):
            n = args.hot_calls if spread == "hot" else args.callers
            keys = ["user:1"] * n if spread == "hot" else [f"user:{i}" for i in range(n)]
            for k in dict.fromkeys(keys):
                shut_lim.allow(k)
            for kind, make in kinds(n).items():
                calls = ([make(1)] * n if spread == "hot" else [make(i) for i in range(n)])
                exhaust(strict, calls)
                results = measure([
                    ("allow-open", drive(open_lim.allow, keys), n),
                    ("allow-shut", drive(shut_lim.allow, keys), n),
                    ("hit-open", driver(generous, kind, calls), n),
                    ("hit-shut", driver(strict, kind, calls), n),
                ], args.passes)
                for verdict, hit, base in (("allowed", "hit-open", "allow-open"),
                                           ("denied", "hit-shut", "allow-shut")):
                    if kind == "CUSTOM key (no limit)" and verdict == "denied":
                        continue
                    rows.append((kind, spread, verdict, f"{results[hit]:.0f}",
                                 f"{results[base]:.0f}", f"{results[hit] / results[base]:.1f}x"))
                print(*rows[-1], sep=" | ", file=sys.stderr)
        print(f"fastlimit {fastlimit.__version__}, CPython {sys.version.split()[0]}")
        print(table(rows, ("caller", "callers", "verdict", "Policy.hit ns", "Limiter.allow ns",
                           "ratio")))
    finally:
        for policy in made:
            policy.close()
        for p in made:
            base = os.path.join(shm_dir(), f"fastlimit.{p.name}")
            for suffix in ("", ".overrides.json", ".overrides.json.gen"):
                try:
                    os.unlink(base + suffix)
                except FileNotFoundError:
                    pass
        lim_table.close()
        lim_table.unlink()
        for f in os.listdir(state):
            os.unlink(os.path.join(state, f))
        os.rmdir(state)


if __name__ == "__main__":
    main()
