"""The tracing interceptors on real record batches: what goes into headers, which spans come out."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import crc32c
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.codec.records import RecordBatchError, iter_batches
from proxy.interceptors import (
    BrokerEndpoint,
    ConnectionContext,
    FetchedPartition,
    ProducePartition,
    ProduceResult,
)
from proxy.metrics import Metrics
from proxy.tracing.consumer import AGE_ATTRIBUTE, REDELIVERED_ATTRIBUTE, FetchTracer
from proxy.tracing.core import TracingCore
from proxy.tracing.export import SpanPipeline
from proxy.tracing.producer import ProduceTracer
from proxy.tracing.propagation import Propagation
from proxy.tracing.sampling import sampler_from_env
from proxy.tracing.traceparent import format_traceparent, parse_traceparent

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatchBuilder

APP_TRACE = 0x11112222333344445555666677778888
APP_SPAN = 0x1234567890ABCDEF


def build_batch(
    records: list[tuple[bytes | None, bytes | None, list]],
    codec: int = 0,
    *,
    producer_id: int = -1,
    base_offset: int = 0,
) -> bytes:
    """A record batch as kafka-python's producer writes it; transactional when it has a
    producer id."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=producer_id >= 0,
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=base_offset if producer_id >= 0 else -1,
        batch_size=1 << 20,
    )
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers)
    batch = bytearray(builder.build())
    batch[0:8] = base_offset.to_bytes(8, "big")  # not covered by the CRC
    return bytes(batch)


class Harness:
    def __init__(
        self,
        sampler: str = "parentbased_always_on",
        arg: str | None = None,
        propagators: str = "tracecontext,baggage",
        mode: str = "parent",
    ) -> None:
        self.exporter = InMemorySpanExporter()
        self.metrics = Metrics()
        self.pipeline = SpanPipeline(self.exporter, self.metrics, delay_seconds=0.01)
        from opentelemetry.sdk.resources import Resource

        self.core = TracingCore(
            sampler=sampler_from_env(sampler, arg),
            propagation=Propagation(propagators.split(",")),
            pipeline=self.pipeline,
            resource=Resource.create({"service.name": "orders"}),
            consumer_span_mode=mode,
        )
        self.producer = ProduceTracer(self.core, self.metrics)
        self.consumer = FetchTracer(self.core, self.metrics)
        self.ctx = ConnectionContext(
            1,
            ("127.0.0.1", 5000),
            BrokerEndpoint(1, "broker-1", 9092),
            client_id="app-1",
            group_id="billing",
        )

    def spans(self):
        self.pipeline.shutdown()
        return self.exporter.get_finished_spans()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.pipeline.shutdown()


def produce(h: Harness, batch: bytes, result: ProduceResult | None) -> ProducePartition:
    partition = ProducePartition(
        topic="orders", topic_id=None, partition=2, acks=-1, transactional_id=None, records=batch
    )
    state = h.producer.on_produce_request(h.ctx, partition)
    h.producer.on_produce_response(h.ctx, state, result)
    return partition


def ok(base_offset: int) -> ProduceResult:
    return ProduceResult("orders", 2, 0, None, base_offset, None)


