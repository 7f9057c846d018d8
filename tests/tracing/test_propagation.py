"""Trace context in record headers: every propagator round-trips; junk is never a context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.tracing.propagation import Propagation, PropagatorConfigError, RecordContext
from proxy.tracing.traceparent import format_traceparent, parse_traceparent

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


def test_traceparent_round_trip() -> None:
    value = format_traceparent(TRACE_ID, SPAN_ID, True)
    assert value == b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(value) == (TRACE_ID, SPAN_ID, True)
    assert parse_traceparent(format_traceparent(TRACE_ID, SPAN_ID, False)) == (
        TRACE_ID,
        SPAN_ID,
        False,
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"\xff\xfe garbage",
        b"0" * 10_000,
    ],
)
def test_invalid_traceparent_is_no_context(value: bytes | None) -> None:
    assert parse_traceparent(value) is None


@given(st.binary(max_size=200))
def test_any_bytes_parse_without_raising(value: bytes) -> None:
    parse_traceparent(value)


@pytest.mark.parametrize(
    "names", ["tracecontext,baggage", "tracecontext", "b3", "b3multi", "jaeger", "b3,tracecontext"]
)
@pytest.mark.parametrize("sampled", [True, False])
def test_each_propagator_round_trips_through_record_headers(names: str, sampled: bool) -> None:
    propagation = Propagation(names.split(","))
    headers = propagation.inject(TRACE_ID, SPAN_ID, sampled)
    assert headers and all(isinstance(v, bytes) for _, v in headers)
    assert propagation.carries_context(headers)
    assert propagation.extract([("app", b"x"), *headers]) == RecordContext(
        TRACE_ID, SPAN_ID, sampled
    )


def test_headers_of_another_format_are_not_a_context_for_this_one() -> None:
    b3_headers = Propagation(["b3"]).inject(TRACE_ID, SPAN_ID, True)
    assert Propagation(["tracecontext"]).extract(b3_headers) is None


@pytest.mark.parametrize("names", ["tracecontext", "b3", "b3multi", "jaeger"])
@given(
    junk=st.lists(
        st.tuples(
            st.sampled_from(
                ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "uber-trace-id", "tracestate"]
            ),
            st.one_of(st.none(), st.binary(max_size=80)),
        )
    )
)
def test_junk_trace_headers_are_ignored_safely(names: str, junk: list) -> None:
    Propagation(names.split(",")).extract(junk)


def test_unknown_propagator_is_a_configuration_error() -> None:
    with pytest.raises(PropagatorConfigError, match="OTEL_PROPAGATORS"):
        Propagation(["tracecontext", "xray"])
