"""Span export never blocks the caller: a full queue drops (and counts), a failing exporter too."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from proxy.metrics import Metrics
from proxy.tracing.export import ExportConfigError, SpanPipeline, make_exporter
from testbed.collector import StubCollector


class StuckExporter(SpanExporter):
    """A collector that takes forever: export blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


class FailingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionRefusedError("collector down")

    def shutdown(self) -> None:
        pass


def test_submit_never_blocks_and_counts_drops_when_the_collector_is_stuck() -> None:
    exporter, metrics = StuckExporter(), Metrics()
    pipeline = SpanPipeline(exporter, metrics, max_queue=100, batch_size=10, delay_seconds=0.01)
    span = ReadableSpan("s")
    started = time.perf_counter()
    for _ in range(10_000):
        pipeline.submit(span)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert metrics.value("spans_dropped", reason="queue_full") >= 10_000 - 110
    exporter.release.set()
    pipeline.shutdown()


def test_exporter_failures_are_counted_not_raised() -> None:
    metrics = Metrics()
    pipeline = SpanPipeline(FailingExporter(), metrics, batch_size=5, delay_seconds=0.01)
    for _ in range(12):
        pipeline.submit(ReadableSpan("s"))
    pipeline.shutdown()
    assert metrics.value("spans_dropped", reason="export_failed") == 12
    assert metrics.total("spans_exported") == 0


def test_shutdown_flushes_queued_spans() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, metrics = InMemorySpanExporter(), Metrics()
    pipeline = SpanPipeline(exporter, metrics, delay_seconds=60)
    for _ in range(7):
        pipeline.submit(ReadableSpan("s"))
    pipeline.shutdown()
    assert len(exporter.get_finished_spans()) == 7
    assert metrics.value("spans_exported") == 7


def test_every_full_batch_is_sent_without_waiting_for_the_schedule_delay() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, metrics = InMemorySpanExporter(), Metrics()
    pipeline = SpanPipeline(exporter, metrics, max_queue=1000, batch_size=10, delay_seconds=60)
    try:
        for round_ in range(1, 6):
            # Spans arrive faster than the worker takes them; each full batch must wake it.
            for _ in range(25):
                pipeline.submit(ReadableSpan("s"))
            deadline = time.monotonic() + 5
            while metrics.total("spans_exported") < 20 * round_ and time.monotonic() < deadline:
                time.sleep(0.005)
            assert metrics.total("spans_exported") >= 20 * round_, f"round {round_} stalled"
    finally:
        pipeline.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "carrier-pigeon"}, "OTEL_TRACES_EXPORTER='carrier-pigeon'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
    ],
)
def test_bad_exporter_settings_name_the_variable(env: dict, message: str) -> None:
    with pytest.raises(ExportConfigError, match=message):
        make_exporter(env)


def test_bad_queue_size_names_the_variable() -> None:
    with pytest.raises(ExportConfigError, match="OTEL_BSP_MAX_QUEUE_SIZE='-1'"):
        SpanPipeline.from_env(
            {"OTEL_BSP_MAX_QUEUE_SIZE": "-1", "OTEL_TRACES_EXPORTER": "none"}, Metrics()
        )


def test_none_exporter_disables_export() -> None:
    assert make_exporter({"OTEL_TRACES_EXPORTER": "none"}) is None


def test_zipkin_and_both_otlp_protocols_are_available() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
    from opentelemetry.exporter.zipkin.json import ZipkinExporter

    assert isinstance(make_exporter({"OTEL_TRACES_EXPORTER": "zipkin"}), ZipkinExporter)
    assert isinstance(make_exporter({}), Http)
    assert isinstance(make_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), Grpc)
    assert isinstance(
        make_exporter(
            {
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            }
        ),
        Grpc,
    )


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_otlp_http_export_sends_what_the_sdk_encoder_would_with_the_standard_settings(
    monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    import gzip

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanKind

    from proxy.tracing.spans import finished_span

    with StubCollector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.traces_url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
        exporter = make_exporter({})
        assert type(exporter).__name__ == "FastOtlpHttpExporter"  # our encoder, not the SDK's
        spans = [
            finished_span(
                name="send orders",
                kind=SpanKind.PRODUCER,
                trace_id=1000 + i,
                span_id=7 + i,
                parent=None,
                start_ns=1_700_000_000_000_000_000,
                end_ns=1_700_000_000_000_500_000,
                attributes={"messaging.system": "kafka", "messaging.kafka.offset": i},
                resource=Resource.create({"service.name": "orders"}),
            )
            for i in range(50)
        ]
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
    ((path, headers, body),) = collector.received
    assert path == "/v1/traces" and headers["x-tenant"] == "blue"
    if compression == "gzip":
        assert headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)
