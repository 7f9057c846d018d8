"""A span pipeline for exchange tests: it keeps the finished spans in a list, with no thread; and
the fields two runs' spans are compared by."""

from __future__ import annotations

from typing import Any

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


def span_fields(span: ReadableSpan, *, times: bool = True) -> tuple[Any, ...]:
    """What a span says, for comparing two runs: names, ids, parent, status, attributes, the
    number of links, and (with `times`) start and end."""
    assert span.context is not None
    parent = None if span.parent is None else (span.parent.trace_id, span.parent.span_id)
    return (
        span.name,
        span.kind,
        span.context.trace_id,
        span.context.span_id,
        parent,
        span.status.status_code,
        (span.start_time, span.end_time) if times else None,
        sorted((span.attributes or {}).items()),
        len(span.links),
    )
