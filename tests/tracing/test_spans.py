"""Spans built directly (`proxy.tracing.spans`) are the SDK's own objects, field for field.

The proxy builds `SpanContext` tuples and `ReadableSpan` fields itself on the sampled-record hot
path; exporters, the OTLP encoder and the SDK's accessors must not tell them from what the
SDK's constructors make, and an SDK that changes its layout must switch the shortcut off.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from proxy.tracing import spans
from proxy.tracing.spans import SCOPE, finished_span, span_context


def test_the_shortcut_is_on_with_this_sdk() -> None:
    assert spans._DIRECT, "the SDK's span layout changed: spans are built the slow way"


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [(1, 1), ((1 << 128) - 1, (1 << 64) - 1), (0, 5), (5, 0), (1 << 128, 5), (5, 1 << 64)],
)
@pytest.mark.parametrize("remote", [True, False])
@pytest.mark.parametrize("sampled", [True, False])
def test_contexts_equal_the_sdks(trace_id: int, span_id: int, remote: bool, sampled: bool) -> None:
    built = span_context(trace_id, span_id, remote=remote, sampled=sampled)
    expected = SpanContext(
        trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(1 if sampled else 0)
    )
    assert type(built) is SpanContext
    assert tuple(built) == tuple(expected)
    assert (built.is_valid, built.trace_flags.sampled, built.is_remote) == (
        expected.is_valid,
        sampled,
        remote,
    )


@pytest.mark.parametrize("error", [None, "NOT_LEADER_OR_FOLLOWER"])
def test_spans_read_like_the_sdks(error: str | None) -> None:
    parent = span_context(0xABC, 0xDEF, remote=True, sampled=True)
    resource = Resource({"service.name": "orders"})
    span = finished_span(
        name="send orders",
        kind=SpanKind.PRODUCER,
        trace_id=0xABC,
        span_id=0x123,
        parent=parent,
        start_ns=10,
        end_ns=5,  # a clock step back: the end is clamped to the start
        attributes={"messaging.system": "kafka"},
        resource=resource,
        error=error,
    )
    assert type(span) is ReadableSpan
    assert span.name == "send orders"
    assert span.context == SpanContext(0xABC, 0x123, False, TraceFlags(1))
    assert span.parent is parent
    assert (span.start_time, span.end_time) == (10, 10)
    assert span.kind is SpanKind.PRODUCER
    assert span.resource is resource
    assert span.instrumentation_scope is SCOPE
    assert dict(span.attributes) == {"messaging.system": "kafka"}
    assert (span.events, span.links) == ((), ())
    assert span.status.status_code is (StatusCode.ERROR if error else StatusCode.UNSET)
    assert span.status.description == error
    assert span.to_json()  # the SDK's own serialiser reads every field


def test_an_sdk_with_another_layout_gets_its_constructors(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ReadableSpan.__init__

    def with_a_new_field(self: ReadableSpan, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self._new_field = 1  # type: ignore[attr-defined]

    monkeypatch.setattr(ReadableSpan, "__init__", with_a_new_field)
    monkeypatch.setattr(spans, "_DIRECT", spans._direct_construction_works())
    assert spans._DIRECT is False
    span = finished_span(
        name="n",
        kind=SpanKind.CONSUMER,
        trace_id=1,
        span_id=2,
        parent=None,
        start_ns=1,
        end_ns=2,
        attributes={},
        resource=Resource({}),
    )
    assert span._new_field == 1  # type: ignore[attr-defined]
