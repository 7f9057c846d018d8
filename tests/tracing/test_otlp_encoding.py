"""The hand-written OTLP encoder gives what the stock OpenTelemetry encoder gives.

Every case compares the parsed messages, and the bytes too: both write fields in field-number
order with proto3 defaults omitted and no map fields, so they agree byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from proxy.tracing import otlp_encoding
from proxy.tracing.otlp_encoding import (
    ENTRY_CACHE_LIMIT,
    HEADER_CACHE_LIMIT,
    NAME_CACHE_LIMIT,
    cache_sizes,
    encode_export_request,
)
from proxy.tracing.spans import SCOPE, finished_span

RESOURCE = Resource.create({"service.name": "test", "service.instance.id": "i-1"})
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
REMOTE_PARENT = SpanContext(0xA1B2C3D4E5F60718293A4B5C6D7E8F90, 0x1122334455667788, True, SAMPLED)
LOCAL_PARENT = SpanContext(0xA1B2C3D4E5F60718293A4B5C6D7E8F90, 0x0102030405060708, False, SAMPLED)
START = 1_700_000_000_123_456_789


def stock_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializePartialToString()


def assert_same(spans: Sequence[ReadableSpan]) -> None:
    """Parsed equality with the stock encoder, then byte equality."""
    ours = encode_export_request(spans)
    assert ExportTraceServiceRequest.FromString(ours) == encode_spans(spans)
    assert ours == stock_bytes(spans)


def span(
    attributes: Mapping[str, Any] | None = None,
    *,
    name: str = "orders publish",
    kind: SpanKind = SpanKind.PRODUCER,
    parent: SpanContext | None = REMOTE_PARENT,
    trace_id: int = 0xA1B2C3D4E5F60718293A4B5C6D7E8F90,
    span_id: int = 0x0A0B0C0D0E0F1011,
    trace_state: TraceState | None = None,
    status: Status | None = None,
    events: Sequence[Event] = (),
    links: Sequence[Link] = (),
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    start: int | None = START,
    end: int | None = START + 250_000,
) -> ReadableSpan:
    """A finished span, built the way the proxy builds them (ReadableSpan directly)."""
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, False, SAMPLED, trace_state),
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=kind,
        status=status if status is not None else Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


def producer_attributes(offset: int) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": str(offset % 12),
        "server.address": "broker-1.kafka.svc",
        "server.port": 9092,
        "messaging.client.id": "checkout",
        "messaging.kafka.offset": offset,
    }


# -- fixed cases ---------------------------------------------------------------------------------


def test_empty_batch_is_empty_bytes() -> None:
    assert encode_export_request([]) == b"" == stock_bytes([])


def test_typical_proxy_spans() -> None:
    producer = finished_span(
        name="orders publish",
        kind=SpanKind.PRODUCER,
        trace_id=REMOTE_PARENT.trace_id,
        span_id=0x5555,
        parent=REMOTE_PARENT,
        start_ns=START,
        end_ns=START + 1000,
        attributes=producer_attributes(42),
        resource=RESOURCE,
    )
    links = [
        Link(
            SpanContext(i + 1, i + 100, True, SAMPLED),
            {"messaging.kafka.offset": i} if i % 2 else None,
        )
        for i in range(128)
    ]
    consumer = finished_span(
        name="orders receive",
        kind=SpanKind.CONSUMER,
        trace_id=0x77,
        span_id=0x88,
        parent=None,
        start_ns=START,
        end_ns=START - 5,  # clamped to the start
        attributes={
            **producer_attributes(43),
            "messaging.kafka.message.key": "order-43",
            "ktp.record.age_ms": 17,
            "ktp.redelivered": True,
        },
        resource=RESOURCE,
        links=links,
    )
    failed = finished_span(
        name="orders publish",
        kind=SpanKind.PRODUCER,
        trace_id=0x99,
        span_id=0xAA,
        parent=LOCAL_PARENT,
        start_ns=START,
        end_ns=START + 3,
        attributes={**producer_attributes(-1), "error.type": "NOT_LEADER_OR_FOLLOWER"},
        resource=RESOURCE,
        error="NOT_LEADER_OR_FOLLOWER: broker 2 is not the leader",
    )
    assert_same([producer, consumer, failed])


@pytest.mark.parametrize(
    "value",
    [
        "kafka",
        "",
        "zażółć gęślą jaźń 🚀",
        "x" * 300,
        True,
        False,
        0,
        1,
        -1,
        127,
        128,
        -(2**63),
        2**63 - 1,
        2**31,
        0.0,
        -0.0,
        1.5,
        -2.25e300,
        math.inf,
        b"",
        b"\x00\xff\x80",
        (),
        ("a", "", "ü"),
        [1, -2, 2**63 - 1],
        (True, False),
        (1.5, -0.0),
        (b"a", b""),
        ("mixed", 1, True, 2.5, None),
        None,
        {"nested": {"deep": [1, "two"]}, "n": 3},
    ],
    ids=repr,
)
def test_each_attribute_value_type(value: Any) -> None:
    assert_same([span({"k": value}), span({"k": value, "other": "x"})])


def test_attribute_values_that_look_alike_stay_apart() -> None:
    """1, True and 1.0 are equal in Python; the cache must not hand one the other's bytes."""
    batch = [span({"k": value}) for value in (1, True, 1.0, 0, False, 0.0, -0.0, "1", b"1")]
    assert_same(batch + batch)


