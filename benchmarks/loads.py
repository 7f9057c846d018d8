"""The loads: Kafka's own Java perf tools plus confluent-kafka (librdkafka) for a non-Java client.

Each load runs against one bootstrap address and returns plain numbers (a `LoadResult`). The Java
tools report their own throughput and latency, measured inside the JVM, so JVM start-up never
counts. Kafka's tools say "MB" for MiB (2^20 bytes); so does this module.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testbed.java_tools import java_tool_command

from .harness import run_logged

MIB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    """One kind of traffic. `source` names the produce load whose topic a consume load reads;
    `source_path`, the path whose topic it reads on every path (default: each path its own)."""

    name: str
    kind: str  # producer-perf, consumer-perf, e2e-java, e2e-py, e2e-py-paired, produce-py
    records: int
    quick_records: int
    record_size: int = 1024
    compression: str = "none"
    source: str | None = None
    source_path: str | None = None
    description: str = ""
    #: Run only when named in --loads.
    diagnostic: bool = False

    def count(self, quick: bool, scale: float = 1.0) -> int:
        if quick:
            return self.quick_records
        return max(1, int(self.records * scale))


# Full counts are sized for the whole matrix (9 loads x 5 paths x 3 repetitions) to take about
# 15 minutes on a 2-core machine shared with the broker; --scale 2.5 gives the 200k x 1 KiB runs
# a faster machine can afford.
LOADS: dict[str, Load] = {
    load.name: load
    for load in (
        Load("produce-1k", "producer-perf", 80_000, 5_000, 1024, "none",
             description="ProducerPerformance 1 KiB, acks=all, uncompressed"),
        Load("produce-1k-lz4", "producer-perf", 80_000, 5_000, 1024, "lz4",
             description="ProducerPerformance 1 KiB, acks=all, lz4"),
        Load("produce-100b", "producer-perf", 150_000, 20_000, 100, "none",
             description="ProducerPerformance 100 B, acks=all, uncompressed"),
        Load("produce-100b-lz4", "producer-perf", 150_000, 20_000, 100, "lz4",
             description="ProducerPerformance 100 B, acks=all, lz4"),
        Load("consume-1k", "consumer-perf", 80_000, 5_000, 1024, source="produce-1k",
             description="ConsumerPerformance of produce-1k's records, fresh group"),
        Load("consume-1k-traced", "consumer-perf", 80_000, 5_000, 1024, source="produce-1k",
             source_path="proxy-1pct",
             description="[diagnostic: --loads] ConsumerPerformance of what produce-1k wrote "
             "through proxy-1pct (a traceparent on each record), on every path",
             diagnostic=True),
        Load("consume-100b", "consumer-perf", 150_000, 20_000, 100, source="produce-100b",
             description="ConsumerPerformance of produce-100b's records, fresh group"),
        Load("e2e-java", "e2e-java", 500, 100, 100,
             description="EndToEndLatency 100 B, acks=all (Java; whole-ms percentiles)"),
        Load("e2e-py", "e2e-py", 3_000, 200, 100,
             description="produce one, consume it, repeat (confluent-kafka; µs percentiles)"),
        Load("e2e-py-paired", "e2e-py-paired", 3_000, 200, 100,
             description="e2e-py through the path and direct at once, in alternating blocks "
             "of 25 round trips (the p99 target's figure)"),
        Load("produce-py", "produce-py", 300_000, 5_000, 1024,
             description="confluent-kafka producer 1 KiB, acks=all, uncompressed"),
    )
}  # fmt: skip


@dataclass
class LoadResult:
    """What one run of a load measured. `values` are the figures the report tabulates."""

    ok: bool
    values: dict[str, float] = field(default_factory=dict)
    records: int = 0
    payload_bytes: int = 0
    error: str = ""
    wall_seconds: float = 0.0


# -- Java tools -------------------------------------------------------------------------------

_PRODUCER_SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th"
)
_E2E_AVG = re.compile(r"Avg latency: ([\d.]+) ms")
_E2E_PCT = re.compile(r"Percentiles: 50th = (\d+), 99th = (\d+), 99.9th = (\d+)")


FULL_JIT = True
"""Run the Java tools with the full JIT; --quick turns it off (C1 only starts faster, and a smoke
test's numbers do not matter)."""


def _java(tool: str, *args: str) -> list[str]:
    return java_tool_command("4", tool, *args, heap="512m", quick_start=not FULL_JIT)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def producer_perf(
    bootstrap: str, topic: str, records: int, size: int, compression: str, log: Path
) -> LoadResult:
    """ProducerPerformance at full speed (--throughput -1); MB/s and its latency percentiles."""
    cmd = _java(
        "ProducerPerformance",
        "--bootstrap-server", bootstrap,
        "--topic", topic,
        "--num-records", str(records),
        "--record-size", str(size),
        "--throughput", "-1",
        "--reporting-interval", "60000",
        "--command-property", "acks=all", f"compression.type={compression}",
    )  # fmt: skip
    rc, out = run_logged(cmd, log, timeout=300)
    matches = list(_PRODUCER_SUMMARY.finditer(out))
    match = matches[-1] if matches else None
    if rc != 0 or match is None or int(match.group(1)) != records:
        return LoadResult(False, error=f"rc={rc}\n{_tail(out)}")
    return LoadResult(
        True,
        {
            "mb_s": float(match.group(3)),
            "records_s": float(match.group(2)),
            "lat_avg_ms": float(match.group(4)),
            "lat_p50_ms": float(match.group(6)),
            "lat_p99_ms": float(match.group(8)),
        },
        records=records,
        payload_bytes=records * size,
    )


def consumer_perf(bootstrap: str, topic: str, records: int, size: int, log: Path) -> LoadResult:
    """ConsumerPerformance from the beginning with a fresh group; fetch MB/s excludes the join."""
    cmd = _java(
        "ConsumerPerformance",
        "--bootstrap-server", bootstrap,
        "--topic", topic,
        "--num-records", str(records),
        "--group", f"bench-{uuid.uuid4().hex[:12]}",
        "--timeout", "30000",
    )  # fmt: skip
    rc, out = run_logged(cmd, log, timeout=300)
    header = None
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if cells and cells[0] == "start.time":
            header = cells
        elif header and len(cells) == len(header):
            row = dict(zip(header, cells, strict=True))
            try:
                consumed = int(row["data.consumed.in.nMsg"])
                values = {
                    "mb_s": float(row["fetch.MB.sec"]),
                    "mb_s_with_join": float(row["MB.sec"]),
                    "records_s": float(row["fetch.nMsg.sec"]),
                    "rebalance_ms": float(row["rebalance.time.ms"]),
                }
            except (KeyError, ValueError):
                continue
            if rc == 0 and consumed >= records:
                return LoadResult(True, values, records=consumed, payload_bytes=consumed * size)
            return LoadResult(False, error=f"rc={rc}, consumed {consumed}/{records}")
    return LoadResult(False, error=f"rc={rc}\n{_tail(out)}")


def e2e_java(bootstrap: str, topic: str, records: int, size: int, log: Path) -> LoadResult:
    """EndToEndLatency: one record at a time, acks=all; avg (µs resolution), percentiles (ms)."""
    cmd = _java(
        "EndToEndLatency",
        "--bootstrap-server", bootstrap,
        "--topic", topic,
        "--num-records", str(records),
        "--producer-acks", "all",
        "--record-size", str(size),
    )  # fmt: skip
    rc, out = run_logged(cmd, log, timeout=300)
    avg, pct = _E2E_AVG.search(out), _E2E_PCT.search(out)
    if rc != 0 or avg is None or pct is None:
        return LoadResult(False, error=f"rc={rc}\n{_tail(out)}")
    return LoadResult(
        True,
        {
            "lat_avg_ms": float(avg.group(1)),
            "lat_p50_ms": float(pct.group(1)),
            "lat_p99_ms": float(pct.group(2)),
            "lat_p999_ms": float(pct.group(3)),
        },
        records=records,
        payload_bytes=records * size,
    )


# -- confluent-kafka --------------------------------------------------------------------------


def _quiet_logger() -> object:
    import logging

    logger = logging.getLogger("benchmarks.librdkafka")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def produce_py(bootstrap: str, topic: str, records: int, size: int) -> LoadResult:
    """confluent-kafka producer at full speed: a non-Java client's produce path (librdkafka)."""
    from confluent_kafka import KafkaException, Producer

    failures = 0

    def on_delivery(err: object, msg: object) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "none",
            "queue.buffering.max.messages": 200_000,
            "logger": _quiet_logger(),
        }
    )
    try:
        producer.list_topics(topic, timeout=15)  # connect and learn the leader before timing
        payload = b"x" * size
        began = time.perf_counter()
        for _ in range(records):
            while True:
                try:
                    producer.produce(topic, payload, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.005)
            producer.poll(0)
        remaining = producer.flush(120)
        elapsed = time.perf_counter() - began
    except KafkaException as exc:
        return LoadResult(False, error=str(exc))
    finally:
        del producer
    if remaining or failures:
        return LoadResult(False, error=f"{failures} failed, {remaining} not delivered")
    return LoadResult(
        True,
        {"mb_s": records * size / MIB / elapsed, "records_s": records / elapsed},
        records=records,
        payload_bytes=records * size,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _carries_sampled_context(headers: list[tuple[str, bytes]] | None) -> bool:
    """Whether a consumed record's traceparent has the sampled flag (`...-01`)."""
    return any(
        key == "traceparent" and value is not None and value.endswith(b"-01")
        for key, value in headers or ()
    )


def _by_sampling(sampled: list[float], unsampled: list[float]) -> dict[str, float]:
    """Latency of the sampled and the unsampled round trips apart (only where both occur)."""
    if not sampled or not unsampled:
        return {}
    sampled.sort()
    unsampled.sort()
    return {
        "sampled_share": len(sampled) / (len(sampled) + len(unsampled)),
        "lat_sampled_p50_ms": _percentile(sampled, 0.50),
        "lat_unsampled_p50_ms": _percentile(unsampled, 0.50),
        "lat_unsampled_p99_ms": _percentile(unsampled, 0.99),
    }


class _RoundTrips:
    """One producer and one consumer of a new, empty topic, timing one record's round trip at a
    time with perf_counter_ns (EndToEndLatency reports whole milliseconds, too coarse to see a
    0.1 ms cost). Client overhead is the same on every path; the difference is the path's."""

    #: The first round trips include connection and offset set-up: not counted.
    WARMUP = 20

    def __init__(self, bootstrap: str, topic: str, size: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

        logger = _quiet_logger()
        self._topic = topic
        self._size = size
        self._sent = 0
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "logger": logger}
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 500,
                "logger": logger,
            }
        )
        # The topic is new and empty: reading from the beginning sees every record, however
        # long the consumer takes to connect.
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.latencies: list[float] = []
        # Round trips whose record the proxy traced (a sampled traceparent), and the others: at
        # 1% the 99th percentile falls where the one group ends and the other begins.
        self.sampled: list[float] = []
        self.unsampled: list[float] = []

    def run(self, count: int, counted: bool = True) -> str | None:
        """`count` round trips, kept in the figures when `counted` (the first ones, set-up
        included, are not); an error, if one failed."""
        for _ in range(count):
            outcome = self._one()
            if isinstance(outcome, str):
                return outcome
            if counted:
                took, sampled = outcome
                self.latencies.append(took)
                (self.sampled if sampled else self.unsampled).append(took)
        return None

    def _one(self) -> tuple[float, bool] | str:
        """Produce one record and wait until the consumer holds it: (ms, whether the record
        carried a sampled traceparent), or why it failed."""
        value = f"{self._sent:08d}".encode().ljust(self._size, b"x")
        self._sent += 1
        began = time.perf_counter_ns()
        self._producer.produce(self._topic, value)
        self._producer.poll(0)
        deadline = time.monotonic() + 30
        while True:
            msg = self._consumer.poll(1.0)
            if msg is not None and msg.error() is None and msg.value() == value:
                break
            if time.monotonic() > deadline:
                return f"record {self._sent - 1} of {self._topic} not received within 30 s"
        took = (time.perf_counter_ns() - began) / 1e6
        return took, _carries_sampled_context(msg.headers())

    def close(self) -> None:
        self._producer.flush(10)
        self._consumer.close()

    def figures(self) -> dict[str, float]:
        latencies = sorted(self.latencies)
        return {
            "lat_avg_ms": statistics.fmean(latencies),
            "lat_p50_ms": _percentile(latencies, 0.50),
            "lat_p99_ms": _percentile(latencies, 0.99),
            "lat_p999_ms": _percentile(latencies, 0.999),
            **_by_sampling(self.sampled, self.unsampled),
        }


