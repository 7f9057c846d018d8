"""Span export that never blocks traffic: a bounded queue drained by one worker thread.

`submit` never waits: when the queue is full (collector slow or down) the span is dropped and
counted. The worker sends batches with the exporter chosen by the standard variables
(`OTEL_TRACES_EXPORTER`: otlp, zipkin, console, none; `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`:
http/protobuf or grpc; endpoints, headers and certificates are read by the exporters themselves).
Queue and batch sizes follow `OTEL_BSP_*`. Both OTLP exporters send requests written by the
proxy's own encoder (`otlp_encoding`), so they also take spans already in wire form.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..metrics import Metrics
from .otlp_encoding import EncodedSpans

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "zipkin", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")


class ExportConfigError(ValueError):
    pass


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ExportConfigError(f"{name}={raw!r} is invalid: expected a positive integer") from None
    return value


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol the standard variables ask for (traces-specific one first)."""
    protocol = (
        (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        .strip()
        .lower()
    )
    if protocol not in PROTOCOLS:
        raise ExportConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is invalid: expected one of "
            f"{', '.join(PROTOCOLS)}"
        )
    return protocol


def make_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    """The exporter named by OTEL_TRACES_EXPORTER (None for `none`)."""
    name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if "," in name:
        name = name.split(",", 1)[0].strip()
    if name not in EXPORTERS:
        raise ExportConfigError(
            f"OTEL_TRACES_EXPORTER={name!r} is invalid: expected one of {', '.join(EXPORTERS)}"
        )
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter()
    protocol = otlp_protocol(env)
    if protocol == "grpc":
        return _fast_grpc_exporter()
    return _fast_http_exporter()


def _fast_http_exporter() -> SpanExporter:
    """The SDK's OTLP/HTTP exporter, serialising with our own encoder.

    The exporter keeps everything users configure through `OTEL_EXPORTER_OTLP_*` (endpoint,
    headers, compression, timeout, certificates, retries); only the protobuf encoding, which
    costs about 33 µs per span in the SDK (1.45), is replaced (`otlp_encoding`, a tenth of
    that). If a
    future SDK release no longer has the client this relies on, the stock path is used.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    from .otlp_encoding import encode_export_request

    class FastOtlpHttpExporter(Http):
        @property
        def takes_encoded_spans(self) -> bool:
            """`EncodedSpans` may be queued for it (`SpanPipeline.takes_encoded_spans`) when
            it sends through its own encoder, not the stock one."""
            return hasattr(getattr(self, "_client", None), "export")

        def export(self, spans: Any) -> SpanExportResult:
            client = getattr(self, "_client", None)
            if client is None or not hasattr(client, "export") or getattr(self, "_shutdown", 0):
                return super().export(spans)
            result = client.export(encode_export_request(spans))
            return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    return FastOtlpHttpExporter()


#: The OTLP trace service's one method, called with request bytes the proxy encoded itself.
_GRPC_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _fast_grpc_exporter() -> SpanExporter:
    """The SDK's OTLP/gRPC exporter, sending requests our own encoder wrote.

    As `_fast_http_exporter`: the exporter keeps what users configure (endpoint, headers,
    certificates, compression, timeout, retries and reconnection); only the request is written
    by `otlp_encoding` and sent as bytes, through the same channel, instead of being built as
    protobuf messages by the SDK's encoder. If a future SDK release no longer makes its client
    where this expects, the stock exporter is used.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    from .otlp_encoding import encode_export_request

    if not callable(getattr(Grpc, "_initialize_channel_and_stub", None)):
        return Grpc()

    class FastOtlpGrpcExporter(Grpc):
        @property
        def takes_encoded_spans(self) -> bool:
            """`EncodedSpans` may be queued for it (`SpanPipeline.takes_encoded_spans`) when
            it sends through its bytes client, not the stock stub."""
            return type(getattr(self, "_client", None)) is _BytesTraceClient

        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()
            channel = getattr(self, "_channel", None)
            if channel is not None:
                # A client whose Export sends bytes as they are (no serializer).
                self._client = _BytesTraceClient(channel.unary_unary(_GRPC_EXPORT))

        def _translate_data(self, data: Any) -> bytes:  # type: ignore[override]
            return encode_export_request(data)

        def _count_data(self, data: Any) -> int:
            return sum(item.count if type(item) is EncodedSpans else 1 for item in data)

    return FastOtlpGrpcExporter()


class _BytesTraceClient:
    """The trace service's client as the SDK's exporter calls it, for encoded requests."""

    def __init__(self, export: Any) -> None:
        self.Export = export