def headers_of(records: bytes) -> list[tuple]:
    return [r.headers for b in iter_batches(records) for r in b.records()]


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_every_record_gets_a_sampled_traceparent_and_a_send_span(
    harness: Harness, codec: int
) -> None:
    batch = build_batch([(b"k%d" % i, b"v" * 50, [("app", b"1")]) for i in range(5)], codec)
    partition = produce(harness, batch, ok(100))
    assert partition.replaced_records is not None
    headers = headers_of(partition.replaced_records)
    contexts = [parse_traceparent(dict(h)["traceparent"]) for h in headers]
    assert all(c is not None and c[2] for c in contexts)
    assert all(h[0] == ("app", b"1") for h in headers)  # existing headers kept, ours appended
    spans = sorted(harness.spans(), key=lambda s: s.attributes["messaging.kafka.offset"])
    assert [s.name for s in spans] == ["send orders"] * 5
    assert [s.attributes["messaging.kafka.offset"] for s in spans] == [100, 101, 102, 103, 104]
    for span, context in zip(spans, contexts, strict=True):
        assert (span.context.trace_id, span.context.span_id) == context[:2]
        assert span.kind == SpanKind.PRODUCER and span.parent is None
    attrs = spans[0].attributes
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.operation.type"] == "send"
    assert attrs["messaging.destination.name"] == "orders"
    assert attrs["messaging.destination.partition.id"] == "2"
    assert attrs["messaging.kafka.message.key"] == "k0"
    assert attrs["messaging.client.id"] == "app-1"
    assert (attrs["server.address"], attrs["server.port"]) == ("broker-1", 9092)


def test_a_record_with_a_context_keeps_its_headers_and_parents_the_span(harness: Harness) -> None:
    app_header = ("traceparent", format_traceparent(APP_TRACE, APP_SPAN, True))
    batch = build_batch([(None, b"x", [app_header]), (None, b"y", [])])
    partition = produce(harness, batch, ok(0))
    first, second = headers_of(partition.replaced_records)
    assert first == (app_header,)  # untouched, no duplicate header
    assert [k for k, _ in second] == ["traceparent"]
    spans = {s.attributes["messaging.kafka.offset"]: s for s in harness.spans()}
    assert spans[0].context.trace_id == APP_TRACE
    assert spans[0].parent.span_id == APP_SPAN
    assert spans[1].parent is None


def test_a_batch_with_only_instrumented_records_is_forwarded_untouched(harness: Harness) -> None:
    batch = build_batch([(None, b"x", [("traceparent", format_traceparent(1, 2, True))])])
    assert produce(harness, batch, ok(0)).replaced_records is None


def test_broker_error_marks_send_spans_failed(harness: Harness) -> None:
    batch = build_batch([(None, b"x", [])])
    produce(harness, batch, ProduceResult("orders", 2, 6, "NOT_LEADER_OR_FOLLOWER", -1, None))
    (span,) = harness.spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "NOT_LEADER_OR_FOLLOWER"
    assert "messaging.kafka.offset" not in span.attributes


def test_acks_zero_span_ends_without_offset(harness: Harness) -> None:
    produce(harness, build_batch([(None, b"x", [])]), None)
    (span,) = harness.spans()
    assert "messaging.kafka.offset" not in span.attributes
    assert span.end_time >= span.start_time


def test_unsampled_records_get_an_unsampled_context_and_no_span() -> None:
    h = Harness(sampler="parentbased_traceidratio", arg="0")
    partition = produce(h, build_batch([(None, b"x", [])] * 20), ok(0))
    contexts = [
        parse_traceparent(dict(hs)["traceparent"]) for hs in headers_of(partition.replaced_records)
    ]
    assert all(c is not None and not c[2] for c in contexts)
    assert h.spans() == ()


def test_b3_propagator_writes_b3_headers() -> None:
    h = Harness(propagators="b3multi")
    partition = produce(h, build_batch([(None, b"x", [])]), ok(0))
    (headers,) = headers_of(partition.replaced_records)
    assert {k for k, _ in headers} >= {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}


def fetched(batch: bytes, aborted: tuple = ()) -> FetchedPartition:
    return FetchedPartition("orders", None, 2, 0, 10, batch, aborted)


def test_fetched_records_with_context_get_receive_spans_parented_on_it(harness: Harness) -> None:
    batch = build_batch(
        [
            (b"k", b"x", [("traceparent", format_traceparent(APP_TRACE, APP_SPAN, True))]),
            (None, b"no context", []),
            (None, b"unsampled", [("traceparent", format_traceparent(APP_TRACE + 1, 5, False))]),
        ]
    )
    harness.consumer.on_fetch_response(harness.ctx, fetched(batch))
    (span,) = harness.spans()
    assert span.name == "receive orders" and span.kind == SpanKind.CONSUMER
    assert span.context.trace_id == APP_TRACE and span.parent.span_id == APP_SPAN
    assert span.attributes["messaging.consumer.group.name"] == "billing"
    assert span.attributes["messaging.kafka.offset"] == 0
    assert span.attributes[AGE_ATTRIBUTE] > 0
    assert REDELIVERED_ATTRIBUTE not in span.attributes


