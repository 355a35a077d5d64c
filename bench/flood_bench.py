"""An anonymous flood against the callers who sign in, at the capacity of
seed 000's policy (200,000 keys), in process with a clock that stands still
(every key stays live: the worst case).

The flood is 10x the capacity in new client addresses, each request making
two per-IP keys (the anonymous caller's limit and the login route's); then
new authenticated callers (sessions and STARTER API keys, half the
capacity in all) arrive, and the authenticated keys that were live before
the flood are checked for a reset.  Prints one JSON line:

    cd bench && ../.venv/bin/python flood_bench.py            # --flood 10 --new 0.5
"""

import argparse
import ipaddress
import json
import os
import tempfile
import time
import uuid

import tomllib

from fastlimit import FakeClock, Identity, Policy
from fastlimit.stores.table import anonymous_path

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--flood", type=float, default=10.0, help="flood size, in capacities")
parser.add_argument("--new", type=float, default=0.5, help="new callers, in capacities")
parser.add_argument("--live", type=int, default=10_000, help="live callers before the flood")
args = parser.parse_args()

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
with open(os.path.join(EXAMPLES, "seed000.toml"), "rb") as f:
    data = tomllib.load(f)
capacity = data["store"]["capacity"]
with tempfile.TemporaryDirectory() as tmp:
    os.environ["FASTLIMIT_STATE_DIR"] = tmp
    data["store"]["table"] = f"flood-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    policy = Policy.from_dict(data, clock=clock, wall_clock=FakeClock(1_700_000_000 * 10**9),
                              overrides=os.path.join(tmp, "overrides.json"))
    try:
        live = [Identity.session(f"live-{i}") for i in range(args.live)]
        for who in live:
            policy.hit("GET", "/v1/items", who, "192.0.2.1")
        t0 = time.perf_counter()
        flood = int(args.flood * capacity)
        for i in range(flood):
            policy.hit("POST", "/auth/session/login", None,
                       str(ipaddress.IPv4Address(0x0A000000 + i)))
        flood_s = time.perf_counter() - t0
        n = int(args.new * capacity)
        new = [Identity.session(f"new-{i}") if i % 2 else
               Identity.api_key(f"key-{i}", "STARTER", account=f"acct-{i}") for i in range(n)]
        denied = sum(not policy.hit("GET", "/v1/items", who, "198.51.100.1").allowed
                     for who in new)
        reset = sum(dict(policy.hit("GET", "/v1/items", who, "192.0.2.1").headers)[
            "X-RateLimit-Remaining"] != "298" for who in live)
        print(json.dumps({
            "capacity": capacity, "flood_requests": flood, "flood_s": round(flood_s, 1),
            "new_authenticated": n, "denied": denied, "denied_pct": round(100 * denied / n, 3),
            "live_authenticated": len(live), "live_reset": reset,
            "full_events": {"authenticated": policy.store.stats().full_events,
                            "anonymous": policy.anonymous_store.stats().full_events},
        }))
    finally:
        policy.close()
        path = policy.store.path
        for p in (path, anonymous_path(path), f"{path}.overrides.json.gen"):
            if p and os.path.exists(p):
                os.unlink(p)
