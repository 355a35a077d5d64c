"""Metrics of shared tables, for Prometheus.

Every check a limiter makes is counted in the table itself, in a stripe of
counters owned by the checking process (see ``SharedTable.limiter_stats``),
so any process can report the counts of all of them: a gunicorn master, a
sidecar, or one worker's ``/metrics`` route.

Example:
    >>> import fastlimit
    >>> from fastlimit.stores.metrics import prometheus_text
    >>> table = fastlimit.SharedTable.anonymous(capacity=100)
    >>> lim = fastlimit.Limiter("1/1h", store=table, name="login")
    >>> lim.allow("alice"), lim.allow("alice")
    (True, False)
    >>> print(prometheus_text(table))  # doctest: +ELLIPSIS
    # HELP fastlimit_checks_total Checks made, by limiter and result.
    # TYPE fastlimit_checks_total counter
    fastlimit_checks_total{table="anonymous",limiter="login",kind="rate",result="allowed"} 1
    fastlimit_checks_total{table="anonymous",limiter="login",kind="rate",result="denied"} 1
    ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastlimit.stores.table import SharedTable

__all__ = ["Family", "PrometheusCollector", "families", "prometheus_text"]

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """One metric and its samples: what both exporters are built from."""

    name: str  # without the ``_total`` a counter's samples carry
    type: str  # "counter" or "gauge"
    help: str
    samples: tuple[tuple[Labels, float], ...]


def families(tables: Iterable[SharedTable]) -> list[Family]:
    """The metric families of ``tables`` (labelled by :attr:`SharedTable.name`)."""
    checks: list[tuple[Labels, float]] = []
    per_table: dict[str, list[tuple[Labels, float]]] = {
        k: [] for k in ("capacity", "live_keys", "full_events", "evictions", "lock_breaks",
                        "lock_timeouts")}
    for table in tables:
        s = table.stats()
        t = (("table", table.name),)
        for lim in s.limiters:
            who = t + (("limiter", lim.name), ("kind", lim.kind))
            for result in ("allowed", "denied", "full"):
                checks.append((who + (("result", result),), getattr(lim, result)))
        for k, samples in per_table.items():
            samples.append((t, getattr(s, k)))
    return [
        Family("fastlimit_checks", "counter", "Checks made, by limiter and result.", tuple(checks)),
        Family("fastlimit_table_capacity", "gauge", "Keys the table is sized for.",
               tuple(per_table["capacity"])),
        Family("fastlimit_table_live_keys", "gauge", "Keys whose state has not yet expired.",
               tuple(per_table["live_keys"])),
        Family("fastlimit_table_full_events", "counter",
               "New keys that found no free slot (answered by on_full).",
               tuple(per_table["full_events"])),
        Family("fastlimit_table_evictions", "counter",
               "Live keys forgotten for a new key (tables with on_full=\"evict\").",
               tuple(per_table["evictions"])),
        Family("fastlimit_table_lock_breaks", "counter",
               "Claims left by killed processes and reclaimed.", tuple(per_table["lock_breaks"])),
        Family("fastlimit_table_lock_timeouts", "counter",
               "Waits that gave up on a slot locked by a stalled live process.",
               tuple(per_table["lock_timeouts"])),
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(*tables: SharedTable) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``tables``' metrics."""
    lines = []
    for f in families(tables):
        name = f.name + "_total" if f.type == "counter" else f.name
        lines.append(f"# HELP {name} {f.help}")
        lines.append(f"# TYPE {name} {f.type}")
        for labels, value in f.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


class PrometheusCollector:
    """A ``prometheus_client`` collector of ``tables``' metrics.

    Example::

        from prometheus_client import REGISTRY
        REGISTRY.register(PrometheusCollector([table]))
    """

    def __init__(self, tables: Iterable[SharedTable]) -> None:
        self.tables = list(tables)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # type: ignore[import-not-found,unused-ignore]
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        for f in families(self.tables):
            cls = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
            names = [k for k, _ in f.samples[0][0]] if f.samples else []
            family = cls(f.name, f.help, labels=names)
            for labels, value in f.samples:
                family.add_metric([v for _, v in labels], value)
            yield family

    def describe(self) -> list[Any]:
        return []  # scrape-time discovery: limiters register as they are used
