"""A span pipeline for exchange tests: it keeps the finished spans in a list, with no thread."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan

from proxy.metrics import Metrics
from proxy.tracing.export import SpanPipeline


class CollectedSpans(SpanPipeline):
    """Every finished span, in the order it was submitted (no exporter thread, nothing dropped)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(None, metrics)
        self.spans: list[ReadableSpan] = []

    def submit(self, span: ReadableSpan) -> None:
        self.spans.append(span)
