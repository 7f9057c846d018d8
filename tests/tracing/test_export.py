"""Span export never blocks the caller: a full queue drops (and counts), a failing exporter too."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from proxy.metrics import Metrics
from proxy.tracing.export import ExportConfigError, SpanPipeline, make_exporter
from proxy.tracing.otlp_encoding import EncodedSpans, encode_export_request
from testbed.collector import StubCollector
from tests.tracing.test_receive_spans import KeepingExporter


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


def encoded(count: int) -> EncodedSpans:
    return EncodedSpans(Resource.create({}), None, b"\x12\x00" * count, count)


def test_encoded_spans_count_as_the_spans_they_hold() -> None:
    """The queue's bound and the counters are in spans: an `EncodedSpans` of a partition's 300
    spans is 300 of them, kept whole or dropped whole."""
    exporter, metrics = KeepingExporter(takes_encoded=True), Metrics()
    # The batch size is the whole queue, so the worker sleeps until the queue is full.
    pipeline = SpanPipeline(exporter, metrics, max_queue=1000, batch_size=1000, delay_seconds=60)
    assert pipeline.takes_encoded_spans
    for _ in range(3):
        pipeline.submit_encoded(encoded(300))
    pipeline.submit_encoded(encoded(300))  # 1200 > 1000: dropped whole
    pipeline.submit(ReadableSpan("s"))
    pipeline.submit_encoded(encoded(98))
    pipeline.submit_encoded(encoded(2))  # 1001 > 1000: dropped whole
    pipeline.submit(ReadableSpan("s"))  # 1000: full, the worker wakes
    pipeline.shutdown()
    assert metrics.value("spans_dropped", reason="queue_full") == 302
    assert metrics.value("spans_exported") == 1000
    assert [len(batch) for batch in exporter.batches] == [6]


def test_a_batch_is_whole_items_up_to_the_batch_size_in_spans() -> None:
    pipeline = SpanPipeline(
        KeepingExporter(takes_encoded=True), Metrics(), batch_size=400, delay_seconds=60
    )
    items = [encoded(300), ReadableSpan("s"), encoded(99), encoded(500), encoded(2)]
    pipeline._queue.extend(items)  # as `submit` leaves them, without waking the worker
    taken = []
    while (batch := pipeline._take_batch())[0]:
        taken.append(batch)
    pipeline.shutdown()
    # One item alone may exceed the batch size; items are never split.
    assert [spans for _, spans in taken] == [400, 500, 2]
    assert [items for items, _ in taken] == [items[:3], items[3:4], items[4:]]


def test_only_an_exporter_that_takes_encoded_spans_is_offered_them() -> None:
    assert not SpanPipeline(FailingExporter(), Metrics(), delay_seconds=60).takes_encoded_spans
    assert not SpanPipeline(None, Metrics()).takes_encoded_spans
    for protocol in ("http/protobuf", "grpc"):
        exporter = make_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": protocol})
        assert getattr(exporter, "takes_encoded_spans", False), protocol
    for other in ("zipkin", "console"):
        exporter = make_exporter({"OTEL_TRACES_EXPORTER": other})
        assert not getattr(exporter, "takes_encoded_spans", False), other


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

    with StubCollector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.traces_url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
        exporter = make_exporter({})
        assert type(exporter).__name__ == "FastOtlpHttpExporter"  # our encoder, not the SDK's
        spans = fifty_spans(
            "send orders", SpanKind.PRODUCER, Resource.create({"service.name": "orders"})
        )
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
    ((path, headers, body),) = collector.received
    assert path == "/v1/traces" and headers["x-tenant"] == "blue"
    if compression == "gzip":
        assert headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_otlp_grpc_export_sends_what_the_sdk_encoder_would_with_the_standard_settings(
    monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    """The gRPC exporter sends the request our encoder wrote, spans in wire form included,
    through the SDK's channel: with its headers, its compression, to its endpoint."""
    from concurrent import futures

    import grpc
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.trace import SpanKind

    from proxy.tracing.spans import SCOPE

    received: list[tuple[bytes, dict[str, str]]] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append((request, dict(context.invocation_metadata())))
        return b""  # an empty ExportTraceServiceResponse

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {"Export": grpc.unary_unary_rpc_method_handler(export)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue")
        if compression is not None:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
        exporter = make_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        assert type(exporter).__name__ == "FastOtlpGrpcExporter"
        resource = Resource.create({"service.name": "billing"})
        spans = fifty_spans("receive orders", SpanKind.CONSUMER, resource)
        # The last 20 as the consumer queues them: already in wire form.
        wire = encode_export_request(spans[30:])
        fields = ExportTraceServiceRequest.FromString(wire).resource_spans[0].scope_spans[0]
        encoded = EncodedSpans(
            resource, SCOPE, b"".join(_span_field(span) for span in fields.spans), 20
        )
        assert exporter.export([*spans[:30], encoded]) == SpanExportResult.SUCCESS
        exporter.shutdown()
    finally:
        server.stop(None)
    ((body, metadata),) = received
    assert metadata["x-tenant"] == "blue"
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)


def _span_field(span: object) -> bytes:
    """ScopeSpans.spans (2) of a decoded span message."""
    from proxy.tracing.otlp_encoding import span_field

    return span_field(span.SerializeToString())  # type: ignore[attr-defined]


def fifty_spans(name: str, kind: SpanKind, resource: Resource) -> list[ReadableSpan]:
    """Spans as the proxy makes them: one topic, offsets 0 to 49."""
    from proxy.tracing.spans import finished_span

    return [
        finished_span(
            name=name,
            kind=kind,
            trace_id=1000 + i,
            span_id=7 + i,
            parent=None,
            start_ns=1_700_000_000_000_000_000,
            end_ns=1_700_000_000_000_500_000,
            attributes={"messaging.system": "kafka", "messaging.kafka.offset": i},
            resource=resource,
        )
        for i in range(50)
    ]
