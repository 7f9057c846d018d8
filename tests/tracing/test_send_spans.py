"""The producer's send spans in wire form against the general path.

Where the exporter takes encoded spans, a partition's `send` spans are written as OTLP bytes
when the broker answers, instead of being built as SDK spans and encoded on the export thread.
The export request must be byte for byte the one the general path's spans make, whatever the
records (new roots or children of an application's context, keys shown or not) and whatever
the answer (an offset, an error, no answer).
"""

from __future__ import annotations

import random
import types
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from proxy.interceptors import BrokerEndpoint, ConnectionContext, ProducePartition, ProduceResult
from proxy.metrics import Metrics
from proxy.tracing import producer
from proxy.tracing.core import TracingCore
from proxy.tracing.export import SpanPipeline
from proxy.tracing.otlp_encoding import EncodedSpans, encode_export_request
from proxy.tracing.producer import ProduceTracer
from proxy.tracing.propagation import Propagation
from proxy.tracing.sampling import sampler_from_env
from proxy.tracing.traceparent import format_traceparent
from tests.tracing.test_interceptors import build_batch
from tests.tracing.test_receive_spans import KeepingExporter

CONTEXTS = [
    ConnectionContext(4, ("127.0.0.1", 5), BrokerEndpoint(1, "broker-1", 9092), "app", None),
    ConnectionContext(5, ("127.0.0.1", 6), BrokerEndpoint(2, "broker-2", 9093)),
]
KEYS: list[bytes | None] = [None, b"order-17", b"", b"\x01bin", "schlüssel".encode(), b"k" * 65]


def roots() -> bytes:
    """Records without headers: each becomes a new root (the producer's fast path)."""
    return build_batch([(KEYS[i % len(KEYS)], b"v" * 30, []) for i in range(8)], base_offset=0)


def children() -> bytes:
    """Records of an instrumented application: sampled and unsampled contexts, others."""
    context = ("traceparent", format_traceparent(0xABC, 0xDEF, True))
    unsampled = ("traceparent", format_traceparent(0xABD, 0xDEE, False))
    return build_batch(
        [(b"a", b"v", [context]), (b"b", b"v", [unsampled]), (None, b"v", [("app", b"1")])]
        + [(KEYS[i % len(KEYS)], b"w", [context]) for i in range(5)]
    )


ANSWERS: dict[str, ProduceResult | None] = {
    "offset": ProduceResult("orders", 2, 0, None, 4000, None),
    "error": ProduceResult("orders", 2, 6, "NOT_LEADER_OR_FOLLOWER", -1, "moved"),
    "unnamed error": ProduceResult("orders", 2, 87, None, -1, None),
    "no answer": None,
}


def run(
    monkeypatch: pytest.MonkeyPatch,
    takes_encoded: bool,
    records: bytes,
    answer: ProduceResult | None,
    ctx: ConnectionContext,
    sampler: str,
) -> tuple[list[Any], float]:
    random.seed(11)  # the same contexts on both paths, at the same instants
    ticks = iter(range(1_700_000_000_000_000_000, 1 << 62, 1_000))
    monkeypatch.setattr(producer, "time", types.SimpleNamespace(time_ns=lambda: next(ticks)))
    metrics = Metrics()
    exporter = KeepingExporter(takes_encoded)
    pipeline = SpanPipeline(exporter, metrics, max_queue=1 << 16, delay_seconds=60)
    core = TracingCore(
        sampler=sampler_from_env(sampler, "0.5"),
        propagation=Propagation(["tracecontext", "baggage"]),
        pipeline=pipeline,
        resource=Resource.create({"service.name": "send-test"}),
    )
    tracer = ProduceTracer(core, metrics)
    for partition_index in (2, 3):
        partition = ProducePartition("orders", None, partition_index, -1, None, records)
        state = tracer.on_produce_request(ctx, partition)
        tracer.on_produce_response(ctx, state, answer)
    pipeline.shutdown()
    return [span for batch in exporter.batches for span in batch], metrics.value("spans_exported")


@pytest.mark.parametrize("records", [roots, children], ids=["roots", "children"])
@pytest.mark.parametrize("answer", list(ANSWERS), ids=list(ANSWERS))
@pytest.mark.parametrize("ctx", CONTEXTS, ids=["client", "bare-connection"])
@pytest.mark.parametrize("sampler", ["parentbased_always_on", "traceidratio"])
def test_the_export_request_equals_the_general_paths(
    monkeypatch: pytest.MonkeyPatch,
    records: Callable[[], bytes],
    answer: str,
    ctx: ConnectionContext,
    sampler: str,
) -> None:
    general, general_exported = run(monkeypatch, False, records(), ANSWERS[answer], ctx, sampler)
    wire, wire_exported = run(monkeypatch, True, records(), ANSWERS[answer], ctx, sampler)
    assert general and all(type(span) is ReadableSpan for span in general)
    assert {type(item) for item in wire} == {EncodedSpans}
    assert sum(item.count for item in wire) == len(general) == general_exported == wire_exported
    assert encode_export_request(wire) == encode_export_request(general)


def test_an_offset_beyond_int64_goes_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder leaves such an attribute out (and logs it); so do the spans made for it."""
    beyond = ProduceResult("orders", 2, 0, None, (1 << 63) - 3, None)
    wire, exported = run(monkeypatch, True, roots(), beyond, CONTEXTS[0], "parentbased_always_on")
    assert exported == 16 and all(type(span) is ReadableSpan for span in wire)
