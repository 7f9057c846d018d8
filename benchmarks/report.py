"""Turning raw runs into medians, ratios to direct, target verdicts and a markdown table.

Ratios are computed per repetition (path run r / direct run r, both from the same pass through
the matrix) and then summarised, so slow drift of the machine cancels out as far as possible.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Metric key -> (label, unit, higher is better). Order is the table's row order within a load.
METRICS: dict[str, tuple[str, str, bool]] = {
    "mb_s": ("throughput", "MB/s", True),
    "lat_p50_ms": ("latency p50", "ms", False),
    "lat_p99_ms": ("latency p99", "ms", False),
    "lat_p999_ms": ("latency p99.9", "ms", False),
    "lat_avg_ms": ("latency avg", "ms", False),
    "lat_sampled_p50_ms": ("latency p50 of the sampled round trips", "ms", False),
    "lat_unsampled_p99_ms": ("latency p99 of the others", "ms", False),
    "lat_direct_p99_ms": ("latency p99 of the direct round trips in between", "ms", False),
    "lat_p99_to_direct": ("latency p99 / that of the direct round trips in between", "x", False),
    "lat_p50_added_to_direct_ms": (
        "latency p50 added to that of the direct round trips in between",
        "ms",
        False,
    ),
    "cpu_ms_per_mb": ("relay CPU", "ms/MB", False),
    "cpu_us_per_request": ("relay CPU", "µs/request", False),
}
LOAD_METRICS: dict[str, tuple[str, ...]] = {
    "producer-perf": ("mb_s", "lat_p99_ms", "cpu_ms_per_mb", "cpu_us_per_request"),
    "consumer-perf": ("mb_s", "cpu_ms_per_mb", "cpu_us_per_request"),
    "e2e-java": ("lat_p50_ms", "lat_p99_ms", "lat_p999_ms", "lat_avg_ms"),
    "e2e-py": (
        "lat_p50_ms",
        "lat_p99_ms",
        "lat_p999_ms",
        "lat_avg_ms",
        "lat_sampled_p50_ms",
        "lat_unsampled_p99_ms",
        "cpu_us_per_request",
    ),
    "e2e-py-paired": (
        "lat_p50_ms",
        "lat_p99_ms",
        "lat_direct_p99_ms",
        "lat_p99_to_direct",
        "lat_p50_added_to_direct_ms",
        "cpu_us_per_request",
    ),
    "produce-py": ("mb_s", "cpu_ms_per_mb", "cpu_us_per_request"),
}
#: Figures that already compare with direct round trips of the same run: no second ratio.
COMPARED_WITHIN_RUN = frozenset(
    {"lat_direct_p99_ms", "lat_p99_to_direct", "lat_p50_added_to_direct_ms"}
)


THROUGHPUT_KINDS = ("producer-perf", "consumer-perf", "produce-py")


@dataclass(frozen=True)
class Summary:
    """Median and range of one figure, and of its per-repetition ratio to direct."""

    median: float
    low: float
    high: float
    n: int
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    diff: float | None = None  # median of (path - direct) per repetition

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Summary]]]:
    """load -> metric -> path -> Summary over the successful runs."""
    by_key: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        if not run["ok"]:
            continue
        for metric, value in run["values"].items():
            if value is not None:
                by_key[(run["load"], metric, run["path"])][run["rep"]] = value
    out: dict[str, dict[str, dict[str, Summary]]] = defaultdict(lambda: defaultdict(dict))
    for (load, metric, path), per_rep in by_key.items():
        values = list(per_rep.values())
        direct = {} if metric in COMPARED_WITHIN_RUN else by_key.get((load, metric, "direct"), {})
        ratios = [v / direct[r] for r, v in per_rep.items() if direct.get(r)]
        diffs = [v - direct[r] for r, v in per_rep.items() if r in direct]
        out[load][metric][path] = Summary(
            statistics.median(values),
            min(values),
            max(values),
            len(values),
            statistics.median(ratios) if ratios and path != "direct" else None,
            min(ratios) if ratios and path != "direct" else None,
            max(ratios) if ratios and path != "direct" else None,
            statistics.median(diffs) if diffs and path != "direct" else None,
        )
    return {k: dict(v) for k, v in out.items()}


def _fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(summary: Summary | None) -> str:
    """'12.3 [11.0-13.1] x0.91': median, range over repetitions, median ratio to direct."""
    if summary is None:
        return "-"
    text = _fmt(summary.median)
    if summary.n > 1:
        text += f" [{_fmt(summary.low)}-{_fmt(summary.high)}]"
    if summary.ratio is not None:
        text += f" x{summary.ratio:.2f}"
    return text


@dataclass(frozen=True)
class Target:
    """A goal from the performance issue, checked against this run's numbers."""

    name: str
    value: float | None
    threshold: float
    at_least: bool
    unit: str
    detail: str = ""

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "comparison": ">=" if self.at_least else "<=",
            "unit": self.unit,
            "passed": self.passed,
            "detail": self.detail,
        }


