"""Building finished spans directly, without the SDK's tracer machinery.

The proxy knows a span's whole life when it records it (start at the request, end at the
response), and has already made the sampling decision, so it creates the SDK's `ReadableSpan`
objects itself and hands them to the export pipeline: no context variables, no locks, no span
processors on the hot path. Attribute names come from the semantic-conventions package.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

try:
    _VERSION = version("kafka-trace-proxy")
except PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"

SCOPE = InstrumentationScope("kafka-trace-proxy", _VERSION)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)


def new_trace_id() -> int:
    while not (trace_id := random.getrandbits(128)):
        pass
    return trace_id


def new_span_id() -> int:
    while not (span_id := random.getrandbits(64)):
        pass
    return span_id


def printable_key(key: bytes | None, limit: int = 64) -> str | None:
    """A record key worth showing as an attribute: short UTF-8 text, else None."""
    if key is None or len(key) > limit:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def finished_span(
    *,
    name: str,
    kind: SpanKind,
    trace_id: int,
    span_id: int,
    parent: SpanContext | None,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, str | int | bool],
    resource: Resource,
    error: str | None = None,
    links: Sequence[Link] = (),
) -> ReadableSpan:
    status = Status(StatusCode.ERROR, error) if error else _OK
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED),
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=kind,
        status=status,
        start_time=start_ns,
        end_time=max(end_ns, start_ns),
        instrumentation_scope=SCOPE,
        links=links,
    )
