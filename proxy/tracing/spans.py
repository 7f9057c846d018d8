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
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

try:
    _VERSION = version("kafka-trace-proxy")
except PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"

SCOPE = InstrumentationScope("kafka-trace-proxy", _VERSION)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(0)
_OK = Status(StatusCode.UNSET)
_TRACE_ID_LIMIT = 1 << 128
_SPAN_ID_LIMIT = 1 << 64


def new_trace_id() -> int:
    while not (trace_id := random.getrandbits(128)):
        pass
    return trace_id


def new_span_id() -> int:
    while not (span_id := random.getrandbits(64)):
        pass
    return span_id


#: The longest key shown as an attribute.
KEY_LIMIT = 64


def printable_key(key: bytes | None, limit: int = KEY_LIMIT) -> str | None:
    """A record key worth showing as an attribute: short UTF-8 text, else None."""
    if key is None or len(key) > limit:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def span_context(trace_id: int, span_id: int, *, remote: bool, sampled: bool) -> SpanContext:
    """`SpanContext(trace_id, span_id, remote, flags)`, built as the tuple it is: the SDK's
    constructor, a keyword call that checks its arguments, was a twentieth of a sampled record's
    cost. The SDK's own constructor is used if its layout ever changes (`_DIRECT`)."""
    flags = _SAMPLED if sampled else _UNSAMPLED
    if not _DIRECT:
        return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=flags)
    valid = 0 < trace_id < _TRACE_ID_LIMIT and 0 < span_id < _SPAN_ID_LIMIT
    return _new_tuple(SpanContext, (trace_id, span_id, remote, flags, DEFAULT_TRACE_STATE, valid))


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
    context = span_context(trace_id, span_id, remote=False, sampled=True)
    if not _DIRECT:
        return ReadableSpan(
            name=name,
            context=context,
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
    # The fields `ReadableSpan.__init__` sets, set at once: half the cost of the keyword call.
    span = _new_object(ReadableSpan)
    span.__dict__ = {
        "_name": name,
        "_context": context,
        "_kind": kind,
        "_instrumentation_info": None,
        "_instrumentation_scope": SCOPE,
        "_parent": parent,
        "_start_time": start_ns,
        "_end_time": max(end_ns, start_ns),
        "_attributes": attributes,
        "_events": (),
        "_links": links,
        "_resource": resource,
        "_status": status,
    }
    return span


_new_tuple = tuple.__new__
_new_object = object.__new__
_DIRECT = False


def _direct_construction_works() -> bool:
    """Whether the direct builds above give what the SDK's constructors give (an SDK release
    may add or rename fields: then the constructors are used)."""
    global _DIRECT
    was = _DIRECT
    fields = {
        "name": "probe",
        "kind": SpanKind.CONSUMER,
        "trace_id": 0x1234,
        "span_id": 0x78,
        "parent": SpanContext(0x1234, 0x56, is_remote=True, trace_flags=_UNSAMPLED),
        "start_ns": 7,
        "end_ns": 9,
        "attributes": {"a": 1},
        "resource": Resource({}),
    }
    try:
        _DIRECT = False
        built = finished_span(**fields)
        _DIRECT = True
        direct = finished_span(**fields)
        direct_parent = span_context(0x1234, 0x56, remote=True, sampled=False)
    except Exception:  # any surprise: keep the constructors
        return False
    finally:
        _DIRECT = was
    return (
        direct_parent == fields["parent"]
        and type(direct_parent) is SpanContext
        and type(direct) is type(built)
        and vars(direct) == vars(built)
    )


_DIRECT = _direct_construction_works()
