"""The consumer's span path in wire form (`receive_spans`) against the general path and its twin.

Where the exporter takes encoded spans, a fetched partition's `receive` spans are written as OTLP
bytes in one call instead of being built as SDK spans and encoded on the export thread. What a
user sees must not change: the export request must be byte for byte the one the general path's
spans make, with the same counters and redelivered marks. Anything but the usual records must be
declined (None), so the general path keeps handling it; both twins must agree on every input.
"""

from __future__ import annotations

import random
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from proxy.codec import native
from proxy.codec.compression import decompress
from proxy.interceptors import BrokerEndpoint, ConnectionContext, FetchedPartition
from proxy.metrics import Metrics
from proxy.tracing import consumer
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.core import TracingCore
from proxy.tracing.export import SpanPipeline
from proxy.tracing.otlp_encoding import EncodedSpans, encode_export_request, span_template
from proxy.tracing.propagation import Propagation
from proxy.tracing.receive import receive_spans_python
from proxy.tracing.sampling import sampler_from_env
from proxy.tracing.spans import printable_key
from proxy.tracing.traceparent import format_traceparent
from tests.codec.test_fetch_skim import batch, legacy_message

compiled = native.compiled
RECORDS_AT = 61  # where a v2 batch's records section begins
needs_compiled = pytest.mark.skipif(compiled is None, reason="the C extension is not built")
NOW_NS = 1_700_000_123_456_789_000
NOW_MS = NOW_NS // 1_000_000
TWINS = [pytest.param(receive_spans_python, id="python")] + (
    [pytest.param(compiled.receive_spans, id="compiled")] if compiled is not None else []
)