def test_nan_matches_byte_for_byte() -> None:
    # nan != nan, so the parsed messages can never compare equal: only bytes are compared.
    batch = [span({"nan": math.nan, "list": (math.nan, 1.0)})]
    assert encode_export_request(batch) == stock_bytes(batch)


def test_empty_key_and_unencodable_values_are_skipped_like_stock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attributes = {
        "": "empty key",
        "too big": 2**63,
        "too small": -(2**63) - 1,
        "big in a list": (1, 2**64),
        "object": object(),
        "surrogate": "\ud800",
        "fine": "yes",
    }
    assert_same([span(attributes)])
    assert "Failed to encode key too big" in caplog.text


def test_parents_and_span_fields() -> None:
    batch = [
        span(parent=None),
        span(parent=REMOTE_PARENT),
        span(parent=LOCAL_PARENT),
        span(trace_state=TraceState([("vendor", "a=1"), ("other", "b")])),
        span(name=""),
        span(name="ünïcode name ✓"),
        span(start=None, end=None),
        span(start=0, end=5),
        span(start=5, end=0),
        span(trace_id=1, span_id=1),
        span(trace_id=2**128 - 1, span_id=2**64 - 1),
        *(span(kind=kind) for kind in SpanKind),
    ]
    assert_same(batch)


def test_statuses() -> None:
    batch = [
        span(status=Status(StatusCode.UNSET)),
        span(status=Status(StatusCode.OK)),
        span(status=Status(StatusCode.ERROR)),
        span(status=Status(StatusCode.ERROR, "broker said no")),
        span(status=Status(StatusCode.ERROR, "")),
    ]
    assert_same(batch)


def test_events() -> None:
    events = [
        Event("retry", {"attempt": 2, "reason": "timeout"}, timestamp=START + 10),
        Event("bare", timestamp=START + 20),
        Event("", {}, timestamp=0),
    ]
    assert_same([span(events=events), span(events=events[:1])])


def test_links() -> None:
    links = [
        Link(SpanContext(0x10, 0x20, True, SAMPLED)),
        Link(SpanContext(0x11, 0x21, False, SAMPLED), {"messaging.kafka.offset": 7}),
        Link(SpanContext(0x12, 0x22, True, SAMPLED), {}),
        # The stock encoder writes no link trace_state; neither do we.
        Link(SpanContext(0x13, 0x23, True, SAMPLED, TraceState([("v", "1")])), {"a": "b"}),
        Link(SpanContext(0x14, 0x24, False, TraceFlags(0))),
    ]
    assert_same([span(links=links)])


