"""Two small wrappers that turn point-in-time values into well-behaved Prometheus series.

``CumulativeCounter``: the cluster reports running totals (``ClusterStats.kv_transfer_bytes``...),
Prometheus wants a counter that only moves forward. ``set(total)`` advances the counter to
``max(exported, total)``: a smaller total (a restarted controller, an older snapshot read after a
newer one) leaves it where it is, and it moves again once the new totals pass the old ones.

``LabelledGauge``: a gauge whose label sets come and go (workers, tenants). ``replace(values)``
sets every given label set and removes the ones no longer present, so a gone tenant stops being
exported instead of freezing at its last value.

Neither is thread-safe on its own; ``ServingMetrics`` serialises calls.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge


class CumulativeCounter:
    """A ``Counter`` driven by running totals; exported value = max of the totals seen so far."""

    def __init__(self, counter: Counter):
        self._counter = counter
        self._exported: dict[tuple[str, ...], float] = {}

    def set(self, total: float, *labels: str) -> None:
        before = self._exported.get(labels, 0.0)
        if total > before:
            child = self._counter.labels(*labels) if labels else self._counter
            child.inc(total - before)
            self._exported[labels] = float(total)

    def value(self, *labels: str) -> float:
        return self._exported.get(labels, 0.0)


class LabelledGauge:
    """A labelled ``Gauge`` whose label sets are replaced wholesale on every update."""

    def __init__(self, gauge: Gauge):
        self._gauge = gauge
        self._present: set[tuple[str, ...]] = set()

    def replace(self, values: dict[tuple[str, ...], float]) -> None:
        for gone in self._present - values.keys():
            self._gauge.remove(*gone)
        for labels, value in values.items():
            self._gauge.labels(*labels).set(value)
        self._present = set(values)
