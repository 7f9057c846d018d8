"""Property tests of the codecs: byte-exact round trips, and only the codec's errors on bad input.

Round trips: kio payloads generated from their own schemas (Produce, Fetch, Metadata, every version
kio has) decode and re-encode to the same bytes; request headers parse back to what was encoded;
record batches written by kafka-python parse back to the records written, and again after
add_headers; FrameScanner hands back exactly the bytes it was fed, however they are split.
Bad input: random bytes and mutated captured frames (bit flips, truncation, length fields set to
huge or negative values) reach headers, messages, records and the whole KafkaExchange with tracing
registered; only ProtocolError / FrameTooLarge / RecordBatchError / CompressionError may escape.
Bugs already found are counted and skipped (KNOWN_BUGS in atheris_targets.py, each with a strict
xfail in test_hostile_input.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import struct
import warnings
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import _introspect as introspect
from kio.static.primitive import i16, i32

from proxy.codec.apis import ApiKey, request_schema, response_schema, supported_versions
from proxy.codec.compression import Codec
from proxy.codec.errors import FrameTooLarge
from proxy.codec.framing import SIZE_PREFIX, Forward, FrameScanner, Held, frame
from proxy.codec.headers import REQUEST_PEEK_SIZE, parse_request_header
from proxy.codec.messages import decode_request, decode_response, encode
from proxy.codec.records import add_headers, iter_batches
from proxy.codec.varint import read_uvarint, write_uvarint

from . import atheris_targets as targets
from .atheris_targets import ALLOWED, kio_abort_guard, run_target

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

FAST = settings(deadline=None, max_examples=150, suppress_health_check=list(HealthCheck))
THOROUGH = settings(deadline=None, max_examples=600, suppress_health_check=list(HealthCheck))


# -- frames ----------------------------------------------------------------------------------------


def _request(api_key: int, correlation_id: int, payload: bytes) -> bytes:
    return frame(struct.pack(">hhih", api_key, 1, correlation_id, -1) + payload)


@st.composite
def request_streams(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    frames = draw(
        st.lists(
            st.builds(
                _request,
                st.sampled_from([0, 1, 3, 18, 1000]),
                st.integers(-(2**31), 2**31 - 1),
                st.binary(max_size=300),
            ),
            max_size=8,
        )
    )
    stream = b"".join(frames)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=10))
    return frames, sorted(cuts)


@FAST
@given(request_streams(), st.sets(st.sampled_from([0, 1, 3, 18, 1000])))
def test_frame_scanner_returns_every_byte_in_order_however_the_stream_is_split(
    stream: tuple[list[bytes], list[int]], held_keys: set[int]
) -> None:
    frames, cuts = stream
    data = b"".join(frames)

    def classify(peek: memoryview, size: int) -> Any:
        api_key = struct.unpack_from(">h", peek)[0]
        return api_key if api_key in held_keys else None

    scanner = FrameScanner(peek_size=REQUEST_PEEK_SIZE, max_frame_size=1 << 16, classify=classify)
    out = bytearray()
    held: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        for piece in scanner.feed(data[start:end]):
            if isinstance(piece, Held):
                held.append(bytes(piece.frame))
                out += piece.frame
            else:
                assert isinstance(piece, Forward)
                out += piece.data
    assert bytes(out) == data
    assert scanner.at_frame_boundary
    assert held == [f for f in frames if struct.unpack_from(">h", f, 4)[0] in held_keys]


@FAST
@given(st.integers(1 << 10, 1 << 20), st.integers(-(2**31), 2**31 - 1), st.integers(0, 3))
def test_frame_scanner_refuses_sizes_out_of_range_before_emitting_them(
    maximum: int, size: int, split: int
) -> None:
    assume(size < 0 or size > maximum)
    scanner = FrameScanner(
        peek_size=REQUEST_PEEK_SIZE, max_frame_size=maximum, classify=lambda p, s: None
    )
    data = struct.pack(">i", size) + b"\x00" * 16
    with pytest.raises(FrameTooLarge):
        assert scanner.feed(data[:split]) == []
        scanner.feed(data[split:])


# -- headers and varints ---------------------------------------------------------------------------


@FAST
@given(
    st.sampled_from([(0, 8), (0, 9), (1, 11), (1, 12), (3, 8), (3, 12), (18, 2), (18, 3)]),
    st.integers(-(2**31), 2**31 - 1),
    st.none() | st.text(max_size=40),
    st.binary(max_size=40),
)
def test_request_header_parses_back_to_what_was_encoded(
    api: tuple[int, int], correlation_id: int, client_id: str | None, payload: bytes
) -> None:
    api_key, version = api
    flexible = request_schema(api_key, version).__flexible__
    header_type = RequestHeaderV2 if flexible else RequestHeaderV1
    header = encode(
        header_type(
            request_api_key=i16(api_key),
            request_api_version=i16(version),
            correlation_id=i32(correlation_id),
            client_id=client_id,
        )
    )
    parsed = parse_request_header(header + payload)
    assert (parsed.api_key, parsed.api_version, parsed.correlation_id) == (
        api_key,
        version,
        correlation_id,
    )
    assert parsed.client_id == client_id
    assert parsed.size == len(header)


@FAST
@given(st.integers(0, 2**32 - 1))
def test_protocol_uvarint_round_trips(value: int) -> None:
    encoded = write_uvarint(value)
    assert read_uvarint(encoded + b"\x00", 0) == (value, len(encoded))


# -- kio payloads from their own schemas -----------------------------------------------------------

_INTS = {
    "int8": 8,
    "int16": 16,
    "int32": 32,
    "int64": 64,
}


def _primitive(kafka_type: str) -> st.SearchStrategy[Any]:
    if kafka_type in _INTS:
        bits = _INTS[kafka_type]
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if kafka_type == "uint16":
        return st.integers(0, 2**16 - 1)
    if kafka_type == "float64":
        return st.floats(allow_nan=False)
    if kafka_type == "bool":
        return st.booleans()
    if kafka_type == "string":
        return st.text(max_size=12)
    if kafka_type in ("bytes", "records"):
        return st.binary(max_size=24)
    if kafka_type == "uuid":
        # kio reads the all-zero topic id as None: a drawn zero would not round-trip.
        return st.uuids().filter(lambda u: u.int != 0)
    if kafka_type == "error_code":
        return st.sampled_from(list(ErrorCode))
    if kafka_type == "timedelta_i32":
        return st.integers(0, 2**31 - 1).map(lambda ms: datetime.timedelta(milliseconds=ms))
    if kafka_type == "timedelta_i64":
        return st.integers(0, 2**40).map(lambda ms: datetime.timedelta(milliseconds=ms))
    if kafka_type == "datetime_i64":
        return st.integers(0, 2**41).map(
            lambda ms: datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
        )
    raise NotImplementedError(kafka_type)


@cache
def entities(entity: type) -> st.SearchStrategy[Any]:
    """Instances of a kio dataclass with every field drawn from its Kafka type."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in dataclasses.fields(entity):
        kind = introspect.classify_field(field)
        if isinstance(kind, introspect.EntityField | introspect.EntityTupleField):
            element = st.deferred(lambda t=kind.type_: entities(t))
        else:
            element = _primitive(introspect.get_schema_field_type(field))
        strategy = st.lists(element, max_size=3).map(tuple) if kind.is_array else element
        if introspect.is_optional(field):
            strategy = st.none() | strategy
        fields[field.name] = strategy
    return st.builds(entity, **fields)


