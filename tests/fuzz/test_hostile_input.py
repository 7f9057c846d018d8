"""Hostile and malformed input, case by case, named after what a user of the proxy would see.

Rules these cases guard (proxy/codec/errors.py, proxy/interceptors.py): bytes the peer got wrong
raise only the codec's own errors (the relay closes that one connection); a Produce whose records
an interceptor cannot read is forwarded unchanged, so the broker's own error reaches the client;
junk in trace headers is no context, never an exception. Several cases are the minimal
reproducers of bugs fuzzing found (and that are fixed): they keep those bugs from coming back.
"""

from __future__ import annotations

import datetime
import gzip
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable

import crc32c
import pytest
import zstandard
from kio.schema.metadata.v12 import response as metadata_v12
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.produce.v9 import request as produce_v9
from kio.static.primitive import i16, i32

from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec.errors import FrameTooLarge, ProtocolError
from proxy.codec.framing import frame
from proxy.codec.records import iter_batches
from proxy.exchange import KafkaExchange
from proxy.interceptors import (
    BrokerEndpoint,
    ConnectionContext,
    Interceptors,
    ProducePartition,
)
from proxy.metrics import Metrics
from proxy.tracing.propagation import Propagation
from proxy.tracing.traceparent import TRACEPARENT, format_traceparent, parse_traceparent
from tests.proxy.messages import request_frame, response_frame

from .atheris_targets import feed, new_exchange, tracing_setup

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatchBuilder

VALID_TRACEPARENT = format_traceparent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True)


def _sent(outcome) -> bytes:
    return b"".join(bytes(piece) for piece in outcome.send)


def _exchange(max_frame_size: int = 1 << 20, *, traced: bool = False) -> KafkaExchange:
    return new_exchange(traced=traced, max_frame_size=max_frame_size)


def _metadata_request(correlation_id: int) -> bytes:
    return request_frame(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
        ),
        correlation_id,
    )


# -- frames ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["client", "broker"])
def test_frame_larger_than_the_maximum_is_refused_before_any_byte_is_forwarded(
    direction: str,
) -> None:
    exchange = _exchange(max_frame_size=1024)
    feed_ = exchange.from_client if direction == "client" else exchange.from_server
    oversized = struct.pack(">i", 1025) + b"\x00" * 20
    with pytest.raises(FrameTooLarge):
        feed_(oversized)


def test_frame_size_alone_is_enough_to_refuse_an_oversized_frame() -> None:
    exchange = _exchange(max_frame_size=1024)
    assert _sent(exchange.from_client(b"\x00\x00")) == b""
    with pytest.raises(FrameTooLarge):
        exchange.from_client(b"\x04\x01")  # 1025 bytes announced, no body byte seen yet


@pytest.mark.parametrize("size", [-1, -(2**31), -1024])
def test_negative_frame_length_closes_the_connection(size: int) -> None:
    with pytest.raises(FrameTooLarge):
        _exchange().from_client(struct.pack(">i", size) + b"\x00" * 8)


@pytest.mark.parametrize("size", [0, 1, 7])
def test_frame_too_short_to_be_a_request_closes_the_connection(size: int) -> None:
    with pytest.raises(ProtocolError):
        _exchange().from_client(struct.pack(">i", size) + b"\x00" * size)


def test_truncated_produce_frame_is_held_not_forwarded() -> None:
    data = request_frame(_produce(records=_batch([(b"k", b"v", [])])), 3)
    exchange = _exchange()
    assert _sent(exchange.from_client(data[:-5])) == b""
    assert _sent(exchange.from_client(data[-5:])) == data


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: kafka\r\n\r\n", id="http"),
        pytest.param(bytes.fromhex("160301020001fc0303") + b"\x00" * 32, id="tls-client-hello"),
        pytest.param(b"\xff" * 64, id="all-ones"),
    ],
)
def test_garbage_from_a_client_is_refused_as_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        _exchange().from_client(garbage)


def test_a_response_nobody_asked_for_closes_the_connection() -> None:
    with pytest.raises(ProtocolError):
        _exchange().from_server(frame(b"\x00\x00\x00\x01garbage"))


# -- versions --------------------------------------------------------------------------------------