def _get(
    summary: Mapping[str, Mapping[str, Mapping[str, Summary]]], load: str, metric: str, path: str
) -> Summary | None:
    return summary.get(load, {}).get(metric, {}).get(path)


def targets(summary: Mapping[str, Mapping[str, Mapping[str, Summary]]]) -> list[Target]:
    """The issue's pass/fail goals, as ratios to direct within this run."""

    def ratio(load: str, metric: str, path: str) -> float | None:
        s = _get(summary, load, metric, path)
        return s.ratio if s else None

    p50 = _get(summary, "e2e-py", "lat_p50_ms", "proxy-1pct")
    result = [
        Target("produce MB/s 1 KiB, tracing 1%", ratio("produce-1k", "mb_s", "proxy-1pct"),
               0.90, True, "x direct", "produce-1k"),
        Target("consume MB/s 1 KiB, tracing 1%", ratio("consume-1k", "mb_s", "proxy-1pct"),
               0.90, True, "x direct", "consume-1k"),
        Target("produce MB/s 1 KiB, tracing 100%", ratio("produce-1k", "mb_s", "proxy-100pct"),
               0.60, True, "x direct", "produce-1k"),
        Target("e2e p50 added, tracing 1%", p50.diff if p50 else None, 0.1, False, "ms",
               "e2e-py (µs resolution); median over reps of p50(path) - p50(direct)"),
        p99_target(summary),
    ]  # fmt: skip
    for load in ("produce-1k", "consume-1k"):
        cpu = _get(summary, load, "cpu_ms_per_mb", "proxy-off")
        result.append(
            Target(f"proxy CPU, tracing off ({load})", cpu.median if cpu else None, 0.6, False,
                   "ms/MB", "user+sys CPU of the proxy per MiB of record payload")
        )  # fmt: skip
    return result


def p99_target(summary: Mapping[str, Mapping[str, Mapping[str, Summary]]]) -> Target:
    """The p99 goal, read from e2e-py-paired when it ran (the path's p99 against direct round
    trips of the same seconds), else from e2e-py (against the direct run of the repetition)."""
    name = "e2e p99, tracing 1%"
    paired = _get(summary, "e2e-py-paired", "lat_p99_to_direct", "proxy-1pct")
    if paired is not None:
        detail = "e2e-py-paired: median over reps of p99(path) / p99(direct, in between)"
        return Target(name, paired.median, 1.2, False, "x direct", detail)
    e2e = _get(summary, "e2e-py", "lat_p99_ms", "proxy-1pct")
    return Target(name, e2e.ratio if e2e else None, 1.2, False, "x direct", "e2e-py")


#: Below this share of its records traced at 100%, a load's sampled-record cost is not figured.
MIN_TRACED_SHARE = 0.5