def test_records_fetched_again_are_marked_redelivered(harness: Harness) -> None:
    batch = build_batch([(None, b"x", [("traceparent", format_traceparent(7, 8, True))])])
    harness.consumer.on_fetch_response(harness.ctx, fetched(batch))
    harness.consumer.on_fetch_response(harness.ctx, fetched(batch))
    first, second = harness.spans()
    assert REDELIVERED_ATTRIBUTE not in first.attributes
    assert second.attributes[REDELIVERED_ATTRIBUTE] is True


def test_link_mode_makes_one_span_linking_each_record() -> None:
    h = Harness(mode="link")
    batch = build_batch(
        [(None, b"x", [("traceparent", format_traceparent(7 + i, 8, True))]) for i in range(3)]
    )
    h.consumer.on_fetch_response(h.ctx, fetched(batch))
    (span,) = h.spans()
    assert span.parent is None
    assert [link.context.trace_id for link in span.links] == [7, 8, 9]


def test_garbage_records_do_not_raise(harness: Harness) -> None:
    harness.consumer.on_fetch_response(harness.ctx, fetched(b"\x00" * 12 + b"\xff" * 80))
    assert harness.spans() == ()


def test_batches_without_a_sampled_context_are_skimmed_not_parsed(harness: Harness) -> None:
    unsampled = build_batch(
        [(None, b"x", [("traceparent", format_traceparent(7 + i, 8, False))]) for i in range(10)],
        codec=3,
    )
    harness.consumer.on_fetch_response(harness.ctx, fetched(unsampled))
    assert harness.metrics.value("records_traced", side="fetch", outcome="skimmed") == 10
    # The skimmed batch still counts as delivered: seeing offset 3 again is a redelivery.
    sampled = build_batch([(None, b"x", [("traceparent", format_traceparent(99, 8, True))])])
    harness.consumer.on_fetch_response(harness.ctx, fetched(sampled))
    (span,) = harness.spans()
    assert span.attributes[REDELIVERED_ATTRIBUTE] is True


@pytest.mark.parametrize("codec", [0, 1, 3])
def test_only_the_records_with_a_sampled_context_get_spans_when_skimming(
    harness: Harness, codec: int
) -> None:
    # 40 records across two batches: sampled contexts at offsets 5 and 31 (and a key on 31),
    # unsampled ones elsewhere, one record whose *value* spells a sampled traceparent header.
    def record(i: int) -> tuple[bytes | None, bytes, list]:
        sampled = i in (5, 31)
        value = b"v" * i
        if i == 12:
            value = b"\x16traceparent\x6e" + format_traceparent(3, 4, True)
        return (
            b"key-31" if i == 31 else None,
            value,
            [("traceparent", format_traceparent(1000 + i, 77, sampled))],
        )

    first = build_batch([record(i) for i in range(20)], codec=codec)
    second = bytearray(build_batch([record(i) for i in range(20, 40)], codec=codec))
    second[0:8] = (20).to_bytes(8, "big")  # base offset 20 (the CRC does not cover it)
    harness.consumer.on_fetch_response(harness.ctx, fetched(first + bytes(second)))
    spans = sorted(harness.spans(), key=lambda s: s.attributes["messaging.kafka.offset"])
    assert [s.attributes["messaging.kafka.offset"] for s in spans] == [5, 31]
    assert [s.context.trace_id for s in spans] == [1005, 1031]
    assert "messaging.kafka.message.key" not in spans[0].attributes
    assert spans[1].attributes["messaging.kafka.message.key"] == "key-31"
    # Record 12's value spells a sampled header, but headers are found by the records' lengths:
    # only the two sampled records were parsed.
    assert harness.metrics.value("records_traced", side="fetch", outcome="skimmed") == 38
    assert harness.metrics.value("records_traced", side="fetch", outcome="context") == 2