def _versions(api_key: int) -> list[int]:
    low, high = supported_versions(api_key) or (0, -1)
    return list(range(low, high + 1))


ROUND_TRIPS = [
    (api_key, version, request)
    for api_key in (ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.METADATA)
    for version in _versions(api_key)
    for request in (True, False)
]


@st.composite
def payloads(draw: st.DrawFn) -> tuple[int, int, bool, Any]:
    api_key, version, request = draw(st.sampled_from(ROUND_TRIPS))
    schema = (request_schema if request else response_schema)(api_key, version)
    return api_key, version, request, draw(entities(schema))


@THOROUGH
@given(payloads(), st.integers(0, 2**31 - 1))
def test_kio_payloads_decode_and_re_encode_byte_for_byte(
    generated: tuple[int, int, bool, Any], correlation_id: int
) -> None:
    api_key, version, request, payload = generated
    try:
        encoded = encode(payload)
    except (ValueError, OverflowError, struct.error):
        assume(False)  # a value kio's writer refuses (e.g. a null in a field it cannot encode)
    if request:
        decoded = decode_request(api_key, version, encoded, 0)
        assert encode(decoded) == encoded
    else:
        flexible = response_schema(api_key, version).__flexible__
        header = struct.pack(">i", correlation_id) + (b"\x00" if flexible else b"")
        header_size, decoded = decode_response(api_key, version, header + encoded)
        assert header_size == len(header)
        assert encode(decoded) == encoded
    assert decoded == payload