class KeepingExporter(SpanExporter):
    """Keeps what it is given; says it takes encoded spans when asked to."""

    def __init__(self, takes_encoded: bool) -> None:
        self.takes_encoded_spans = takes_encoded
        self.batches: list[list[Any]] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.batches.append(list(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def tracer(takes_encoded: bool) -> tuple[FetchTracer, SpanPipeline, KeepingExporter, Metrics]:
    metrics = Metrics()
    exporter = KeepingExporter(takes_encoded)
    pipeline = SpanPipeline(exporter, metrics, max_queue=1 << 16, delay_seconds=60)
    core = TracingCore(
        sampler=sampler_from_env("parentbased_always_on", None),
        propagation=Propagation(["tracecontext", "baggage"]),
        pipeline=pipeline,
        resource=Resource.create({"service.name": "receive-test"}),
    )
    return FetchTracer(core, metrics), pipeline, exporter, metrics


def header(trace_id: int, sampled: bool, span_id: int = 0x51) -> tuple[str, bytes]:
    return ("traceparent", format_traceparent(trace_id, span_id, sampled))


def usual_records() -> bytes:
    """Batches as a traced producer leaves them: sampled and unsampled contexts, records
    without one, keys shown and not shown, a control batch, a legacy message, a compressed
    batch, a cut batch."""
    keys: list[bytes | None] = [None, b"order-17", b"", b"\x01bin", "schlüssel".encode(), b"k" * 65]
    first = batch(
        [(keys[i % len(keys)], b"v" * 40, [header(1000 + i, i % 3 == 0)]) for i in range(12)]
        + [(b"plain", b"no context", [])]
        + [(b"other", b"x", [("Traceparent", b"junk"), header(77, True)])]
        + [(None, b"y", [("baggage", b"a=b"), header(78, True, 0x99)])],
        base_offset=100,
    )
    marker = batch([(None, b"", [])], base_offset=115, control=True)
    second = batch([(b"late", b"z", [header(2000 + i, True)]) for i in range(3)], base_offset=116)
    packed = batch(
        [(b"lz", b"p" * 50, [header(4000 + i, i != 1)]) for i in range(3)], base_offset=119, codec=3
    )
    cut = batch([(None, b"w", [header(3000, True)])], base_offset=122)
    return first + marker + legacy_message() + second + packed + cut[:-4]


@pytest.fixture
def fixed_clock_and_ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Both paths at one instant, with span ids from the same random bytes: the general path's
    `new_span_id` hands out what `random.randbytes` would give the wire path, in order, each
    run (`run`) from the start."""
    stream = random.Random(5).randbytes(8 * 4096)
    drawn = {"wire": 0, "general": 0}

    def randbytes(n: int) -> bytes:
        at = drawn["wire"]
        drawn["wire"] += n
        return stream[at : at + n]

    def new_span_id() -> int:
        at = drawn["general"]
        drawn["general"] += 8
        return int.from_bytes(stream[at : at + 8], "big") or 1

    monkeypatch.setattr(consumer, "time", types.SimpleNamespace(time_ns=lambda: NOW_NS))
    monkeypatch.setattr(consumer.random, "randbytes", randbytes)
    monkeypatch.setattr(consumer, "new_span_id", new_span_id)
    yield lambda: drawn.update(wire=0, general=0)


def run(
    takes_encoded: bool,
    fetches: list[FetchedPartition],
    ctx: ConnectionContext,
    restart_ids: Callable[[], None],
) -> tuple:
    restart_ids()
    fetch_tracer, pipeline, exporter, metrics = tracer(takes_encoded)
    for fetched in fetches:
        fetch_tracer.on_fetch_response(ctx, fetched)
    pipeline.shutdown()
    spans = [span for batch_ in exporter.batches for span in batch_]
    counters = {
        outcome: metrics.value("records_traced", side="fetch", outcome=outcome)
        for outcome in ("skimmed", "context", "no_context")
    }
    return spans, counters, metrics.value("spans_exported")


def fetched(records: bytes, partition: int = 3, aborted: tuple = ()) -> FetchedPartition:
    return FetchedPartition(
        topic="orders",
        topic_id=None,
        partition=partition,
        error_code=0,
        high_watermark=200,
        records=memoryview(records),
        aborted_transactions=aborted,
    )


CONTEXTS = [
    ConnectionContext(4, ("127.0.0.1", 5), BrokerEndpoint(1, "broker-1", 9092), "app", "billing"),
    ConnectionContext(5, ("127.0.0.1", 6), BrokerEndpoint(2, "broker-2", 9093)),
]


# -- 1. what a user sees: the general path's spans, byte for byte ----------------------------------


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("ctx", CONTEXTS, ids=["group-and-client", "bare-connection"])
def test_the_export_request_equals_the_general_paths(
    fixed_clock_and_ids: Callable[[], None],
    ctx: ConnectionContext,
    twin: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer, "receive_spans", twin)
    records = usual_records()
    # Fetched twice: the second time every span is marked redelivered.
    fetches = [fetched(records), fetched(records), fetched(records, partition=4)]
    general, general_counts, general_exported = run(False, fetches, ctx, fixed_clock_and_ids)
    wire, wire_counts, wire_exported = run(True, fetches, ctx, fixed_clock_and_ids)
    assert all(type(span) is ReadableSpan for span in general)
    assert {type(item) for item in wire} == {EncodedSpans}
    assert sum(item.count for item in wire) == len(general) == general_exported == wire_exported
    # Per fetch, 10 sampled contexts: 4 of the 12, the one after baggage, the second batch's 3,
    # the compressed batch's 2; the record whose first traceparent is junk has none.
    assert len(general) == 3 * 10
    assert encode_export_request(wire) == encode_export_request(general)
    assert wire_counts == general_counts
    assert general_counts == {"skimmed": 3 * 10, "context": 3 * 10, "no_context": 3 * 1}


def test_redelivered_keys_and_ages_are_in_the_wire_spans(
    fixed_clock_and_ids: Callable[[], None],
) -> None:
    """What the equality above compares, seen in the bytes themselves."""
    records = batch([(b"order-17", b"v", [header(5, True)])], base_offset=40)
    wire, _, _ = run(True, [fetched(records), fetched(records)], CONTEXTS[0], fixed_clock_and_ids)
    first, again = (item.fields for item in wire)
    assert b"order-17" in first and b"ktp.redelivered" not in first
    assert b"ktp.redelivered" in again
    assert b"ktp.record.age_ms" in first and b"messaging.kafka.offset" in first


@pytest.mark.parametrize(
    "why, fetch",
    [
        ("a batch that does not decompress", lambda: fetched(undecompressable())),
        (
            "aborted transactions",
            lambda: fetched(batch([(None, b"v", [header(5, True)])]), aborted=((7, 0),)),
        ),
        (
            "a header key that is not ASCII",
            lambda: fetched(batch([(None, b"v", [("clé", b"x"), header(5, True)])])),
        ),
    ],
)
def test_what_it_declines_still_gets_its_spans_the_general_way(
    fixed_clock_and_ids: Callable[[], None], why: str, fetch: Callable[[], FetchedPartition]
) -> None:
    general, general_counts, _ = run(False, [fetch()], CONTEXTS[0], fixed_clock_and_ids)
    wire, wire_counts, _ = run(True, [fetch()], CONTEXTS[0], fixed_clock_and_ids)
    assert all(type(span) is ReadableSpan for span in wire), why
    assert encode_export_request(wire) == encode_export_request(general)
    assert wire_counts == general_counts


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_equal_the_general_paths(
    fixed_clock_and_ids: Callable[[], None], codec: int
) -> None:
    records = batch(
        [(b"k%d" % i, b"v" * 100, [header(500 + i, i % 4 != 1)]) for i in range(16)],
        base_offset=30,
        codec=codec,
    ) + batch([(None, b"w", [header(600, True)])], base_offset=46, codec=codec)
    general, general_counts, _ = run(
        False, [fetched(records)] * 2, CONTEXTS[0], fixed_clock_and_ids
    )
    wire, wire_counts, _ = run(True, [fetched(records)] * 2, CONTEXTS[0], fixed_clock_and_ids)
    assert {type(item) for item in wire} == {EncodedSpans}
    assert len(general) == 2 * 13
    assert encode_export_request(wire) == encode_export_request(general)
    assert wire_counts == general_counts


def undecompressable() -> bytes:
    """An lz4 batch whose frame is cut inside: its CRC is not checked here, its body cannot be
    decompressed."""
    whole = bytearray(batch([(None, b"v" * 200, [header(5, True)])], codec=3))
    whole[RECORDS_AT + 20 :] = bytes(len(whole) - RECORDS_AT - 20)
    return bytes(whole)


def test_other_exporters_get_sdk_spans(fixed_clock_and_ids: Callable[[], None]) -> None:
    spans, _, _ = run(False, [fetched(usual_records())], CONTEXTS[0], fixed_clock_and_ids)
    assert spans and all(type(span) is ReadableSpan for span in spans)


# -- 2. the twins ----------------------------------------------------------------------------------


def template() -> Any:
    from opentelemetry.trace import SpanKind

    return span_template(
        "receive orders",
        SpanKind.CONSUMER,
        {"messaging.system": "kafka", "messaging.destination.partition.id": "3", "server.port": 1},
        "messaging.kafka.offset",
        "ktp.record.age_ms",
        "messaging.kafka.message.key",
        "ktp.redelivered",
    )


def call(twin: Callable[..., Any], records: bytes, high: int = 101) -> Any:
    stream = random.Random(9).randbytes(8 * 4096)
    return twin(
        records,
        template(),
        high,
        NOW_NS,
        NOW_NS + 5,
        NOW_MS,
        lambda n: stream[:n],
        printable_key,
        decompress,
    )


@pytest.mark.parametrize("twin", TWINS)
def test_figures_of_the_usual_records(twin: Callable[..., Any]) -> None:
    highest, record_count, with_context, without_context, fields, spans = call(
        twin, usual_records()
    )
    assert (highest, record_count, with_context, without_context, spans) == (121, 21, 10, 1, 10)
    assert fields.count(b"receive orders") == 10


@pytest.mark.parametrize("twin", TWINS)
def test_declines(twin: Callable[..., Any]) -> None:
    sampled = [(None, b"v", [header(5, True)])]
    assert call(twin, undecompressable()) is None
    unknown_codec = bytearray(batch(sampled, codec=3))
    unknown_codec[22] |= 0x07  # codec 7: no such codec
    assert call(twin, bytes(unknown_codec)) is None
    assert call(twin, batch([(None, b"v", [("clé", b"x"), header(5, True)])])) is None
    assert call(twin, batch(sampled), high=1 << 63) is None
    damaged = bytearray(batch(sampled))
    damaged[61] = 0x7E  # the record's length, now past the batch
    assert call(twin, bytes(damaged)) is None


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(
    cuts=st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=3)), max_size=3),
    seed=st.integers(0, 1 << 30),
)
def test_the_twins_agree_on_damaged_records(cuts: list[tuple[int, bytes]], seed: int) -> None:
    rng = random.Random(seed)
    records = bytearray(usual_records())
    for at, replacement in cuts:
        at %= len(records)
        records[at : at + len(replacement)] = replacement
    if rng.random() < 0.5:
        records = records[: rng.randrange(len(records) + 1)]
    assert compiled is not None
    assert call(compiled.receive_spans, bytes(records)) == call(
        receive_spans_python, bytes(records)
    )


VALID = format_traceparent(0xABC, 0xDEF, True)


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.sampled_from(
            [
                VALID,
                b" " + VALID + b"\t",
                VALID.upper(),
                b"ff" + VALID[2:],
                b"01" + VALID[2:] + b"-more",
                VALID + b"-more",
                b"00-" + b"0" * 32 + VALID[35:],
                VALID[:36] + b"0" * 16 + VALID[52:],
                VALID[:-1] + b"0",
                VALID + b" " * 500,
            ]
        ),
        st.binary(max_size=70),
    ),
    name=st.sampled_from(["traceparent", "TraceParent", "tracestate", "clé"]),
    key=st.one_of(st.none(), st.binary(max_size=70), st.text(max_size=40).map(str.encode)),
)
def test_the_twins_agree_on_contexts_and_keys(
    value: bytes | None, name: str, key: bytes | None
) -> None:
    """A record's first traceparent-named header decides its context and the sampled header
    only that it is read; the key is shown by `printable_key`'s rules."""
    records = batch(
        [(key, b"v", [(name, value), header(0x123, True)]), (key, b"w", [header(0x456, True)])],
        base_offset=7,
    )
    assert compiled is not None
    assert call(compiled.receive_spans, records) == call(receive_spans_python, records)


EDGE_KEYS = [
    b"",
    b"order 17",
    b"~" * 64,
    b"~" * 65,
    b"tab\there",
    b"del\x7f",
    b"nul\x00",
    "größe".encode(),
    "zero\u200bwidth".encode(),
    b"\xff\xfe",
]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("key", EDGE_KEYS)
def test_a_key_is_shown_as_printable_key_decides(twin: Callable[..., Any], key: bytes) -> None:
    received = call(twin, batch([(key, b"v", [header(5, True)])]))
    fields = received[4]
    shown = printable_key(key)
    key_attribute = b"messaging.kafka.message.key"
    assert (key_attribute in fields) == (shown is not None)
    if shown is not None:
        assert shown.encode() in fields
