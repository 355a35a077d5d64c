"""Prometheus metrics of shared tables, at the path the README names (they
live in :mod:`fastlimit.stores.metrics`)."""

from fastlimit.stores.metrics import Family, PrometheusCollector, families, prometheus_text

__all__ = ["Family", "PrometheusCollector", "families", "prometheus_text"]