#: Round trips in a row on one side of a paired run: long enough that the path keeps its
#: steady state (a sampled round trip's after-send work lands on the next one, as in e2e-py),
#: short (5-10 ms) against the bursts of a shared machine.
PAIRED_BLOCK = 25


def twin_topic(topic: str) -> str:
    """The topic of the direct round trips a paired run makes beside `topic`."""
    return f"{topic}-direct"


def _time_round_trips(
    sides: list[tuple[str, str]], records: int, size: int
) -> tuple[list[_RoundTrips], str | None]:
    """`records` round trips on each (bootstrap, topic) side, taking turns in blocks of
    `PAIRED_BLOCK`: the sides, and an error if one failed."""
    from confluent_kafka import KafkaException

    opened: list[_RoundTrips] = []
    error = None
    try:
        for bootstrap, topic in sides:
            opened.append(_RoundTrips(bootstrap, topic, size))
        for trips in opened:
            error = error or trips.run(_RoundTrips.WARMUP, counted=False)
        done = 0
        while not error and done < records:
            block = min(PAIRED_BLOCK, records - done)
            for trips in opened:
                error = error or trips.run(block)
            done += block
    except KafkaException as exc:
        error = str(exc)
    finally:
        for trips in opened:
            trips.close()
    return opened, error