# -- record batches --------------------------------------------------------------------------------

header_lists = st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)), max_size=3
)
records_strategy = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=40), st.none() | st.binary(max_size=200), header_lists
    ),
    min_size=1,
    max_size=12,
)


def _build(
    records: list[tuple[bytes | None, bytes | None, list]],
    codec: int,
    base_timestamp: int,
    producer: tuple[int, int, int],
    transactional: bool,
) -> bytes:
    producer_id, epoch, sequence = producer
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=sequence,
        batch_size=1 << 22,
    )
    for offset, (key, value, headers) in enumerate(records):
        builder.append(
            offset, timestamp=base_timestamp + offset * 7, key=key, value=value, headers=headers
        )
    return bytes(builder.build())


batch_args = st.tuples(
    records_strategy,
    st.sampled_from(list(Codec)),
    st.integers(0, 2**41),
    st.tuples(st.integers(-1, 2**40), st.integers(-1, 2**15 - 1), st.integers(-1, 2**30)),
    st.booleans(),
)


@FAST
@given(batch_args)
def test_batches_written_by_kafka_python_parse_back_to_the_same_records(args: tuple) -> None:
    records, codec, base_timestamp, producer, transactional = args
    batch = _build(records, int(codec), base_timestamp, producer, transactional)
    (view,) = iter_batches(batch)
    assert view.crc_is_valid()
    # kafka-python (like librdkafka) sends a batch uncompressed when compressing does not shrink it.
    assert view.compression in (codec, Codec.NONE)
    assert (view.is_transactional, view.record_count) == (transactional, len(records))
    assert (view.producer_id, view.producer_epoch, view.base_sequence) == producer
    parsed = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in view.records()]
    assert parsed == [
        (i, base_timestamp + i * 7, key, value, headers)
        for i, (key, value, headers) in enumerate(records)
    ]


@FAST
@given(batch_args, st.lists(header_lists, min_size=12, max_size=12))
def test_add_headers_then_parse_gives_each_record_its_new_headers(
    args: tuple, extra: list[list[tuple[str, bytes | None]]]
) -> None:
    records, codec, base_timestamp, producer, transactional = args
    batch = _build(records, int(codec), base_timestamp, producer, transactional)
    calls = iter(extra)
    rebuilt = add_headers(batch, lambda record: next(calls))
    added = extra[: len(records)]
    if not any(added):
        assert rebuilt is None
        return
    assert rebuilt is not None
    (before,) = iter_batches(batch)
    (after,) = iter_batches(rebuilt)
    assert after.crc_is_valid()
    for name in (
        "base_offset",
        "attributes",
        "last_offset_delta",
        "base_timestamp",
        "max_timestamp",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "record_count",
        "partition_leader_epoch",
    ):
        assert getattr(after, name) == getattr(before, name), name
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in after.records()] == [
        (r.offset, r.timestamp, r.key, r.value, (*r.headers, *more))
        for r, more in zip(before.records(), added, strict=True)
    ]
    # kafka-python's own reader (CRC check included) agrees.
    theirs = DefaultRecordBatch(bytearray(rebuilt))
    assert theirs.validate_crc()
    assert [list(r.headers) for r in theirs] == [
        [*headers, *more] for (_, _, headers), more in zip(records, added, strict=True)
    ]


@FAST
@given(st.lists(batch_args, min_size=1, max_size=3), st.integers(1, 200))
def test_a_cut_off_last_batch_is_ignored(batches: list[tuple], cut: int) -> None:
    built = [_build(*args) for args in batches]
    data = b"".join(built)
    cut = min(cut, len(built[-1]) - 1)
    whole = list(iter_batches(data[: len(data) - cut]))
    assert [bytes(b.raw) for b in whole] == built[:-1]


# -- bad input: only the codec's own errors --------------------------------------------------------

