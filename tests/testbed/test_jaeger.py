"""The Jaeger test bed works: spans sent over OTLP (HTTP and gRPC) come back from the query API."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from testbed.jaeger import (
    JAEGER_MODULE_VERSION,
    JAEGER_VERSION,
    Jaeger,
    parent_span_id,
    parse_duration,
    span_service,
    span_tags,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def provider(service: str, exporter: SpanExporter) -> TracerProvider:
    """A tracer provider of its own (not the global one) that exports each span as it ends."""
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def test_version_matches_setup_script() -> None:
    """scripts/setup builds exactly the Jaeger version testbed.jaeger looks for."""
    script = (Path(__file__).parents[2] / "scripts" / "setup").read_text()
    pinned = dict(re.findall(r"^(JAEGER_VERSION|JAEGER_MODULE_VERSION)=(\S+)$", script, re.M))
    assert pinned == {
        "JAEGER_VERSION": JAEGER_VERSION,
        "JAEGER_MODULE_VERSION": JAEGER_MODULE_VERSION,
    }


def test_parse_duration() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("5m") == 300
    assert parse_duration("250ms") == 0.25
    assert parse_duration(2) == 2.0
    with pytest.raises(ValueError):
        parse_duration("soon")


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of the TCP sockets `pid` listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ip_hex, port_hex = local.split(":")
                ip = ".".join(str(int(ip_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
                found.add((ip if table == "tcp" else ip_hex, int(port_hex, 16)))
    return found


def test_listens_only_on_its_free_loopback_ports(jaeger: Jaeger) -> None:
    """Nothing on Jaeger's default ports (4317, 16686, 8888, 13133, ...): parallel runs are safe."""
    assert jaeger._proc is not None
    expected = {
        ("127.0.0.1", port)
        for port in (
            jaeger.otlp_grpc_port,
            jaeger.otlp_http_port,
            jaeger.query_http_port,
            jaeger.query_grpc_port,
        )
    }
    assert _listening_ports(jaeger._proc.pid) == expected


def test_spans_over_otlp_http_and_grpc_form_one_trace(jaeger: Jaeger) -> None:
    """Service A (OTLP/HTTP) calls service B (OTLP/gRPC); Jaeger stores one trace with both spans,
    B's span CHILD_OF A's, and derives the A -> B dependency edge."""
    svc_a, svc_b = unique("svc-a"), unique("svc-b")
    tp_a = provider(
        svc_a, HttpSpanExporter(endpoint=f"{jaeger.otlp_http_endpoint}/v1/traces", timeout=5)
    )
    tp_b = provider(
        svc_b, GrpcSpanExporter(endpoint=jaeger.otlp_grpc_endpoint, insecure=True, timeout=5)
    )
    propagator = TraceContextTextMapPropagator()
    try:
        with tp_a.get_tracer("test").start_as_current_span(
            "a-call", kind=trace.SpanKind.CLIENT, attributes={"test.side": "a"}
        ) as span_a:
            carrier: dict[str, str] = {}
            propagator.inject(carrier)  # what would travel in the request headers
            with tp_b.get_tracer("test").start_as_current_span(
                "b-handle",
                context=propagator.extract(carrier),
                kind=trace.SpanKind.SERVER,
                attributes={"test.side": "b"},
            ) as span_b:
                pass
    finally:
        tp_b.shutdown()
        tp_a.shutdown()
    trace_id = format(span_a.get_span_context().trace_id, "032x")
    a_id = format(span_a.get_span_context().span_id, "016x")
    b_id = format(span_b.get_span_context().span_id, "016x")

    def both_spans() -> dict | None:
        found = jaeger.trace(trace_id)
        return found if found and len(found["spans"]) == 2 else None

    stored = jaeger.wait_for(both_spans, timeout=10)
    spans = {span["spanID"]: span for span in stored["spans"]}
    assert set(spans) == {a_id, b_id}
    assert stored["traceID"] == trace_id
    a, b = spans[a_id], spans[b_id]
    assert (span_service(stored, a), a["operationName"]) == (svc_a, "a-call")
    assert (span_service(stored, b), b["operationName"]) == (svc_b, "b-handle")
    assert parent_span_id(a) is None
    assert parent_span_id(b) == a_id
    assert b["references"] == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": a_id}]
    assert span_tags(a)["span.kind"] == "client"
    assert span_tags(b)["span.kind"] == "server"
    assert span_tags(b)["test.side"] == "b"

    # The search API finds it per service, and both services are listed.
    assert {svc_a, svc_b} <= set(jaeger.services())
    assert [t["traceID"] for t in jaeger.traces(svc_b, operation="b-handle")] == [trace_id]
    assert jaeger.traces(svc_a, operation="no-such-operation") == []
    assert jaeger.trace("0" * 31 + "1") is None

    # Memory storage computes dependencies from the stored traces on every request.
    edges = {(d["parent"], d["child"]): d["callCount"] for d in jaeger.dependencies()}
    assert edges.get((svc_a, svc_b)) == 1
    assert (svc_b, svc_a) not in edges
