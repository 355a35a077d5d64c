"""What ``fastlimit stats`` (and the demo, at its end) shows of a table."""

from __future__ import annotations

from typing import Any, TextIO

from fastlimit.limiters.rate import NS_PER_S, Rate
from fastlimit.stores.table import LimiterStats, SharedTable

__all__ = ["print_table_report", "table_report"]


def _rate_text(emission_interval_ns: int, burst: int) -> str:
    """The rate a limiter was most likely made from (T = ceil(period / limit)),
    else its parameters as they are."""
    period_ns = emission_interval_ns * burst
    seconds = round(period_ns / NS_PER_S)
    if seconds >= 1 and abs(seconds * NS_PER_S - period_ns) < burst:
        return str(Rate(burst, seconds * NS_PER_S))
    return f"burst {burst}, 1 per {emission_interval_ns / NS_PER_S:g}s"


def _limiter_row(lim: LimiterStats) -> dict[str, Any]:
    row: dict[str, Any] = {"name": lim.name, "kind": lim.kind, "allowed": lim.allowed,
                           "denied": lim.denied, "full": lim.full}
    if lim.kind == "rate":
        row.update(rate=_rate_text(lim.emission_interval_ns, lim.burst),
                   emission_interval_ns=lim.emission_interval_ns, burst=lim.burst)
    elif lim.kind == "quota":
        row.update(limit=lim.limit)
    row["mixed"] = lim.mixed
    return row


def table_report(table: SharedTable) -> dict[str, Any]:
    """What ``fastlimit stats`` shows, as plain data."""
    s = table.stats()
    return {
        "table": table.name, "path": table.path, "kind": table.kind,
        "capacity": s.capacity, "live_keys": s.live_keys, "occupancy": s.occupancy,
        "locked_slots": s.locked_slots, "full_events": s.full_events,
        "lock_breaks": s.lock_breaks, "lock_timeouts": s.lock_timeouts,
        "nbytes": s.nbytes, "bytes_per_key": s.bytes_per_key,
        "limiters": [_limiter_row(lim) for lim in s.limiters],
    }


def print_table_report(r: dict[str, Any], out: TextIO) -> None:
    print(f"table {r['table']} ({r['path'] or 'anonymous'}): {r['kind']}, capacity "
          f"{r['capacity']:,}, {r['nbytes']:,} bytes", file=out)
    print(f"  live keys {r['live_keys']:,} ({r['occupancy']:.2%} of capacity), locked slots "
          f"{r['locked_slots']:,}, full events {r['full_events']:,}, lock breaks "
          f"{r['lock_breaks']:,}, lock timeouts {r['lock_timeouts']:,}", file=out)
    rows = r["limiters"]
    if not rows:
        print("  no limiter has used it yet", file=out)
        return
    width = max(7, *(len(x["name"]) for x in rows))
    print(f"\n  {'limiter':<{width}}  {'kind':<11}  {'rate or limit':<22}  {'allowed':>10}  "
          f"{'denied':>10}  {'full':>6}", file=out)
    for x in rows:
        what = x.get("rate") or (f"{x['limit']:,} per period" if "limit" in x else "")
        if x["mixed"]:
            what = f"several; last {what}"
        print(f"  {x['name']:<{width}}  {x['kind']:<11}  {what:<22}  {x['allowed']:>10,}  "
              f"{x['denied']:>10,}  {x['full']:>6,}", file=out)
