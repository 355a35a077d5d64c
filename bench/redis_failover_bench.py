"""Redis failures under load: how long, per host, checks are answered by the
failure policy instead of Redis, and what that admits.

Real topologies on 127.0.0.1, started by the tests' launchers
(tests/redis_topologies.py) and stopped by PID; 4 processes as 4 hosts,
each with its own backend made from the topology's URL and its own local
table (``fail="local"``'s, as on 4 machines), checking as fast as they can.
A check counts as answered by the failure policy when the backend's
``failed_local`` / ``failed_open`` / ``failed_closed`` grew during it.
Times are CLOCK_MONOTONIC (system-wide), relative to the fault.

* ``sentinel``: a primary, its replica and one sentinel; after a healthy
  phase, ``SENTINEL FAILOVER`` (the fixture's ``failover()``: it returns
  once the sentinels name the new master and the old one replicates it).
  One hot key at ``--rate``: admitted against the limit's exact bound over
  the run (burst + run / emission interval), for ``fail="local"`` and
  ``fail="open"``.
* ``cluster``: 3 primaries (``--replicas 1``: each with a replica, node
  timeout ``--node-timeout-ms``); after a healthy phase one primary is
  killed (SIGKILL by PID).  30 keys, 10 per primary, each at ``--rate``:
  the share of the live primaries' checks Redis answered after the kill,
  and for the dead primary's keys how long they were answered locally,
  against when its replica took its slots over (polled from the replica's
  INFO replication).

Usage::

    python bench/redis_failover_bench.py [sentinel] [cluster] [--replicas 0|1]
        [--full-coverage yes|no] [--max-retry-interval S] [--rate 500/1s]
        [--healthy 2] [--after 4]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from _util import redis_binary, redis_topologies, start_redis

import fastlimit
from fastlimit import Limiter, Rate, RedisBackend, SharedTable

HOSTS = 4


# -- one host --------------------------------------------------------------------------


def _by_policy(st: Any) -> int:
    return int(st.failed_local + st.failed_open + st.failed_closed)


def _host(url: str, fail: str, prefix: str, name: str, rate: str, keys: list[str],
          ready: Any, go: Any, stop: Any, results: Any) -> None:
    # the backend's failure warnings (rate-limited) would interleave with the figures
    logging.getLogger("fastlimit").setLevel(logging.ERROR)
    backend = RedisBackend.from_url(url, fail=fail, prefix=prefix,
                                    local_table=SharedTable.anonymous(65_536))
    lim = Limiter(rate, store=backend, name=name)
    allow, stats = lim.allow, backend.stats
    times: list[float] = []
    which: list[int] = []
    allowed: list[bool] = []
    policy: list[bool] = []
    retried: list[bool] = []
    lag: list[float] = []
    ready.put(os.getpid())
    go.wait()
    n = len(keys)
    i = 0
    st = stats()
    before, retries = _by_policy(st), st.retries
    while True:
        if i % 64 == 0 and stop.is_set():
            break
        k = i % n
        t0 = time.monotonic()
        a = allow(keys[k])
        t1 = time.monotonic()
        st = stats()
        times.append(t0)
        which.append(k)
        allowed.append(a)
        policy.append(_by_policy(st) != before)
        retried.append(st.retries != retries)
        lag.append(t1 - t0)
        before, retries = _by_policy(st), st.retries
        i += 1
    st = backend.stats()
    results.put({
        "pid": os.getpid(), "t": np.array(times), "key": np.array(which, np.int32),
        "allowed": np.array(allowed), "policy": np.array(policy),
        "retried": np.array(retried), "lag": np.array(lag),
        "stats": {k: getattr(st, k) for k in (
            "calls", "errors", "skipped", "retries", "connection_errors", "timeouts",
            "readonly", "moved", "response_errors", "failed_local", "failed_open",
            "failed_closed", "down_nodes", "last_error", "cluster_down", "refreshes")},
    })
    backend.close()


@dataclass
class Run:
    fault_at: float = 0.0
    fault_done: float = 0.0
    hosts: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)


def _run_hosts(url: str, fail: str, rate: str, keys: list[str], healthy: float,
               fault: Any, after: float, name: str, prefix: str) -> Run:
    """4 hosts checking ``keys`` through ``healthy`` s, ``fault(run)``, then
    ``after`` s more."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_host, args=(url, fail, prefix, name, rate, keys, ready, go,
                                              stop, results)) for _ in range(HOSTS)]
    for p in procs:
        p.start()
    run = Run()
    try:
        for _ in procs:
            ready.get(timeout=120)
        go.set()
        time.sleep(healthy)
        run.fault_at = time.monotonic()
        fault(run)
        run.fault_done = time.monotonic()
        time.sleep(after)
        stop.set()
        run.hosts = [results.get(timeout=120) for _ in procs]
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
                p.join()
    return run