def test_dropped_counts_of_bounded_containers() -> None:
    attributes = BoundedAttributes(maxlen=2, attributes={"a": 1, "b": 2, "c": 3, "d": 4})
    link_attributes = BoundedAttributes(maxlen=1, attributes={"x": 1, "y": 2})
    events = BoundedList(1)
    events.extend([Event("one", {"a": 1}, START), Event("two", None, START)])
    links = BoundedList(2)
    links.extend(
        [Link(SpanContext(i + 1, i + 1, True, SAMPLED), link_attributes) for i in range(5)]
    )
    event_attributes = BoundedAttributes(maxlen=1, attributes={"p": 1, "q": 2, "r": 3})
    batch = [
        span(attributes, events=events, links=links),
        span(events=[Event("bounded", event_attributes, START)]),
        span(BoundedAttributes(maxlen=0, attributes={"gone": 1})),
    ]
    assert_same(batch)


def test_resources_and_scopes_are_grouped_in_first_seen_order() -> None:
    other = Resource(
        {"service.name": "other"}, schema_url="https://opentelemetry.io/schemas/1.26.0"
    )
    same_as_resource = Resource.create({"service.name": "test", "service.instance.id": "i-1"})
    assert same_as_resource == RESOURCE and same_as_resource is not RESOURCE
    empty = Resource({})
    scope_a = InstrumentationScope("a", "1.0", "https://example.com/schema", {"team": "data"})
    scope_b = InstrumentationScope("b")
    scope_a_again = InstrumentationScope("a", "1.0", "https://example.com/schema", {"team": "data"})
    batch = [
        span(resource=RESOURCE, scope=scope_a),
        span(resource=other, scope=scope_b),
        span(resource=same_as_resource, scope=scope_a_again),
        span(resource=RESOURCE, scope=None),
        span(resource=other, scope=scope_a),
        span(resource=empty, scope=scope_b),
        span(resource=RESOURCE, scope=scope_b),
        span(resource=same_as_resource, scope=None),
        span(resource=other, scope=SCOPE),
    ]
    assert_same(batch)
    assert_same(batch[::-1])


