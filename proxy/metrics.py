"""Counters the proxy keeps about itself, labelled the way operators read them.

A deliberately small in-process registry: counters keyed by name and a sorted label tuple, cheap
enough for the hot path. The admin endpoint renders them in Prometheus text format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator


class Metrics:
    """Monotonic counters and gauges, keyed by (name, labels)."""

    def __init__(self) -> None:
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, amount: float = 1, **labels: object) -> None:
        self._counters[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))] += amount

    def set(self, name: str, value: float, **labels: object) -> None:
        self._gauges[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))] = value

    def add(self, name: str, amount: float, **labels: object) -> None:
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        self._gauges[key] = self._gauges.get(key, 0) + amount

    def value(self, name: str, **labels: object) -> float:
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        if key in self._gauges:
            return self._gauges[key]
        return self._counters.get(key, 0)

    def total(self, name: str) -> float:
        """Sum of a counter over all its label values."""
        return sum(v for (n, _), v in self._counters.items() if n == name)

    def samples(self) -> Iterator[tuple[str, str, tuple[tuple[str, str], ...], float]]:
        """(kind, name, labels, value) for every series."""
        for (name, labels), value in sorted(self._counters.items()):
            yield "counter", name, labels, value
        for (name, labels), value in sorted(self._gauges.items()):
            yield "gauge", name, labels, value