def test_produce_v99_is_forwarded_untouched_and_not_decoded() -> None:
    calls: list[object] = []

    class Recorder:
        def on_produce_request(self, ctx, partition):
            calls.append(partition)

        def on_produce_response(self, ctx, state, result):
            calls.append(result)

    exchange = KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 1), BrokerEndpoint(1, "b", 9092)),
        brokers=BrokerDirectory("sidecar.test", PortMapping(39000, {})),
        topics=TopicNames(),
        interceptors=Interceptors([Recorder()]),
        metrics=Metrics(),
        max_frame_size=1 << 20,
    )
    request = frame(struct.pack(">hhih", 0, 99, 5, 2) + b"me" + b"\x00 not a produce body \xff")
    assert _sent(exchange.from_client(request)) == request
    response = frame(struct.pack(">i", 5) + b"\x00\x23anything")
    assert _sent(exchange.from_server(response)) == response
    assert calls == []
    assert exchange.in_flight == 0


def test_api_versions_newer_than_kio_is_passed_through() -> None:
    exchange = _exchange()
    request = frame(struct.pack(">hhih", 18, 5, 1, 2) + b"me" + b"\x00\x00")
    assert _sent(exchange.from_client(request)) == request
    # The broker answers an ApiVersions version it does not know in v0: UNSUPPORTED_VERSION.
    response = frame(struct.pack(">ihi", 1, 35, 0))
    assert _sent(exchange.from_server(response)) == response


# -- malformed record batches in a Produce request, with tracing registered ----------------------


def _batch(records: list[tuple[bytes | None, bytes | None, list]], codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers)
    return bytes(builder.build())


def _resign(batch: bytes | bytearray) -> bytes:
    """Fix batchLength and CRC after a corruption, so parsing gets past them to the records."""
    out = bytearray(batch)
    struct.pack_into(">i", out, 8, len(out) - 12)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def _with_body(codec: int, body: bytes, record_count: int = 1) -> bytes:
    """A batch header (kafka-python's) around an arbitrary records section."""
    header = bytearray(_batch([(b"k", b"v", [])])[:61])
    struct.pack_into(">h", header, 21, codec)
    struct.pack_into(">i", header, 57, record_count)
    return _resign(bytes(header) + body)


def _produce(records: bytes | None) -> produce_v9.ProduceRequest:
    return produce_v9.ProduceRequest(
        transactional_id=None,
        acks=i16(-1),
        timeout=datetime.timedelta(seconds=1),
        topic_data=(
            produce_v9.TopicProduceData(
                name="orders",
                partition_data=(produce_v9.PartitionProduceData(index=i32(0), records=records),),
            ),
        ),
    )


def _bad_crc() -> bytes:
    batch = bytearray(_batch([(b"k", b"v", [])]))
    batch[-1] ^= 0xFF
    return bytes(batch)


def _record_length_lies() -> bytes:
    batch = bytearray(_batch([(b"k", b"value", [])]))
    batch[61] = 0x7E  # record length 63, far past the batch
    return _resign(batch)


def _bad_varint() -> bytes:
    batch = _batch([(b"k", b"value", [])])
    return _resign(batch[:61] + b"\xff" * 11 + batch[72:])


def _record_count_lies() -> bytes:
    batch = bytearray(_batch([(b"k", b"v", [])]))
    struct.pack_into(">i", batch, 57, 1000)
    return _resign(batch)


def _impossible_batch_length() -> bytes:
    batch = bytearray(_batch([(b"k", b"v", [])]))
    struct.pack_into(">i", batch, 8, 3)
    return bytes(batch)


def _gzip_bomb() -> bytes:
    # 65 MiB of zeros in ~65 KB: past the 64 MiB decompression cap.
    return _with_body(1, gzip.compress(b"\x00" * (65 << 20), compresslevel=1))


def _zstd_bomb() -> bytes:
    # Streamed like Java's zstd-jni: no content size in the frame header.
    compressor = zstandard.ZstdCompressor(level=1)
    chunk = b"\x00" * (1 << 20)
    writer = compressor.compressobj()
    body = b"".join(writer.compress(chunk) for _ in range(65)) + writer.flush()
    assert zstandard.frame_content_size(body) == -1
    return _with_body(4, body)


#: (what is wrong, the records field, what the tracer reports about it)
MALFORMED_BATCHES: list[tuple[str, Callable[[], bytes], str]] = [
    ("bad-crc", _bad_crc, "interceptor_error"),
    ("record-length-lies", _record_length_lies, "interceptor_error"),
    ("bad-varint", _bad_varint, "interceptor_error"),
    ("record-count-lies", _record_count_lies, "interceptor_error"),
    ("impossible-batch-length", _impossible_batch_length, "interceptor_error"),
    # A cut-off tail is normal in fetch responses, never in a produce request: counted.
    ("batch-length-past-the-end", lambda: _batch([(b"k", b"v", [])])[:-3], "unparsed"),
    ("whole-batch-then-junk", lambda: _batch([(b"k", b"v", [])]) + b"\x00" * 5, "unparsed"),
    ("unknown-codec-7", lambda: _with_body(7, b"\x00" * 16), "interceptor_error"),
    ("corrupt-gzip", lambda: _with_body(1, b"\x1f\x8b\x08\x00garbage"), "interceptor_error"),
    ("gzip-bomb", _gzip_bomb, "interceptor_error"),
    ("zstd-bomb", _zstd_bomb, "interceptor_error"),
    ("legacy-magic-0", lambda: bytes(8) + struct.pack(">i", 14) + bytes(14), "nothing"),
]


