"""Counters the proxy keeps about itself, labelled the way operators read them.

A deliberately small in-process registry: counters keyed by name and a sorted label tuple, with
the key of each call site cached. Call sites on every request bind their series once
(`counter`, `histogram`) and then pay one dict update per increment, not a keyword dict and a
key lookup. The admin endpoint renders them in Prometheus text format.
"""

from __future__ import annotations

import bisect
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

Labels = tuple[tuple[str, str], ...]
#: Upper bounds (seconds) of latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BoundCounter:
    """One counter series, resolved once: `inc` is a single dict update."""

    __slots__ = ("_counters", "_key")

    def __init__(self, counters: Counter[tuple[str, Labels]], key: tuple[str, Labels]) -> None:
        self._counters = counters
        self._key = key

    def inc(self, amount: float = 1) -> None:
        self._counters[self._key] += amount


class BoundHistogram:
    """One latency histogram series, resolved once."""

    __slots__ = ("_counts", "_total")

    def __init__(self, entry: tuple[list[int], list[float]]) -> None:
        self._counts, self._total = entry

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self._total[0] += value

    def merge(self, counts: list[int], total: float) -> None:
        """Add observations counted elsewhere: a count per bucket (+Inf last) and their sum."""
        mine = self._counts
        for index, count in enumerate(counts):
            if count:
                mine[index] += count
        self._total[0] += total


class MetricsSource(Protocol):
    def flush_metrics(self) -> None:
        """Add what was counted outside the registry since the last flush."""


class Metrics:
    """Monotonic counters and gauges, keyed by (name, labels).

    Hot paths may count on their own and add their counts when asked: every read of the
    registry first flushes the registered sources (weakly held: a source that goes away
    unflushed loses only what it had not added yet)."""

    def __init__(self) -> None:
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        #: (name, labels) -> [count per bucket (+Inf last), sum]
        self._histograms: dict[tuple[str, Labels], tuple[list[int], list[float]]] = {}
        #: Call-site form (name, *label items) -> canonical key; label values are few, so this
        #: stays small and spares the hot path a sort and string conversions per increment.
        self._keys: dict[tuple[object, ...], tuple[str, Labels]] = {}
        self._sources: weakref.WeakSet[MetricsSource] = weakref.WeakSet()

    def add_source(self, source: MetricsSource) -> None:
        """Flush `source` before every read of the registry, until it is removed."""
        self._sources.add(source)

    def remove_source(self, source: MetricsSource) -> None:
        self._sources.discard(source)

    def _flush(self) -> None:
        for source in list(self._sources):
            source.flush_metrics()

    def _key(self, name: str, labels: dict[str, object]) -> tuple[str, Labels]:
        raw = (name, *labels.items())
        key = self._keys.get(raw)
        if key is None:
            key = self._keys[raw] = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        return key

    def histogram(self, name: str, **labels: object) -> BoundHistogram:
        """A histogram series to observe many times; it is listed (empty) from then on."""
        key = self._key(name, labels)
        entry = self._histograms.get(key)
        if entry is None:
            entry = self._histograms[key] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        return BoundHistogram(entry)

    def counter(self, name: str, **labels: object) -> BoundCounter:
        """A counter series to increment many times; listed once incremented, like `inc`'s."""
        return BoundCounter(self._counters, self._key(name, labels))

    def histograms(self) -> Iterator[tuple[str, Labels, list[tuple[float, int]], float, int]]:
        """(name, labels, [(upper bound, cumulative count)], sum, count) per histogram."""
        self._flush()
        for (name, labels), (counts, total) in sorted(self._histograms.items()):
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            yield name, labels, cumulative, total[0], running

    def inc(self, name: str, amount: float = 1, **labels: object) -> None:
        self._counters[self._key(name, labels)] += amount

    def add(self, name: str, amount: float, **labels: object) -> None:
        key = self._key(name, labels)
        self._gauges[key] = self._gauges.get(key, 0) + amount

    def value(self, name: str, **labels: object) -> float:
        self._flush()
        key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
        if key in self._gauges:
            return self._gauges[key]
        return self._counters.get(key, 0)

    def total(self, name: str) -> float:
        """Sum of a counter over all its label values."""
        self._flush()
        return sum(v for (n, _), v in self._counters.items() if n == name)

    def samples(self) -> Iterator[tuple[str, str, tuple[tuple[str, str], ...], float]]:
        """(kind, name, labels, value) for every series."""
        self._flush()
        for (name, labels), value in sorted(self._counters.items()):
            yield "counter", name, labels, value
        for (name, labels), value in sorted(self._gauges.items()):
            yield "gauge", name, labels, value