def transactional_batch(base_offset: int, count: int, *, control: bool = False) -> bytes:
    """Records of producer 7's transaction (sampled contexts), or its commit/abort marker."""
    records = [
        (None, b"x", [] if control else [("traceparent", format_traceparent(500 + i, 8, True))])
        for i in range(count)
    ]
    batch = bytearray(build_batch(records, producer_id=7, base_offset=base_offset))
    if control:
        batch[22] |= 0x20
        batch[17:21] = crc32c.crc32c(bytes(batch[21:])).to_bytes(4, "big")
    return bytes(batch)


@pytest.mark.parametrize("mode", ["parent", "link"])
def test_records_of_an_aborted_transaction_get_no_spans(mode: str) -> None:
    # Offsets 0-2: a transaction that was aborted (its marker at 3); 4-5: the producer's next
    # transaction; 6: a plain batch. A read_committed consumer sees 4, 5 and 6 only.
    h = Harness(mode=mode)
    plain = build_batch(
        [(None, b"x", [("traceparent", format_traceparent(9, 8, True))])], base_offset=6
    )
    records = (
        transactional_batch(0, 3)
        + transactional_batch(3, 1, control=True)
        + transactional_batch(4, 2)
        + plain
    )
    h.consumer.on_fetch_response(h.ctx, fetched(records, aborted=((7, 0),)))
    spans = h.spans()
    if mode == "link":
        (span,) = spans
        assert sorted(link.context.trace_id for link in span.links) == [9, 500, 501]
    else:
        assert sorted(s.attributes["messaging.kafka.offset"] for s in spans) == [4, 5, 6]
    # Without the aborted transaction every data record is seen.
    h2 = Harness(mode=mode)
    h2.consumer.on_fetch_response(h2.ctx, fetched(records))
    assert sum(max(len(s.links), 1) for s in h2.spans()) == 6


def test_plain_and_instrumented_batches_in_one_request_keep_their_spans_apart() -> None:
    # Batch 1 (3 plain records) takes the bulk path, batch 2 (an app context, then a plain
    # record) the per-record one, batch 3 (plain) the bulk path again: every span must still
    # carry the offset of its own record.
    h = Harness()
    app_header = ("traceparent", format_traceparent(APP_TRACE, APP_SPAN, True))
    first = build_batch([(b"a%d" % i, b"x", []) for i in range(3)])
    second = build_batch([(b"b0", b"y", [app_header]), (b"b1", b"y", [])])
    third = build_batch([(b"c%d" % i, b"z", []) for i in range(2)], codec=3)
    partition = produce(h, first + second + third, ok(500))
    headers = headers_of(partition.replaced_records)
    assert headers[3] == (app_header,)
    assert all([k for k, _ in hs] == ["traceparent"] for i, hs in enumerate(headers) if i != 3)
    spans = sorted(h.spans(), key=lambda s: s.attributes["messaging.kafka.offset"])
    assert [s.attributes["messaging.kafka.offset"] for s in spans] == list(range(500, 507))
    assert [s.attributes["messaging.kafka.message.key"] for s in spans] == [
        "a0",
        "a1",
        "a2",
        "b0",
        "b1",
        "c0",
        "c1",
    ]
    assert spans[3].context.trace_id == APP_TRACE
    for span, hs in zip(spans, headers, strict=True):
        if hs != (app_header,):
            assert parse_traceparent(dict(hs)["traceparent"])[:2] == (
                span.context.trace_id,
                span.context.span_id,
            )
    assert h.metrics.value("records_traced", side="produce", outcome="sampled") == 7
    assert h.metrics.value("records_traced", side="produce", outcome="app_context") == 1