def e2e_py(bootstrap: str, topic: str, records: int, size: int) -> LoadResult:
    """Produce one record, wait until the consumer holds it, repeat: µs-resolution latency."""
    opened, error = _time_round_trips([(bootstrap, topic)], records, size)
    if error:
        return LoadResult(False, error=error)
    return LoadResult(True, opened[0].figures(), records=records, payload_bytes=records * size)


def e2e_py_paired(
    bootstrap: str, direct_bootstrap: str, topic: str, records: int, size: int
) -> LoadResult:
    """e2e-py through the path and straight to the broker at once, in alternating blocks of
    `PAIRED_BLOCK` round trips: the same moments of the machine for both, so the path's p99
    can be read against a direct p99 of the same seconds. Between runs, or even repetitions,
    a 2-core machine's bursts move a p99 by 2x either way; within one run they hit both."""
    sides = [(bootstrap, topic), (direct_bootstrap, twin_topic(topic))]
    opened, error = _time_round_trips(sides, records, size)
    if error:
        return LoadResult(False, error=error)
    through, direct = opened
    values = through.figures()
    twin = direct.figures()
    values["lat_direct_p50_ms"] = twin["lat_p50_ms"]
    values["lat_direct_p99_ms"] = twin["lat_p99_ms"]
    values["lat_p50_added_to_direct_ms"] = values["lat_p50_ms"] - twin["lat_p50_ms"]
    values["lat_p99_to_direct"] = values["lat_p99_ms"] / twin["lat_p99_ms"]
    return LoadResult(True, values, records=records, payload_bytes=records * size)


def run_load(
    load: Load, bootstrap: str, topic: str, records: int, log: Path, direct_bootstrap: str = ""
) -> LoadResult:
    """Run `load` once; wall time covers the whole run, including any JVM start-up. A paired
    load also runs straight to the broker at `direct_bootstrap`, on `twin_topic(topic)`."""
    began = time.monotonic()
    if load.kind == "producer-perf":
        result = producer_perf(bootstrap, topic, records, load.record_size, load.compression, log)
    elif load.kind == "consumer-perf":
        result = consumer_perf(bootstrap, topic, records, load.record_size, log)
    elif load.kind == "e2e-java":
        result = e2e_java(bootstrap, topic, records, load.record_size, log)
    elif load.kind == "e2e-py":
        result = e2e_py(bootstrap, topic, records, load.record_size)
    elif load.kind == "e2e-py-paired":
        result = e2e_py_paired(bootstrap, direct_bootstrap, topic, records, load.record_size)
    elif load.kind == "produce-py":
        result = produce_py(bootstrap, topic, records, load.record_size)
    else:
        raise ValueError(f"unknown load kind {load.kind!r}")
    result.wall_seconds = time.monotonic() - began
    return result
