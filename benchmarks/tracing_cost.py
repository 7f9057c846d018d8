"""What tracing costs per record, in-process and without a broker: sampled vs unsampled.

Runs the real produce and fetch interceptors over a real record batch (160 records of 1 KiB,
built by kafka-python's producer code) and reports µs per record for: header injection with
sampled records (send spans built), with unsampled records (context only, no span objects), and
the fetch side (context extraction + receive spans). Span export goes to a counting no-op
exporter, so the figures are the proxy's own CPU, not the collector's.

    .venv/bin/python -m benchmarks.tracing_cost
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from proxy.codec.records import iter_batches
from proxy.interceptors import (
    BrokerEndpoint,
    ConnectionContext,
    FetchedPartition,
    ProducePartition,
    ProduceResult,
)
from proxy.metrics import Metrics
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.core import TracingCore
from proxy.tracing.export import SpanPipeline
from proxy.tracing.producer import ProduceTracer
from proxy.tracing.propagation import Propagation
from proxy.tracing.sampling import sampler_from_env

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatchBuilder

RECORDS = 160


class CountingExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def batch(codec: int) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, 1 << 22)
    for i in range(RECORDS):
        builder.append(
            i,
            timestamp=1_700_000_000_000 + i,
            key=b"order-%d" % i,
            value=bytes(range(256)) * 4,
            headers=[],
        )
    return bytes(builder.build())


def core(ratio: str) -> tuple[TracingCore, CountingExporter, SpanPipeline]:
    exporter = CountingExporter()
    pipeline = SpanPipeline(exporter, Metrics(), max_queue=1 << 20, delay_seconds=0.05)
    return (
        TracingCore(
            sampler=sampler_from_env("parentbased_traceidratio", ratio),
            propagation=Propagation(["tracecontext", "baggage"]),
            pipeline=pipeline,
            resource=Resource.create({"service.name": "bench"}),
        ),
        exporter,
        pipeline,
    )


def per_record_us(action: Callable[[], object], seconds: float) -> float:
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        action()
        runs += 1
    return (time.perf_counter() - started) / runs / RECORDS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    ctx = ConnectionContext(
        1, ("127.0.0.1", 1), BrokerEndpoint(1, "broker", 9092), "bench", "group"
    )
    print(
        f"{'codec':<8}{'sampled':>12}{'unsampled':>12}{'fetch':>12}{'fetch-unsamp':>14}"
        "   µs per record"
    )
    for codec, name in enumerate(["none", "gzip", "snappy", "lz4", "zstd"]):
        raw = batch(codec)
        figures = []
        for ratio in ("1", "0"):
            tracing, _, pipeline = core(ratio)
            producer = ProduceTracer(tracing, Metrics())

            def produce(producer: ProduceTracer = producer, raw: bytes = raw) -> None:
                partition = ProducePartition("t", None, 0, -1, None, raw)
                state = producer.on_produce_request(ctx, partition)
                producer.on_produce_response(ctx, state, ProduceResult("t", 0, 0, None, 0, None))

            figures.append(per_record_us(produce, args.seconds))
            pipeline.shutdown()
        tracing, _, pipeline = core("1")
        traced = ProducePartition("t", None, 0, -1, None, raw)
        ProduceTracer(tracing, Metrics()).on_produce_request(ctx, traced)
        assert traced.replaced_records is not None
        fetched = FetchedPartition("t", None, 0, 0, 0, traced.replaced_records, ())
        consumer = FetchTracer(tracing, Metrics())

        def fetch(consumer: FetchTracer = consumer, fetched: FetchedPartition = fetched) -> None:
            consumer.on_fetch_response(ctx, fetched)

        figures.append(per_record_us(fetch, args.seconds))
        pipeline.shutdown()
        unsampled_core, _, pipeline = core("0")
        quiet = ProducePartition("t", None, 0, -1, None, raw)
        ProduceTracer(unsampled_core, Metrics()).on_produce_request(ctx, quiet)
        assert quiet.replaced_records is not None
        skimmer = FetchTracer(unsampled_core, Metrics())
        quiet_fetch = FetchedPartition("t", None, 0, 0, 0, quiet.replaced_records, ())

        def skim(consumer: FetchTracer = skimmer, fetched: FetchedPartition = quiet_fetch) -> None:
            consumer.on_fetch_response(ctx, fetched)

        figures.append(per_record_us(skim, args.seconds))
        pipeline.shutdown()
        assert sum(1 for _ in iter_batches(traced.replaced_records)) == 1
        print(f"{name:<8}" + "".join(f"{f:>12.2f}" for f in figures[:3]) + f"{figures[3]:>14.2f}")
    tracing, exporter, pipeline = core("1")
    producer = ProduceTracer(tracing, Metrics())
    raw = batch(0)
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        partition = ProducePartition("t", None, 0, -1, None, raw)
        producer.on_produce_response(
            ctx,
            producer.on_produce_request(ctx, partition),
            ProduceResult("t", 0, 0, None, 0, None),
        )
    pipeline.shutdown(timeout=60)
    elapsed = time.perf_counter() - started
    print(
        f"sampled send spans built and handed to the exporter: {exporter.count / elapsed:,.0f}/s "
        "(one core, export to a no-op exporter)"
    )


if __name__ == "__main__":
    main()