DECODED_APIS = [
    (api_key, version)
    for api_key in (ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.METADATA, ApiKey.API_VERSIONS)
    for version in _versions(api_key)
]


@THOROUGH
@given(st.sampled_from(DECODED_APIS), st.booleans(), st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors_from_the_message_decoders(
    api: tuple[int, int], request: bool, data: bytes
) -> None:
    with kio_abort_guard():
        try:
            if request:
                decode_request(*api, data, 0)
            else:
                decode_response(*api, data)
        except ALLOWED:
            pass
        except targets.KioWouldAbort:
            targets.STATS["known_bug:kio_array_reserve_abort"] += 1


@THOROUGH
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors_from_headers_and_records(data: bytes) -> None:
    for step in (parse_request_header, lambda d: [list(b.records()) for b in iter_batches(d)]):
        with contextlib.suppress(ALLOWED):
            step(data)
    run_target("records", data)
    run_target("frames", data)
    run_target("propagation", data)


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """A captured frame with a few hostile edits."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "length", "byte", "insert", "delete"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "length":  # an int32 or a 5-byte uvarint length, huge or negative
            data[at : at + 4] = draw(
                st.sampled_from(
                    [
                        b"\x7f\xff\xff\xff",
                        b"\xff\xff\xff\xff",
                        b"\x80\x00\x00\x00",
                        b"\x00\x00\x00\x00",
                        b"\xff\xff\xff\x0f",
                        b"\xfe\xff\xff\xff",
                    ]
                )
            )
        elif kind == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x04, 0x07, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> tuple[int, int, targets.Frame, bytes]:
    table = targets.conversations()
    c_index = draw(st.integers(0, len(table) - 1))
    f_index = draw(st.integers(0, len(table[c_index]) - 1))
    original = table[c_index][f_index]
    return c_index, f_index, original, draw(mutations(original.data))


@THOROUGH
@given(mutated_frames())
def test_mutated_captured_frames_raise_only_codec_errors_from_the_decoders(
    case: tuple[int, int, targets.Frame, bytes],
) -> None:
    _, _, original, data = case
    body = memoryview(data)[SIZE_PREFIX:]
    with kio_abort_guard():
        try:
            if original.is_request:
                header = parse_request_header(body)
                if header.size is not None:
                    decode_request(header.api_key, header.api_version, body, header.size)
            else:
                decode_response(original.api_key, original.api_version, body)
        except ALLOWED:
            pass
        except KeyError:
            pass  # a mutated api key/version kio has no schema for: the exchange never asks
        except targets.KioWouldAbort:
            targets.STATS["known_bug:kio_array_reserve_abort"] += 1


@THOROUGH
@given(mutated_frames())
def test_mutated_captured_frames_raise_only_codec_errors_from_a_traced_exchange(
    case: tuple[int, int, targets.Frame, bytes],
) -> None:
    c_index, f_index, _, data = case
    run_target("exchange", bytes([c_index, f_index]) + data)


@THOROUGH
@given(st.sampled_from(targets.captured_record_sets()), st.data())
def test_mutated_captured_record_batches_raise_only_codec_errors(
    records: bytes, data: st.DataObject
) -> None:
    run_target("records", data.draw(mutations(records)))


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_every_seed_input_runs_clean(name: str) -> None:
    for seed in targets.seeds(name):
        run_target(name, seed)


def test_the_kio_guard_spots_the_known_abort_and_nothing_in_real_traffic() -> None:
    produce_v9 = request_schema(ApiKey.PRODUCE, 9)
    lying = b"\x00" + struct.pack(">hi", -1, 1000) + b"\xff\xff\xff\xff\x0f"
    assert targets.kio_would_abort(produce_v9, lying, 0)
    for conversation in targets.conversations():
        for captured in conversation:
            body = memoryview(captured.data)[SIZE_PREFIX:]
            if captured.is_request:
                header = parse_request_header(body)
                if header.size is None:
                    continue
                schema, offset = request_schema(header.api_key, header.api_version), header.size
            else:
                try:
                    schema = response_schema(captured.api_key, captured.api_version)
                except KeyError:
                    continue
                offset = 4 + (1 if schema.__flexible__ and captured.api_key != 18 else 0)
            assert not targets.kio_would_abort(schema, body, offset)