def test_a_batch_too_large_for_headers_is_skipped_early_and_its_neighbours_keep_their_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A librdkafka-sized batch (uncompressed, near the broker's limit) between two small ones:
    # the big one is forwarded as it came, without headers being spliced in first, and the
    # spans of the small ones still carry their own offsets.
    import proxy.interceptors

    h = Harness()
    small = build_batch([(b"a%d" % i, b"x", []) for i in range(2)])
    big = build_batch([(b"b%d" % i, b"y" * 900, []) for i in range(40)])
    tail = build_batch([(b"c0", b"z", [])])
    spliced: list[int] = []
    real_append = proxy.interceptors.append_header_to_each

    def counting_append(batch, *args):  # type: ignore[no-untyped-def]
        spliced.append(batch.record_count)
        return real_append(batch, *args)

    monkeypatch.setattr(proxy.interceptors, "append_header_to_each", counting_append)
    partition = ProducePartition(
        topic="orders",
        topic_id=None,
        partition=2,
        acks=-1,
        transactional_id=None,
        records=small + big + tail,
        max_batch_bytes=len(big) + 100,  # 40 headers of 68 bytes do not fit
    )
    state = h.producer.on_produce_request(h.ctx, partition)
    h.producer.on_produce_response(h.ctx, state, ok(700))
    assert spliced == [2, 1], "the big batch was rebuilt before being found too large"
    out = list(iter_batches(partition.replaced_records))
    assert out[1].raw == big
    assert [len(r.headers) for b in out for r in b.records()] == [1, 1] + [0] * 40 + [1]
    spans = sorted(h.spans(), key=lambda s: s.attributes["messaging.kafka.offset"])
    assert [s.attributes["messaging.kafka.offset"] for s in spans] == [700, 701, 742]
    assert [s.attributes["messaging.kafka.message.key"] for s in spans] == ["a0", "a1", "c0"]
    assert h.metrics.value("header_injections_skipped", reason="too_large") == 1
    assert h.metrics.value("records_traced", side="produce", outcome="skipped") == 40


@pytest.mark.parametrize("codec", [0, 3])
def test_a_record_count_the_batch_cannot_hold_draws_no_contexts(
    harness: Harness, codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A peer's batch header claims 2^31-1 records in a few bytes (CRC valid): one new context
    # per claimed record would take the process's memory. The batch is refused as it is read.
    import proxy.tracing.producer as producer_module

    lying = bytearray(build_batch([(None, b"x", [])] * 3, codec))
    lying[57:61] = (2**31 - 1).to_bytes(4, "big")
    lying[17:21] = crc32c.crc32c(bytes(lying[21:])).to_bytes(4, "big")
    drawn: list[int] = []
    real = producer_module.new_root_traceparents

    def draw(count: int, threshold: bytes | None) -> tuple[list[bytes], list]:
        drawn.append(count)
        assert count < 1000, f"{count} contexts drawn for a count the batch cannot hold"
        return real(count, threshold)

    monkeypatch.setattr(producer_module, "new_root_traceparents", draw)
    fast_path: list[object] = []
    real_roots = producer_module.inject_roots

    def roots(records: bytes, *args: object) -> object:
        fast_path.append(made := real_roots(records, *args))
        return made

    monkeypatch.setattr(producer_module, "inject_roots", roots)
    with pytest.raises(RecordBatchError, match="fewer than"):
        produce(harness, bytes(lying), ok(0))
    assert drawn == [] and fast_path == [None]
    # An honest count still takes a bulk path: the fast path for an uncompressed batch, the
    # general bulk path for a compressed one (the builder leaves tiny batches uncompressed).
    honest = build_batch([(None, b"x", [])] * 3, codec)
    uncompressed = honest[22] & 0x07 == 0
    produce(harness, honest, ok(0))
    assert drawn == ([] if uncompressed else [3])
    assert (fast_path[1] is not None) == uncompressed