class SpanPipeline:
    """Bounded, asynchronous span export with drop counting.

    The queue holds SDK spans and, for an exporter that takes them, `EncodedSpans` (several
    spans in wire form): its bound and the batch size count spans. An `EncodedSpans` is never
    split, so a batch may exceed the batch size by what one of them holds beyond it.
    """

    def __init__(
        self,
        exporter: SpanExporter | None,
        metrics: Metrics,
        *,
        max_queue: int = 2048,
        batch_size: int = 512,
        delay_seconds: float = 5.0,
    ) -> None:
        self._exporter = exporter
        self._metrics = metrics
        self._max_queue = max_queue
        self._batch_size = min(batch_size, max_queue)
        self._delay = delay_seconds
        self._queue: collections.deque[ReadableSpan | EncodedSpans] = collections.deque()
        # Spans queued = submitted - taken; each count is written by one thread only.
        self._submitted = self._taken = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        if exporter is not None:
            self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
            self._thread.start()

    @classmethod
    def from_env(cls, env: Mapping[str, str], metrics: Metrics) -> SpanPipeline:
        return cls(
            make_exporter(env),
            metrics,
            max_queue=_int(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
            batch_size=_int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
            delay_seconds=_int(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
        )

    @property
    def enabled(self) -> bool:
        return self._exporter is not None

    @property
    def takes_encoded_spans(self) -> bool:
        """Whether `submit_encoded` may be used: the exporter is one of the OTLP ones, whose
        encoder joins spans already in wire form."""
        return bool(getattr(self._exporter, "takes_encoded_spans", False))

    def submit(self, span: ReadableSpan) -> None:
        """Queue a finished span; drop it (counted) if the queue is full. Never blocks."""
        if self._exporter is None or self._stopping:
            return
        if self._submitted - self._taken >= self._max_queue:
            self._metrics.inc("spans_dropped", reason="queue_full")
            return
        self._queue.append(span)
        self._submitted += 1
        self._wake_when_full()

    def submit_encoded(self, spans: EncodedSpans) -> None:
        """Queue spans already in wire form (only if `takes_encoded_spans`); drop them all
        (counted) if they do not fit in the queue. Never blocks."""
        if self._exporter is None or self._stopping:
            return
        if self._submitted - self._taken + spans.count > self._max_queue:
            self._metrics.inc("spans_dropped", spans.count, reason="queue_full")
            return
        self._queue.append(spans)
        self._submitted += spans.count
        self._wake_when_full()

    def _wake_when_full(self) -> None:
        if self._submitted - self._taken >= self._batch_size and not self._wake.is_set():
            # Set once per full batch, not for every span the worker has not taken yet: a set
            # takes the event's lock and notifies, about 1.5 µs a span at 100% sampling.
            self._wake.set()

    def _take_batch(self) -> tuple[list[ReadableSpan | EncodedSpans], int]:
        """Queued items up to the batch size in spans (at least one item), and their spans."""
        batch: list[ReadableSpan | EncodedSpans] = []
        spans = 0
        queue = self._queue
        while queue and spans < self._batch_size:
            item = queue[0]
            count = item.count if type(item) is EncodedSpans else 1
            if batch and spans + count > self._batch_size:
                break
            batch.append(queue.popleft())
            spans += count
        self._taken += spans
        return batch, spans

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            while True:
                batch, spans = self._take_batch()
                if not batch:
                    break
                self._export(batch, spans)
                if self._submitted - self._taken < self._batch_size and not self._stopping:
                    break
            if self._stopping and not self._queue:
                return

    def _export(self, batch: list[ReadableSpan | EncodedSpans], spans: int) -> None:
        assert self._exporter is not None
        started = time.monotonic()
        try:
            result: Any = self._exporter.export(batch)
        except Exception as exc:  # an exporter bug must not kill the worker
            log.warning("span export failed: %s", exc)
            result = SpanExportResult.FAILURE
        if result == SpanExportResult.SUCCESS:
            self._metrics.inc("spans_exported", spans)
        else:
            self._metrics.inc("spans_dropped", spans, reason="export_failed")
        self._metrics.inc("span_export_seconds", time.monotonic() - started)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by `timeout`), then stop the exporter."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            dropped = self._submitted - self._taken
            self._queue.clear()
            self._metrics.inc("spans_dropped", dropped, reason="shutdown")
        assert self._exporter is not None
        self._exporter.shutdown()
        self._thread = None