# -- figures ---------------------------------------------------------------------------


def _span(t: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], zero: float) -> str:
    if not mask.any():
        return "none"
    first, last = t[mask].min() - zero, t[mask].max() - zero
    return f"{last - first:.3f} s (from {first:+.3f} to {last:+.3f} s)"


def _at(h: dict[str, Any], zero: float) -> str:
    """When a host's checks were retried (READONLY or a lost connection)."""
    t = h["t"][h["retried"]] - zero
    return f" (at {', '.join(f'{x:+.3f} s' for x in t)})" if len(t) else ""


def _bound(rate: Rate, seconds: float) -> int:
    """GCRA's most admitted on one fresh key over ``seconds``: the burst,
    then one per emission interval."""
    t_ns = -(-rate.period_ns // rate.limit)
    return int(rate.limit + int(seconds * 1e9) // t_ns)


def sentinel(args: argparse.Namespace, root: str) -> None:
    rt = redis_topologies()
    setup = rt.start_sentinel(lambda *extra: start_redis(*extra, root=root), rt.free_port,
                              redis_binary(), Path(tempfile.mkdtemp(dir=root)))
    rate = Rate.parse(args.rate)
    try:
        print(f"## Sentinel: a primary, its replica, one sentinel; SENTINEL FAILOVER after "
              f"{args.healthy} s; {HOSTS} hosts on one key at {args.rate}")
        for fail in ("local", "open"):
            switch: dict[str, Any] = {}

            def fault(run: Run, switch: dict[str, Any] = switch) -> None:
                switch["ports"] = setup.failover()

            run = _run_hosts(setup.url, fail, args.rate, ["hot"], args.healthy, fault,
                             args.after, f"s{uuid.uuid4().hex[:6]}",
                             f"fo{uuid.uuid4().hex[:6]}")
            t0 = run.fault_at
            start = min(h["t"][0] for h in run.hosts)
            end = max(h["t"][-1] for h in run.hosts)
            admitted = sum(int(h["allowed"].sum()) for h in run.hosts)
            by_policy = sum(int((h["allowed"] & h["policy"]).sum()) for h in run.hosts)
            checks = sum(len(h["t"]) for h in run.hosts)
            bound = _bound(rate, end - start)
            old, new = switch["ports"]
            print(f"\n### fail={fail!r}: master {old} -> {new}; failover() took "
                  f"{run.fault_done - t0:.2f} s; run {end - start:.2f} s, {checks} checks")
            spans = []
            for i, h in enumerate(run.hosts):
                mask = h["policy"]
                span = _span(h["t"], mask, t0)
                if mask.any():
                    spans.append(h["t"][mask].max() - h["t"][mask].min())
                st = h["stats"]
                print(f"  host {i}: answered by the policy {int(mask.sum())} of {len(mask)} "
                      f"checks, over {span}; admitted {int(h['allowed'].sum())} "
                      f"({int((h['allowed'] & mask).sum())} by the policy); errors "
                      f"{st['errors']} (connection {st['connection_errors']}, timeouts "
                      f"{st['timeouts']}, readonly {st['readonly']}), retries "
                      f"{st['retries']}{_at(h, t0)}, skipped {st['skipped']}; slowest check "
                      f"{h['lag'].max() * 1000:.0f} ms")
            extra = sum(_bound(rate, s) for s in spans)
            print(f"  all hosts: admitted {admitted} ({admitted - by_policy} by Redis, "
                  f"{by_policy} by the policy); the limit's exact bound over the run: "
                  f"{bound}" + (f"; with each host's local table over its own span: "
                                f"at most {bound + extra}" if fail == "local" else ""))
    finally:
        setup.stop()


def cluster(args: argparse.Namespace, root: str) -> None:
    rt = redis_topologies()
    made = rt.start_cluster(lambda *extra: start_redis(*extra, root=root), rt.free_port,
                            node_timeout_ms=args.node_timeout_ms, replicas=args.replicas,
                            extra=("--cluster-require-full-coverage", args.full_coverage))
    name, prefix = f"c{uuid.uuid4().hex[:6]}", f"fo{uuid.uuid4().hex[:6]}"
    try:
        probe = RedisBackend.from_url(made.url, prefix=prefix)
        per_node: dict[int, list[str]] = {i: [] for i in range(len(made.nodes))}
        i = 0
        while any(len(v) < 10 for v in per_node.values()):
            key = f"user:{i}"
            node = made.primary_of(probe.redis_key(name, key))
            if len(per_node[node]) < 10:
                per_node[node].append(key)
            i += 1
        probe.close()
        keys = [k for v in per_node.values() for k in v]
        owner = np.array([n for n, v in per_node.items() for _ in v])
        dead = 1
        replica = made.replicas[dead][0] if args.replicas else None
        how = (f"{args.replicas} replica each, " if args.replicas else "no replicas, ") + \
            (f"max_retry_interval={args.max_retry_interval}, "
             if args.max_retry_interval is not None else "") + \
            f"cluster-node-timeout {args.node_timeout_ms} ms, cluster-require-full-coverage " \
            f"{args.full_coverage}"
        print(f"\n## Cluster: 3 primaries ({made.how}; {how}); SIGKILL of primary "
              f"{made.nodes[dead].port} after {args.healthy} s; {HOSTS} hosts on "
              f"{len(keys)} keys (10 per primary) at {args.rate} each, fail='local'")

        def fault(run: Run) -> None:
            made.nodes[dead].stop(signal.SIGKILL)
            run.events["killed"] = time.monotonic()
            if replica is None:
                return
            with replica.client(socket_timeout=1) as c:
                def promoted() -> bool:
                    return bool(c.info("replication")["role"] == "master")
                rt.wait_for("the replica's promotion", promoted, timeout=60)
            run.events["promoted"] = time.monotonic()

        url = made.url + (f"?max_retry_interval={args.max_retry_interval}"
                          if args.max_retry_interval is not None else "")
        run = _run_hosts(url, "local", args.rate, keys, args.healthy, fault,
                         args.after, name, prefix)
        t0 = run.events["killed"]
        if "promoted" in run.events:
            print(f"  the replica {replica.port} was master {run.events['promoted'] - t0:.3f} s "
                  f"after the kill (INFO replication polled every 20 ms)")
        else:
            print("  (no replica: the dead primary's slots stay unserved; with "
                  "cluster-require-full-coverage the others refuse every slot once the node "
                  "timeout passes, so the run ends before it)")
        for i, h in enumerate(run.hosts):
            post = h["t"] >= t0
            live = post & (owner[h["key"]] != dead)
            gone = post & (owner[h["key"]] == dead)
            by_redis_live = int((live & ~h["policy"]).sum())
            line = (f"  host {i}: live primaries' keys after the kill: {by_redis_live} of "
                    f"{int(live.sum())} checks answered by Redis "
                    f"({100 * by_redis_live / max(1, int(live.sum())):.2f}%; the others "
                    f"over {_span(h['t'], live & h['policy'], t0)}), slowest "
                    f"{h['lag'][live].max() * 1000:.0f} ms; dead primary's keys: "
                    f"{int((gone & h['policy']).sum())} of {int(gone.sum())} answered locally "
                    f"over {_span(h['t'], gone & h['policy'], t0)}")
            back = gone & ~h["policy"]
            if back.any():
                line += f", by Redis again from {h['t'][back].min() - t0:+.3f} s"
            st = h["stats"]
            print(line + f"; errors {st['errors']} (connection {st['connection_errors']}, "
                  f"timeouts {st['timeouts']}, cluster_down {st['cluster_down']}), "
                  f"skipped {st['skipped']}, retries {st['retries']}, slot map refreshes "
                  f"{st['refreshes']}; last error: {st['last_error']}")
    finally:
        made.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="*", help="sentinel, cluster (default: both)")
    ap.add_argument("--rate", default="500/1s")
    ap.add_argument("--healthy", type=float, default=2.0)
    ap.add_argument("--after", type=float, default=4.0,
                    help="seconds of checks after the fault returned")
    ap.add_argument("--replicas", type=int, default=1, choices=[0, 1])
    ap.add_argument("--full-coverage", default="yes", choices=["yes", "no"],
                    help="cluster-require-full-coverage (yes, Redis's default: while a "
                         "primary is marked failed and not replaced, every node refuses "
                         "every slot)")
    ap.add_argument("--max-retry-interval", type=float, default=None,
                    help="the backends' longest marked-down period (default: theirs, 30 s)")
    ap.add_argument("--node-timeout-ms", type=int, default=None,
                    help="default: 2000 with replicas, 15000 without")
    args = ap.parse_args()
    if args.node_timeout_ms is None:
        args.node_timeout_ms = 2000 if args.replicas else 15000
    version = os.popen(f"{redis_binary()} --version").read().split()[2]
    print(f"# {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores; redis "
          f"{version}; redis-py {redis.__version__}; fastlimit {fastlimit.__version__}; "
          f"python {sys.version.split()[0]}\n")
    root = tempfile.mkdtemp(prefix="fl-failover-")
    try:
        for what in args.what or ["sentinel", "cluster"]:
            {"sentinel": sentinel, "cluster": cluster}[what](args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