@pytest.mark.parametrize(
    ("records", "reported"),
    [pytest.param(make, reported, id=name) for name, make, reported in MALFORMED_BATCHES],
)
def test_malformed_batches_in_a_traced_produce_are_forwarded_unchanged(
    records: Callable[[], bytes], reported: str
) -> None:
    metrics = tracing_setup().metrics
    errors_before = metrics.value("interceptor_errors", hook="on_produce_request")
    unparsed_before = metrics.value("header_injections_skipped", reason="unparsed_records")
    exchange = _exchange(max_frame_size=1 << 24, traced=True)
    request = request_frame(_produce(records()), 11)
    assert _sent(exchange.from_client(request)) == request
    errors = metrics.value("interceptor_errors", hook="on_produce_request") - errors_before
    unparsed = (
        metrics.value("header_injections_skipped", reason="unparsed_records") - unparsed_before
    )
    assert (errors, unparsed) == {
        "interceptor_error": (1, 0),
        "unparsed": (0, 1),
        "nothing": (0, 0),
    }[reported]
    assert exchange.in_flight == 1  # the broker's answer (its error) will be passed back


# -- hostile trace headers -------------------------------------------------------------------------

HOSTILE_HEADERS: dict[str, list[tuple[str, bytes | None]]] = {
    "oversized-traceparent": [(TRACEPARENT, VALID_TRACEPARENT + b"-" + b"a" * 100_000)],
    "invalid-traceparent": [(TRACEPARENT, b"00-not-a-trace-context-01")],
    "all-zero-trace-id": [(TRACEPARENT, b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01")],
    "version-ff": [(TRACEPARENT, b"ff" + VALID_TRACEPARENT[2:])],
    "binary-junk": [(TRACEPARENT, bytes(range(256)))],
    "null-value": [(TRACEPARENT, None)],
    "junk-b3": [("b3", b"\xff\xfe" * 50), ("x-b3-traceid", b"zz"), ("uber-trace-id", b":::")],
}


@pytest.mark.parametrize("propagators", ["tracecontext,baggage", "tracecontext,b3,jaeger,b3multi"])
@pytest.mark.parametrize("headers", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_junk_trace_headers_are_no_context(headers: list, propagators: str) -> None:
    propagation = Propagation(propagators.split(","))
    assert propagation.extract(headers) is None


def test_ten_thousand_headers_are_read_without_error() -> None:
    headers = [(f"h{i}", b"x" * 10) for i in range(10_000)] + [(TRACEPARENT, VALID_TRACEPARENT)]
    for propagators in ("tracecontext,baggage", "tracecontext,b3,jaeger"):
        context = Propagation(propagators.split(",")).extract(headers)
        assert context is not None
        assert (context.trace_id, context.span_id) == parse_traceparent(VALID_TRACEPARENT)[:2]


def _traced_records(headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """One record with these headers through the produce tracer: the headers it goes out with."""
    from proxy.tracing.producer import ProduceTracer

    setup = tracing_setup()
    tracer = next(i for i in setup.interceptors.produce if isinstance(i, ProduceTracer))
    original = _batch([(b"k", b"v", headers)])
    partition = ProducePartition(
        topic="orders", topic_id=None, partition=0, acks=-1, transactional_id=None,
        records=original,
    )  # fmt: skip
    tracer.on_produce_request(
        ConnectionContext(1, ("127.0.0.1", 1), BrokerEndpoint(1, "b", 9092)), partition
    )
    out = partition.replaced_records or original
    (batch,) = iter_batches(out)
    (record,) = batch.records()
    return list(record.headers)


def test_a_record_with_ten_thousand_headers_gets_its_traceparent_and_keeps_them_all() -> None:
    headers: list[tuple[str, bytes | None]] = [(f"h{i}", b"") for i in range(10_000)]
    sent = _traced_records(headers)
    assert sent[:-1] == headers
    assert sent[-1][0] == TRACEPARENT and parse_traceparent(sent[-1][1]) is not None


def test_a_record_with_a_valid_traceparent_is_untouched() -> None:
    headers: list[tuple[str, bytes | None]] = [(TRACEPARENT, VALID_TRACEPARENT), ("a", b"1")]
    assert _traced_records(headers) == headers


BAD_TRACEPARENT_CASES = {k: v for k, v in HOSTILE_HEADERS.items() if v[0][0] == TRACEPARENT}


@pytest.mark.parametrize("headers", BAD_TRACEPARENT_CASES.values(), ids=BAD_TRACEPARENT_CASES)
def test_a_record_never_goes_out_with_two_traceparent_headers(headers: list) -> None:
    sent = _traced_records(headers)
    assert [key for key, _ in sent].count(TRACEPARENT) <= 1
    others = [(k, v) for k, v in headers if k != TRACEPARENT]
    assert [(k, v) for k, v in sent if k != TRACEPARENT] == others


# -- bugs found by fuzzing (minimal reproducers) ---------------------------------------------------

_KIO_ABORT = textwrap.dedent(
    """
    import struct
    from proxy.codec.errors import ProtocolError
    from proxy.codec.messages import decode_request
    # Produce v9 payload: transactional_id null, acks -1, timeout 1000, then topic_data announced
    # as a compact array of 2^32 - 2 entries (uvarint ff ff ff ff 0f) in a 16-byte frame.
    payload = b"\\x00" + struct.pack(">hi", -1, 1000) + b"\\xff\\xff\\xff\\xff\\x0f"
    try:
        decode_request(0, 9, payload, 0)
    except ProtocolError:
        print("ProtocolError")
    """
)


def test_a_lying_array_count_is_a_protocol_error_not_a_process_abort() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _KIO_ABORT], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ProtocolError"), result.stderr[-500:]


def _fetch_v12_request(correlation_id: int) -> bytes:
    header = struct.pack(">hhih", 1, 12, correlation_id, 2) + b"me\x00"
    body = struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, 0) + b"\x01\x01\x01\x00"
    return frame(header + body)


NULL_ARRAYS: dict[str, tuple[bytes, bytes]] = {
    # Metadata v12 response: throttle, brokers null (compact 0), cluster id null, controller, topics
    "metadata-brokers": (
        _metadata_request(1),
        frame(struct.pack(">i", 1) + b"\x00" + struct.pack(">i", 0) + b"\x00\x00"
              + struct.pack(">i", 1) + b"\x01\x00"),
    ),
    "metadata-topics": (
        _metadata_request(1),
        frame(struct.pack(">i", 1) + b"\x00" + struct.pack(">i", 0) + b"\x01\x00"
              + struct.pack(">i", 1) + b"\x00\x00"),
    ),
    # ApiVersions v3 response: error 0, api_keys null, throttle
    "api-versions-keys": (
        frame(struct.pack(">hhih", 18, 3, 1, 2) + b"me\x00\x01\x01\x00"),
        frame(struct.pack(">ih", 1, 0) + b"\x00" + struct.pack(">i", 0) + b"\x00"),
    ),
    # Fetch v12 response: throttle, error, session, responses null (runs after the send)
    "fetch-responses": (
        _fetch_v12_request(1),
        frame(struct.pack(">i", 1) + b"\x00" + struct.pack(">ihi", 0, 0, 0) + b"\x00\x00"),
    ),
    # Produce v9 request: transactional id null, acks -1, timeout, topic_data null
    "produce-topic-data": (
        frame(struct.pack(">hhih", 0, 9, 1, 2) + b"me\x00"
              + b"\x00" + struct.pack(">hi", -1, 1000) + b"\x00\x00"),
        b"",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("request_", "response"), NULL_ARRAYS.values(), ids=NULL_ARRAYS)
def test_a_null_array_is_a_protocol_error_or_passed_through(
    request_: bytes, response: bytes
) -> None:
    exchange = _exchange(traced=True)
    try:
        feed(exchange, True, request_)
        if response:
            feed(exchange, False, response)
    except ProtocolError:
        pass


def test_a_broker_id_with_no_local_port_is_a_protocol_error() -> None:
    exchange = _exchange()
    exchange.from_client(_metadata_request(1))
    response = metadata_v12.MetadataResponse(
        throttle_time=datetime.timedelta(0),
        brokers=(
            metadata_v12.MetadataResponseBroker(node_id=i32(30000), host="b", port=i32(9092)),
        ),
        cluster_id=None,
        controller_id=i32(1),
        topics=(),
    )
    with pytest.raises(ProtocolError):
        exchange.from_server(response_frame(response, 1))