def test_spans_from_the_sdk_tracer() -> None:
    """The exporter's copies (bounded containers) and the live SDK spans (a ReadableSpan
    subclass, read through the public properties rather than the fast field read)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("sdk-test", "2.0", attributes={"origin": "sdk"})
    with tracer.start_as_current_span("outer", kind=SpanKind.SERVER) as outer:
        outer.set_attributes({"a": 1, "b": (1, 2), "c": "x"})
        outer.add_event("started", {"n": 1})
        with tracer.start_as_current_span(
            "inner", links=[Link(REMOTE_PARENT, {"l": True})]
        ) as inner:
            pass
        outer.set_status(Status(StatusCode.ERROR, "failed"))
    provider.shutdown()
    copies = exporter.get_finished_spans()
    assert len(copies) == 2
    live = [inner, outer]
    assert all(type(item) is not ReadableSpan for item in live)
    assert_same(copies)
    assert_same(live)
    assert encode_export_request(live) == encode_export_request(copies)


def test_caches_give_the_same_bytes_when_warm() -> None:
    batch = [span(producer_attributes(offset)) for offset in range(50)]
    first = encode_export_request(batch)
    assert encode_export_request(batch) == first == stock_bytes(batch)


# -- caches stay bounded -------------------------------------------------------------------------


def test_caches_stay_bounded() -> None:
    """Unique values, keys, names, resources and scopes on every span: nothing grows unbounded."""
    limits = {
        "entries": ENTRY_CACHE_LIMIT,
        "keys": NAME_CACHE_LIMIT,
        "names": NAME_CACHE_LIMIT,
        "resources": HEADER_CACHE_LIMIT,
        "scopes": HEADER_CACHE_LIMIT,
    }

    def unique_span(n: int) -> ReadableSpan:
        attributes = {
            "str": f"value-{n}",
            "int": n,
            "bool": n % 2 == 0,
            f"key-{n}": "x",
            **producer_attributes(n),
        }
        resource = Resource({"n": n}) if n % 5 == 0 else RESOURCE
        scope = InstrumentationScope(f"scope-{n}") if n % 7 == 0 else SCOPE
        return span(attributes, name=f"name-{n}", resource=resource, scope=scope)

    def check() -> None:
        sizes = cache_sizes()
        assert all(sizes[name] <= limit for name, limit in limits.items()), sizes

    for start in range(0, 2 * ENTRY_CACHE_LIMIT, 400):
        batch = [unique_span(n) for n in range(start, start + 400)]
        ours = encode_export_request(batch)
        check()
    assert ours == stock_bytes(batch)
    for n in range(3 * ENTRY_CACHE_LIMIT, 3 * ENTRY_CACHE_LIMIT + 2 * NAME_CACHE_LIMIT):
        encode_export_request([unique_span(n)])
        check()


# -- property test -------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.one_of(
    st.text(max_size=12),
    st.booleans(),
    INT64,
    st.integers(),  # sometimes out of int64 range: skipped by both encoders
    st.floats(allow_nan=False),
    st.binary(max_size=12),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=6), max_size=4).map(tuple),
    st.lists(INT64, max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=4).map(tuple),
)
keys = st.one_of(st.sampled_from(["k", "server.port", "messaging.system", ""]), st.text(max_size=8))
attribute_dicts = st.dictionaries(keys, values, max_size=8)
contexts = st.builds(
    SpanContext,
    trace_id=st.integers(min_value=1, max_value=2**128 - 1),
    span_id=st.integers(min_value=1, max_value=2**64 - 1),
    is_remote=st.booleans(),
    trace_flags=st.just(SAMPLED),
    trace_state=st.one_of(
        st.none(),
        st.just(TraceState([("vendor", "value"), ("other", "x-1")])),
    ),
)
statuses = st.one_of(
    st.just(Status(StatusCode.UNSET)),
    st.just(Status(StatusCode.OK)),
    st.builds(Status, st.just(StatusCode.ERROR), st.one_of(st.none(), st.text(max_size=20))),
)
links = st.builds(Link, contexts, st.one_of(st.none(), attribute_dicts))
events = st.builds(
    Event, st.text(max_size=8), attribute_dicts, st.integers(min_value=0, max_value=2**64 - 1)
)
resources = st.sampled_from(
    [RESOURCE, Resource({"service.name": "b"}), Resource({}, schema_url="https://s/1")]
)
scopes = st.sampled_from([SCOPE, None, InstrumentationScope("x", None, "https://s/2", {"a": 1})])
spans = st.builds(
    ReadableSpan,
    name=st.text(max_size=16),
    context=contexts,
    parent=st.one_of(st.none(), contexts),
    resource=resources,
    attributes=attribute_dicts,
    events=st.lists(events, max_size=2),
    links=st.lists(links, max_size=3),
    kind=st.sampled_from(list(SpanKind)),
    status=statuses,
    start_time=st.integers(min_value=0, max_value=2**64 - 1),
    end_time=st.integers(min_value=0, max_value=2**64 - 1),
    instrumentation_scope=scopes,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(spans, max_size=6))
def test_matches_stock_encoder_on_random_spans(batch: list[ReadableSpan]) -> None:
    ours = encode_export_request(batch)
    assert ExportTraceServiceRequest.FromString(ours) == encode_spans(batch)
    assert ours == stock_bytes(batch)


def test_field_numbers_and_types_match_the_proto_descriptors() -> None:
    """The encoder hard-codes tags; the generated descriptors must still agree with them."""
    fd = FieldDescriptor
    expected = {
        ExportTraceServiceRequest: {"resource_spans": (1, fd.TYPE_MESSAGE)},
        trace_pb2.ResourceSpans: {
            "resource": (1, fd.TYPE_MESSAGE),
            "scope_spans": (2, fd.TYPE_MESSAGE),
            "schema_url": (3, fd.TYPE_STRING),
        },
        trace_pb2.ScopeSpans: {
            "scope": (1, fd.TYPE_MESSAGE),
            "spans": (2, fd.TYPE_MESSAGE),
            "schema_url": (3, fd.TYPE_STRING),
        },
        resource_pb2.Resource: {"attributes": (1, fd.TYPE_MESSAGE)},
        common_pb2.InstrumentationScope: {
            "name": (1, fd.TYPE_STRING),
            "version": (2, fd.TYPE_STRING),
            "attributes": (3, fd.TYPE_MESSAGE),
        },
        trace_pb2.Span: {
            "trace_id": (1, fd.TYPE_BYTES),
            "span_id": (2, fd.TYPE_BYTES),
            "trace_state": (3, fd.TYPE_STRING),
            "parent_span_id": (4, fd.TYPE_BYTES),
            "name": (5, fd.TYPE_STRING),
            "kind": (6, fd.TYPE_ENUM),
            "start_time_unix_nano": (7, fd.TYPE_FIXED64),
            "end_time_unix_nano": (8, fd.TYPE_FIXED64),
            "attributes": (9, fd.TYPE_MESSAGE),
            "dropped_attributes_count": (10, fd.TYPE_UINT32),
            "events": (11, fd.TYPE_MESSAGE),
            "dropped_events_count": (12, fd.TYPE_UINT32),
            "links": (13, fd.TYPE_MESSAGE),
            "dropped_links_count": (14, fd.TYPE_UINT32),
            "status": (15, fd.TYPE_MESSAGE),
            "flags": (16, fd.TYPE_FIXED32),
        },
        trace_pb2.Span.Event: {
            "time_unix_nano": (1, fd.TYPE_FIXED64),
            "name": (2, fd.TYPE_STRING),
            "attributes": (3, fd.TYPE_MESSAGE),
            "dropped_attributes_count": (4, fd.TYPE_UINT32),
        },
        trace_pb2.Span.Link: {
            "trace_id": (1, fd.TYPE_BYTES),
            "span_id": (2, fd.TYPE_BYTES),
            "attributes": (4, fd.TYPE_MESSAGE),
            "dropped_attributes_count": (5, fd.TYPE_UINT32),
            "flags": (6, fd.TYPE_FIXED32),
        },
        trace_pb2.Status: {"message": (2, fd.TYPE_STRING), "code": (3, fd.TYPE_ENUM)},
        common_pb2.KeyValue: {"key": (1, fd.TYPE_STRING), "value": (2, fd.TYPE_MESSAGE)},
        common_pb2.AnyValue: {
            "string_value": (1, fd.TYPE_STRING),
            "bool_value": (2, fd.TYPE_BOOL),
            "int_value": (3, fd.TYPE_INT64),
            "double_value": (4, fd.TYPE_DOUBLE),
            "array_value": (5, fd.TYPE_MESSAGE),
            "kvlist_value": (6, fd.TYPE_MESSAGE),
            "bytes_value": (7, fd.TYPE_BYTES),
        },
        common_pb2.ArrayValue: {"values": (1, fd.TYPE_MESSAGE)},
        common_pb2.KeyValueList: {"values": (1, fd.TYPE_MESSAGE)},
    }
    for message, fields in expected.items():
        by_name = message.DESCRIPTOR.fields_by_name
        actual = {name: (by_name[name].number, by_name[name].type) for name in fields}
        assert actual == fields, message.DESCRIPTOR.full_name
    assert trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK == 0x100
    assert trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK == 0x200
    assert [kind.value + 1 for kind in SpanKind] == [
        trace_pb2.Span.SpanKind.Value(f"SPAN_KIND_{kind.name}") for kind in SpanKind
    ]


def test_fast_field_read_is_enabled_for_this_sdk() -> None:
    """If an SDK upgrade moves ReadableSpan's fields, this says so (output stays correct)."""
    assert otlp_encoding._FAST_SPAN is ReadableSpan
    assert otlp_encoding._TUPLE_CONTEXT is SpanContext