def sampled_record_cost(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """CPU per sampled record: (proxy CPU at 100% - at tracing off) / records, per load.

    Paired by repetition, so both runs saw the same machine state. A record at 100% also pays
    for its span's export (or for dropping it when the export queue is full: see spans_dropped).
    Loads that read another path's records (`read_from`) are left out: at 100% they are not
    all sampled. So are loads whose records mostly went untraced at 100% (librdkafka's default
    batches, too large for the headers): the difference would be divided by a handful of
    records. Their share traced is reported instead.
    """
    cpu: dict[tuple[str, str, int], float] = {}
    sampled: dict[tuple[str, int], float] = {}
    produced: dict[tuple[str, int], float] = {}
    for run in runs:
        if run["kind"] not in THROUGHPUT_KINDS or run.get("read_from"):
            continue
        if run["ok"] and run.get("relay"):
            cpu[(run["load"], run["path"], run["rep"])] = run["relay"]["cpu_seconds"]
            if run["path"] == "proxy-100pct":
                sampled[(run["load"], run["rep"])] = (
                    run["relay"].get("records_sampled", 0) or run["records"]
                )
                produced[(run["load"], run["rep"])] = run["records"]
    out: dict[str, dict[str, float]] = {}
    for load in sorted({k[0] for k in sampled}):
        share = statistics.median(
            sampled[key] / produced[key] for key in sampled if key[0] == load and produced[key]
        )
        if share < MIN_TRACED_SHARE:
            out[load] = {"traced_share": share}
            continue
        costs = []
        for (name, rep), records in sampled.items():
            off = cpu.get((load, "proxy-off", rep))
            full = cpu.get((load, "proxy-100pct", rep))
            if name == load and off is not None and full is not None and records:
                costs.append((full - off) / records * 1e6)
        if costs:
            us = statistics.median(costs)
            out[load] = {
                "us_per_record": us,
                "us_per_record_min": min(costs),
                "us_per_record_max": max(costs),
                "spans_per_s_per_core": 1e6 / us if us > 0 else float("inf"),
            }
    return out


def markdown(
    summary: Mapping[str, Mapping[str, Mapping[str, Summary]]],
    loads: Iterable[tuple[str, str, str]],
    paths: Sequence[str],
    goals: Sequence[Target],
    costs: Mapping[str, Mapping[str, float]],
    relays: Mapping[str, Mapping[str, Any]],
    header: Sequence[str],
) -> str:
    """The report as markdown: context lines, the matrix, per-path facts, the targets."""
    lines = [*header, ""]
    lines.append("| load | figure | " + " | ".join(paths) + " |")
    lines.append("|---|---|" + "---|" * len(paths))
    for load, kind, _ in loads:
        for metric in LOAD_METRICS[kind]:
            per_path = summary.get(load, {}).get(metric, {})
            if not per_path:
                continue
            label, unit, better = METRICS[metric]
            arrow = "↑" if better else "↓"
            cells = " | ".join(cell(per_path.get(p)) for p in paths)
            lines.append(f"| {load} | {label} ({unit}) {arrow} | {cells} |")
    lines.append("")
    lines.append("| path | peak RSS (MB) | spans exported | spans dropped | sink (requests/MB) |")
    lines.append("|---|---|---|---|---|")
    for path in paths:
        info = relays.get(path, {})
        if not info:
            continue
        dropped = info.get("spans_dropped", {})
        dropped_text = ", ".join(f"{v:.0f} {k}" for k, v in dropped.items() if v) or "0"
        sink = info.get("sink")
        sink_text = f"{sink['requests']}/{sink['bytes'] / 1e6:.1f}" if sink else "-"
        lines.append(
            f"| {path} | {info.get('peak_rss_mb', 0):.0f} | "
            f"{info.get('spans_exported', 0):.0f} | {dropped_text} | {sink_text} |"
        )
    lines.append("")
    lines.append("| target | value | goal | result |")
    lines.append("|---|---|---|---|")
    for goal in goals:
        value = "-" if goal.value is None else f"{goal.value:.3f} {goal.unit}"
        comparison = ">=" if goal.at_least else "<="
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[goal.passed]
        lines.append(
            f"| {goal.name} | {value} | {comparison} {goal.threshold} {goal.unit} | {verdict} |"
        )
    for load, cost in costs.items():
        if "us_per_record" not in cost:
            lines.append(
                f"| sampled-record cost ({load}) | not figured: {cost['traced_share']:.1%} of its "
                "records traced at 100% (batches too large for the headers) | reported | - |"
            )
            continue
        lines.append(
            f"| sampled-record cost ({load}) | {cost['us_per_record']:.1f} µs/record "
            f"[{cost['us_per_record_min']:.1f}-{cost['us_per_record_max']:.1f}], "
            f"{cost['spans_per_s_per_core']:.0f} spans/s per core | reported | - |"
        )
    lines.append("")
    lines.append(
        "Cells: median [min-max over repetitions] xratio to direct (median of per-repetition "
        "ratios). ↑ higher is better, ↓ lower is better. MB = MiB of record payload. Relay CPU is "
        "user+sys of the proxy (or of socat and its forks, or of the bare relay) during the run."
    )
    return "\n".join(lines) + "\n"
