"""Metrics where they are counted: each stage's stats object is a Prometheus collector.

A stage keeps plain counters in its own stats dataclass (cheap to bump, easy to test) and says in
its `collect()` how they appear in /metrics. The pipeline registers every stage's collector in one
`Metrics` registry; /metrics renders it, and `fedimod status`, /readyz and the watchdog read the
same samples back through `value` and `values`, so nothing is copied by hand on the way.

Names follow Prometheus conventions: counters end in `_total` when rendered (prometheus-client
adds it), gauges carry a unit where they have one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Collector", "Metric", "Metrics", "counter", "counters", "gauge", "gauges"]


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(family: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str,
              labels: Iterable[str], values: Mapping[tuple[str, ...], float]) -> Metric:
    metric = family(name, doc, labels=list(labels))
    for key, value in sorted(values.items()):
        metric.add_metric(list(key), value)
    return metric


def counters(name: str, doc: str, label: str | tuple[str, ...], values: Mapping[str, float] |
             Mapping[tuple[str, ...], float]) -> Metric:
    """A counter family by one label (`values` keyed by its value) or several (keyed by tuples)."""
    labels = (label,) if isinstance(label, str) else label
    return _labelled(CounterMetricFamily, name, doc, labels, _keyed(values))


def gauges(name: str, doc: str, label: str | tuple[str, ...], values: Mapping[str, float] |
           Mapping[tuple[str, ...], float]) -> Metric:
    labels = (label,) if isinstance(label, str) else label
    return _labelled(GaugeMetricFamily, name, doc, labels, _keyed(values))


def _keyed(values: Mapping[str, float] | Mapping[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {(k,) if isinstance(k, str) else k: v for k, v in values.items()}


class Metrics:
    """One process's registry: the stages' collectors, rendered and read back."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)

    def register(self, *collectors: Collector) -> None:
        for collector in collectors:
            self._registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def value(self, metric: str, /, default: float = 0.0, **labels: str) -> float:
        """One sample (counters by their rendered `_total` name); `default` when no collector has it."""
        found = self._registry.get_sample_value(metric, labels)
        return default if found is None else found

    def values(self, name: str) -> dict[str, float]:
        """Every sample of a one-label family, by that label's value (`fedimod_jobs` → by state)."""
        return {key[0]: value for key, value in self.labelled(name).items() if len(key) == 1}

    def labelled(self, name: str) -> dict[tuple[str, ...], float]:
        """Every sample of a family, keyed by its label values in order."""
        return {tuple(sample.labels.values()): sample.value for family in self._registry.collect()
                for sample in family.samples if sample.name == name}
