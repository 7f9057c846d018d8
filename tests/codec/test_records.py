"""Record batch v2 codec, checked against batches written by real Kafka clients."""

from __future__ import annotations

import importlib.util
import struct
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import cramjam
import crc32c
import pytest
from aiokafka.record.default_records import DefaultRecordBatch as AioDefaultRecordBatch
from aiokafka.record.default_records import (
    DefaultRecordBatchBuilder as AioDefaultRecordBatchBuilder,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.codec.compression import Codec, CompressionError, compress, decompress
from proxy.codec.records import (
    BatchView,
    RecordBatchError,
    RecordView,
    add_headers,
    append_header_to_each,
    iter_batches,
    record_starts_holding,
)

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its JSON schemas with a deprecated importlib API at import time,
    # and the warning is attributed to importlib, so pyproject's kafka.* filter misses it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka.codec
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
    from kafka.record.legacy_records import LegacyRecordBatchBuilder

FIXTURES = Path(__file__).parent / "fixtures"
TRACEPARENT = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
CODECS = list(Codec)
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def _load_capture_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "capture_librdkafka", FIXTURES / "capture_librdkafka.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LIBRDKAFKA = _load_capture_module()

# A transactional, idempotent batch: the fields a rebuild most often gets wrong.
PRODUCER = {"producer_id": 987_654_321, "producer_epoch": 7, "base_sequence": 4242}
BASE_TIMESTAMP = 1_700_000_000_123
RECORDS: list[Record] = [
    (b"key-0", b"value-0" * 40, [("h", b"1")], BASE_TIMESTAMP),
    (None, b"value-1" * 40, [], BASE_TIMESTAMP + 1),
    (b"key-2", None, [("null", None), ("empty", b"")], BASE_TIMESTAMP + 999),
    (
        b"",
        b"",
        [("\u043a\u043b\u044e\u0447", "\u00e9t\u00e9".encode())],
        BASE_TIMESTAMP + 86_400_000,
    ),
    (b"key-4", b"x" * 3000, [], BASE_TIMESTAMP - 5),
]


@pytest.fixture(scope="module", autouse=True)
def kafka_python_snappy() -> Iterator[None]:
    """kafka-python wants python-snappy (which wraps cramjam); give it the same raw functions."""
    original = kafka.codec.snappy
    if original is None:
        kafka.codec.snappy = types.SimpleNamespace(
            compress=lambda data: bytes(cramjam.snappy.compress_raw(data)),
            decompress=lambda data: bytes(cramjam.snappy.decompress_raw(data)),
        )
    yield
    kafka.codec.snappy = original


def build_kafka_python(
    records: list[Record], codec: int, *, transactional: bool = True, first_offset: int = 0
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=transactional,
        batch_size=1 << 30,
        **PRODUCER,
    )
    for index, (key, value, headers, timestamp) in enumerate(records):
        builder.append(first_offset + index, timestamp, key, value, headers)
    return bytes(builder.build())


def build_aiokafka(records: list[Record], codec: int) -> bytes:
    builder = AioDefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=1, batch_size=1 << 30, **PRODUCER
    )
    for index, (key, value, headers, timestamp) in enumerate(records):
        builder.append(index, timestamp, key, value, headers)
    return bytes(builder.build())


BUILDERS = {"kafka-python": build_kafka_python, "aiokafka": build_aiokafka}


def as_tuples(batch: BatchView) -> list[tuple]:
    return [
        (record.offset, record.key, record.value, list(record.headers), record.timestamp)
        for record in batch.records()
    ]


def expected_tuples(records: list[Record], first_offset: int = 0) -> list[tuple]:
    return [
        (first_offset + index, key, value, headers, timestamp)
        for index, (key, value, headers, timestamp) in enumerate(records)
    ]


def add_traceparent(_record: RecordView) -> list[tuple[str, bytes]]:
    return [TRACEPARENT]


def with_attributes(batch: bytes, attributes: int) -> bytes:
    """Rewrite a batch's attributes and fix its CRC, as a broker would have written it."""
    patched = bytearray(batch)
    struct.pack_into(">h", patched, 21, attributes)
    struct.pack_into(">I", patched, 17, crc32c.crc32c(bytes(patched[21:])))
    return bytes(patched)


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", LIBRDKAFKA.CODECS)
def test_reads_librdkafka_batches(codec: str) -> None:
    batches = list(iter_batches((FIXTURES / f"librdkafka_{codec}.bin").read_bytes()))
    assert len(batches) == 1
    batch = batches[0]
    assert batch.magic == 2
    assert batch.compression == Codec[codec.upper()]
    assert batch.crc_is_valid()
    assert batch.record_count == len(LIBRDKAFKA.MESSAGES)
    assert as_tuples(batch) == expected_tuples(LIBRDKAFKA.MESSAGES)


def test_librdkafka_snappy_is_raw_not_xerial() -> None:
    """librdkafka and Java disagree on snappy framing: both must survive a rewrite."""
    batch = next(iter_batches((FIXTURES / "librdkafka_snappy.bin").read_bytes()))
    assert not bytes(batch.raw[61:]).startswith(b"\x82SNAPPY")


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_reads_client_built_batches(builder: str, codec: Codec) -> None:
    raw = BUILDERS[builder](RECORDS, codec)
    (batch,) = iter_batches(raw)
    assert batch.compression == codec  # the test data compresses: no silent fallback to none
    assert batch.is_transactional and not batch.is_control and not batch.is_legacy
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (
        PRODUCER["producer_id"],
        PRODUCER["producer_epoch"],
        PRODUCER["base_sequence"],
    )
    assert batch.record_count == len(RECORDS)
    assert batch.base_timestamp == RECORDS[0][3]  # the first record, so deltas can be negative
    assert batch.timestamp_type == 0
    assert batch.crc_is_valid()
    assert as_tuples(batch) == expected_tuples(RECORDS)


def test_offsets_are_base_plus_delta() -> None:
    raw = bytearray(build_kafka_python(RECORDS, Codec.NONE, first_offset=3))
    struct.pack_into(">q", raw, 0, 5000)  # baseOffset is outside the CRC: as a broker assigns it
    (batch,) = iter_batches(bytes(raw))
    assert batch.base_offset == 5000
    assert [r.offset for r in batch.records()] == list(range(5003, 5003 + len(RECORDS)))


def test_log_append_time_gives_every_record_the_max_timestamp() -> None:
    raw = with_attributes(build_kafka_python(RECORDS, Codec.NONE), 0x08 | 0x10)
    (batch,) = iter_batches(raw)
    assert batch.timestamp_type == 1
    assert {record.timestamp for record in batch.records()} == {batch.max_timestamp}


def test_records_decompress_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.codec.records as records_module

    calls: list[int] = []

    def counting_decompress(codec: int, data: bytes, *, max_size: int) -> bytes:
        calls.append(codec)
        return decompress(codec, data, max_size=max_size)

    monkeypatch.setattr(records_module, "decompress", counting_decompress)
    (batch,) = iter_batches(build_kafka_python(RECORDS, Codec.ZSTD))
    assert calls == []
    assert len(list(batch.records())) == len(RECORDS)
    assert calls == [Codec.ZSTD]


def test_key_and_value_are_read_in_place() -> None:
    raw = build_kafka_python(RECORDS, Codec.NONE)
    first = next(next(iter_batches(raw)).records())
    assert first._buf.obj is raw  # a view on the caller's bytes, not a copy


def test_several_batches_and_a_partial_tail() -> None:
    first = build_kafka_python(RECORDS[:2], Codec.NONE)
    second = build_kafka_python(RECORDS[2:], Codec.LZ4, first_offset=2)
    third = build_kafka_python(RECORDS, Codec.GZIP, first_offset=5)
    for cut in [0, 1, 11, 12, 13, 60, 61, len(third) // 2, len(third) - 1]:
        batches = list(iter_batches(first + second + third[:cut]))
        assert len(batches) == 2, cut
        assert [r.offset for b in batches for r in b.records()] == list(range(len(RECORDS)))
    assert len(list(iter_batches(first + second + third))) == 3


def test_empty_records_field_has_no_batches() -> None:
    assert list(iter_batches(b"")) == []


@pytest.mark.parametrize("magic", [0, 1])
@pytest.mark.parametrize("codec", [Codec.NONE, Codec.GZIP], ids=lambda c: c.name)
def test_legacy_message_sets_are_tolerated(magic: int, codec: Codec) -> None:
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=codec, batch_size=1 << 20)
    for offset in range(3):
        builder.append(offset, timestamp=BASE_TIMESTAMP if magic else None, key=b"k", value=b"v")
    legacy = bytes(builder.build())
    modern = build_kafka_python(RECORDS, Codec.NONE, first_offset=3)
    batches = list(iter_batches(legacy + modern))
    legacy_batches = [batch for batch in batches if batch.is_legacy]
    assert legacy_batches and all(batch.magic == magic for batch in legacy_batches)
    assert all(list(batch.records()) == [] for batch in legacy_batches)
    assert not batches[-1].is_legacy and len(list(batches[-1].records())) == len(RECORDS)
    for batch in legacy_batches:
        assert add_headers(batch.raw, add_traceparent) is None


# --- adding headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_add_headers_round_trip(builder: str, codec: Codec) -> None:
    original = BUILDERS[builder](RECORDS, codec)
    rewritten = add_headers(original, add_traceparent)
    assert rewritten is not None
    (batch,) = iter_batches(rewritten)
    assert batch.crc_is_valid()
    expected = [
        (offset, key, value, [*headers, TRACEPARENT], timestamp)
        for offset, key, value, headers, timestamp in expected_tuples(RECORDS)
    ]
    assert as_tuples(batch) == expected

    # The clients' own readers accept it, CRC included.
    for reader in (DefaultRecordBatch(rewritten), AioDefaultRecordBatch(rewritten)):
        assert reader.validate_crc()
        assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in reader] == [
            (offset, timestamp, key, value, [tuple(h) for h in headers])
            for offset, key, value, headers, timestamp in expected
        ]


@pytest.mark.parametrize("codec", LIBRDKAFKA.CODECS)
def test_add_headers_to_librdkafka_batches(codec: str) -> None:
    original = (FIXTURES / f"librdkafka_{codec}.bin").read_bytes()
    rewritten = add_headers(original, add_traceparent)
    assert rewritten is not None
    assert rewritten[21:23] == original[21:23]
    assert DefaultRecordBatch(rewritten).validate_crc()
    expected = [
        (offset, key, value, [*headers, TRACEPARENT], timestamp)
        for offset, key, value, headers, timestamp in expected_tuples(LIBRDKAFKA.MESSAGES)
    ]
    assert as_tuples(next(iter_batches(rewritten))) == expected


def test_snappy_framing_survives_add_headers() -> None:
    raw_snappy = (FIXTURES / "librdkafka_snappy.bin").read_bytes()
    xerial_snappy = build_kafka_python(RECORDS, Codec.SNAPPY)
    for original in (raw_snappy, xerial_snappy):
        rewritten = add_headers(original, add_traceparent)
        assert rewritten is not None
        was_xerial = original[61:68] == b"\x82SNAPPY"
        assert (rewritten[61:68] == b"\x82SNAPPY") == was_xerial


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_add_headers_keeps_batch_fields_byte_identical(codec: Codec) -> None:
    original = build_kafka_python(RECORDS, codec, first_offset=0)
    rewritten = add_headers(original, add_traceparent)
    assert rewritten is not None
    # baseOffset; partitionLeaderEpoch + magic; attributes .. recordCount.
    assert rewritten[0:8] == original[0:8]
    assert rewritten[12:17] == original[12:17]
    assert rewritten[21:61] == original[21:61]
    assert struct.unpack_from(">i", rewritten, 8)[0] == len(rewritten) - 12


def test_add_headers_splices_records_without_reserialising_them() -> None:
    original = build_kafka_python(RECORDS, Codec.NONE)
    rewritten = add_headers(original, lambda r: [TRACEPARENT] if r.offset == 2 else [])
    assert rewritten is not None
    before = _record_slices(original)
    after = _record_slices(rewritten)
    assert [after[i] for i in (0, 1, 3, 4)] == [before[i] for i in (0, 1, 3, 4)]
    # The touched record keeps everything up to its header count.
    old, new = before[2], after[2]
    assert new.endswith(b"\x16traceparent\x6e" + TRACEPARENT[1])
    assert old[1:12] in new  # attributes, deltas, key


def _record_slices(raw: bytes) -> list[bytes]:
    (batch,) = iter_batches(raw)
    body = bytes(batch.raw[61:])
    return [bytes(body[r._length_start : r._end]) for r in batch.records()]


def test_add_headers_returns_none_when_nothing_is_added() -> None:
    original = build_kafka_python(RECORDS, Codec.GZIP)
    seen: list[int] = []

    def nothing(record: RecordView) -> list[tuple[str, bytes]]:
        seen.append(record.offset)
        return []

    assert add_headers(original, nothing) is None
    assert seen == list(range(len(RECORDS)))


def test_add_headers_grows_varints_across_width_boundaries() -> None:
    """A record of 63 body bytes has a 1-byte length varint; adding headers makes it 2 bytes."""
    records: list[Record] = [(None, b"v" * 50, [], BASE_TIMESTAMP)]
    original = build_kafka_python(records, Codec.NONE)
    many = [(f"h{i}", b"x") for i in range(70)]  # header count 70 needs a 2-byte varint too
    rewritten = add_headers(original, lambda _r: many)
    assert rewritten is not None
    (record,) = DefaultRecordBatch(rewritten)
    assert list(record.headers) == many


def test_add_headers_accepts_memoryview_and_null_header_values() -> None:
    original = build_kafka_python(RECORDS, Codec.LZ4)
    rewritten = add_headers(memoryview(original), lambda _r: [("n", None)])
    assert rewritten is not None
    for record in next(iter_batches(rewritten)).records():
        assert record.headers[-1] == ("n", None)


def test_control_batches_are_never_touched() -> None:
    # An end-transaction marker: key = version 0, type 1 (commit); value = version, epoch.
    marker = build_kafka_python([(b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x05", [], 0)], 0)
    control = with_attributes(marker, 0x10 | 0x20)
    (batch,) = iter_batches(control)
    assert batch.is_control

    def must_not_be_called(_record: RecordView) -> list[tuple[str, bytes]]:
        raise AssertionError("callback called for a control batch")

    assert add_headers(control, must_not_be_called) is None


def test_corrupt_crc_is_not_re_signed() -> None:
    corrupt = bytearray(build_kafka_python(RECORDS, Codec.NONE))
    corrupt[-1] ^= 0xFF
    with pytest.raises(RecordBatchError, match="CRC"):
        add_headers(bytes(corrupt), add_traceparent)


def test_decompression_cap_applies_to_batches() -> None:
    raw = build_kafka_python([(None, bytes(100_000), [], 0)], Codec.ZSTD)
    (batch,) = iter_batches(raw, max_decompressed_size=10_000)
    with pytest.raises(CompressionError):
        list(batch.records())
    with pytest.raises(CompressionError):
        add_headers(raw, add_traceparent, max_decompressed_size=10_000)


# --- malformed input ---------------------------------------------------------------------------


def _uncompressed_batch_with_body(body: bytes, record_count: int = 1) -> bytes:
    """A v2 batch with a hand-made records section and a correct CRC."""
    header = bytearray(build_kafka_python([(None, b"v", [], 0)], Codec.NONE, transactional=False))
    del header[61:]
    struct.pack_into(">i", header, 8, 49 + len(body))
    struct.pack_into(">i", header, 57, record_count)
    batch = bytes(header) + body
    return with_attributes(batch, 0)


def _record(body_after_length: bytes) -> bytes:
    return bytes([len(body_after_length) * 2]) + body_after_length  # zig-zag of a small length


@pytest.mark.parametrize(
    ("record_bytes", "message"),
    [
        # attributes, ts delta, offset delta, key len -1, value len 1 'v', header count
        (_record(b"\x00\x00\x00\x01\x02v\x00"), None),  # well-formed reference
        (_record(b"\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "varint"),  # 11-byte varlong
        (_record(b"\x00\x00\xff\xff\xff\xff\xff\x01"), "varint"),  # 6-byte varint
        (b"\x7f" + b"\x00\x00\x00\x01\x02v\x00", "does not fit"),  # record length lies
        (_record(b"\x00\x00\x00\x01\x7ev\x00"), "past the record"),  # value length lies
        (_record(b"\x00\x00\x00\x40v"), "past the record"),  # key length lies
        (_record(b"\x00\x00\x00\x01\x02v\x7f"), "header count"),  # negative header count
        (_record(b"\x00\x00\x00\x01\x02v\x60"), "header count"),  # more headers than bytes
        (_record(b"\x00\x00\x00\x01\x02v\x02\x01\x00"), "header key length"),  # key length -1
        (_record(b"\x00\x00\x00\x01\x02v\x02\x7e\x00"), "header key length"),  # beyond record
        (_record(b"\x00\x00\x00\x01\x02v\x02\x02\xff\x00"), "utf-8"),
        (_record(b"\x00\x00\x00\x01\x02v\x02\x02a\x7e"), "header value length"),
        (_record(b"\x00\x00\x00\x01\x02v\x02\x02a\x00zz"), "after its headers"),
        (_record(b"\x00\x00\x00\x01\x02v\x00zz"), "after its headers"),
        (_record(b"\x00\x00\x00\x01\x02v"), "truncated varint"),
        (_record(b"\x00\x80"), "truncated varint"),
    ],
)
def test_malformed_records_raise_record_batch_error(
    record_bytes: bytes, message: str | None
) -> None:
    batch = _uncompressed_batch_with_body(record_bytes)
    if message is None:
        assert len(list(next(iter_batches(batch)).records())) == 1
        return
    with pytest.raises(RecordBatchError, match=message):
        list(next(iter_batches(batch)).records())
    with pytest.raises(RecordBatchError, match=message):
        add_headers(batch, add_traceparent)


def test_record_count_must_match_the_body() -> None:
    record = _record(b"\x00\x00\x00\x01\x02v\x00")
    with pytest.raises(RecordBatchError, match="fewer than"):
        list(next(iter_batches(_uncompressed_batch_with_body(record, record_count=2))).records())
    with pytest.raises(RecordBatchError, match="left after"):
        list(next(iter_batches(_uncompressed_batch_with_body(record * 2))).records())
    with pytest.raises(RecordBatchError, match="negative"):
        list(next(iter_batches(_uncompressed_batch_with_body(record, -1))).records())


def test_impossible_batch_headers_raise() -> None:
    valid = build_kafka_python(RECORDS, Codec.NONE)
    negative_length = valid[:8] + struct.pack(">i", -5) + valid[12:]
    with pytest.raises(RecordBatchError, match="impossible"):
        list(iter_batches(negative_length))
    bad_magic = valid[:16] + b"\x03" + valid[17:]
    with pytest.raises(RecordBatchError, match="magic"):
        list(iter_batches(bad_magic))
    short_v2 = struct.pack(">qib", 0, 20, 0) + b"\x00" * 3 + b"\x02" + b"\x00" * 19
    with pytest.raises(RecordBatchError, match="too short"):
        list(iter_batches(short_v2))
    with pytest.raises(RecordBatchError, match="does not match"):
        BatchView(valid + b"\x00")
    with pytest.raises(RecordBatchError, match="does not match"):
        add_headers(valid[:-1], add_traceparent)


# --- properties --------------------------------------------------------------------------------

header_names = st.text(max_size=12)
header_values = st.one_of(st.none(), st.binary(max_size=40))
records_strategy = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=40)),
        st.one_of(st.none(), st.binary(max_size=200)),
        st.lists(st.tuples(header_names, header_values), max_size=5),
        st.integers(min_value=BASE_TIMESTAMP - 10**6, max_value=BASE_TIMESTAMP + 10**9),
    ),
    min_size=1,
    max_size=12,
)
# A compressible padding record so builders really use the codec instead of falling back.
PADDING: Record = (b"pad", b"p" * 300, [], BASE_TIMESTAMP)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=records_strategy,
    codec=st.sampled_from(CODECS),
    extra=st.lists(
        st.lists(st.tuples(header_names, st.binary(max_size=60)), max_size=3), min_size=13
    ),
)
def test_add_headers_then_parse_is_consistent(
    records: list[Record], codec: Codec, extra: list[list[tuple[str, bytes]]]
) -> None:
    records = [*records, PADDING]
    original = build_kafka_python(records, codec)
    rewritten = add_headers(original, lambda record: extra[record.offset])
    expected = [
        (offset, key, value, [*headers, *extra[offset]], timestamp)
        for offset, key, value, headers, timestamp in expected_tuples(records)
    ]
    if not any(extra[: len(records)]):
        assert rewritten is None
        return
    assert rewritten is not None
    (batch,) = iter_batches(rewritten)
    assert batch.crc_is_valid()
    assert batch.compression == codec
    assert as_tuples(batch) == expected
    assert rewritten[21:61] == original[21:61]
    reader = DefaultRecordBatch(rewritten)
    assert reader.validate_crc()
    assert [list(r.headers) for r in reader] == [e[3] for e in expected]


def _mutations() -> st.SearchStrategy:
    return st.lists(
        st.tuples(
            st.sampled_from(["flip", "truncate", "insert", "delete"]),
            st.integers(min_value=0),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    )


def _mutate(data: bytes, mutations: list[tuple[str, int, int]], *, skip: int = 0) -> bytes:
    buffer = bytearray(data)
    for kind, where, byte in mutations:
        if len(buffer) <= skip:
            break
        position = skip + where % (len(buffer) - skip)
        if kind == "flip":
            buffer[position] ^= byte or 1
        elif kind == "truncate":
            del buffer[position:]
        elif kind == "insert":
            buffer.insert(position, byte)
        else:
            del buffer[position]
    return bytes(buffer)


def _exercise(data: bytes) -> None:
    """Everything a proxy would do with untrusted bytes; only our two errors may escape."""
    try:
        for batch in iter_batches(data):
            for record in batch.records():
                _ = (record.key, record.value, record.headers, record.offset, record.timestamp)
            add_headers(batch.raw, add_traceparent)
        BatchView(data)
        add_headers(data, add_traceparent)
    except (RecordBatchError, CompressionError):
        pass


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), mutations=_mutations(), fix_crc=st.booleans())
def test_mutated_batches_raise_only_codec_errors(
    codec: Codec, mutations: list[tuple[str, int, int]], fix_crc: bool
) -> None:
    data = _mutate(build_kafka_python([*RECORDS[:3], PADDING], codec), mutations)
    if fix_crc and len(data) > 21:
        data = data[:17] + struct.pack(">I", crc32c.crc32c(data[21:])) + data[21:]
    _exercise(data)


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), mutations=_mutations())
def test_mutated_record_sections_raise_only_codec_errors(
    codec: Codec, mutations: list[tuple[str, int, int]]
) -> None:
    """Corrupt the decompressed records, then recompress and re-sign: the parser must cope."""
    original = build_kafka_python([*RECORDS[:3], PADDING], codec)
    body = decompress(codec, original[61:])
    mutated = compress(codec, _mutate(body, mutations))
    header = bytearray(original[:61])
    struct.pack_into(">i", header, 8, 49 + len(mutated))
    _exercise(with_attributes(bytes(header) + mutated, struct.unpack_from(">h", header, 21)[0]))


def test_record_starts_holding_steps_to_the_records_at_the_given_positions() -> None:
    batch = BatchView(
        build_kafka_python(
            [(f"k{i}".encode(), b"v" * (i * 30), [], 1000 + i) for i in range(12)], 0
        )
    )
    body = batch.body()
    everything = list(batch.records(body))
    starts = [r._start for r in everything]
    # Positions inside records 2 (twice), 7 and 11; records 0-1, 3-6, 8-10 are stepped over.
    positions = [starts[2], starts[2] + 3, starts[7] + 10, len(body) - 1]
    found = batch.records_at(body, record_starts_holding(body, 0, len(body), 12, positions))
    assert [r.offset for r in found] == [2, 7, 11]
    assert [r.key for r in found] == [b"k2", b"k7", b"k11"]
    assert record_starts_holding(body, 0, len(body), 12, []) == []


def test_record_starts_holding_rejects_a_record_length_past_the_body() -> None:
    raw = bytearray(build_kafka_python([(b"k", b"v" * 20, [], 1000)] * 3, 0))
    body_start = 61
    raw[body_start] = 0x7E  # first record's length: 63 bytes, more than the 3 records hold
    batch = BatchView(bytes(raw))
    with pytest.raises(RecordBatchError):
        body = batch.body()
        record_starts_holding(body, 0, len(body), 3, [len(body) - 1])


WIRE_TRACEPARENT = b"\x16traceparent\x6e" + TRACEPARENT[1]


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_append_header_to_each_writes_what_add_headers_writes(
    builder: str, codec: int, kafka_python_snappy: None
) -> None:
    records = [
        (None if i % 4 == 0 else f"key-{i}".encode(), b"v" * (i * 97), [], 1_700_000_000_000 + i)
        for i in range(40)
    ]
    raw = BUILDERS[builder](records, codec)
    view = BatchView(raw)
    appended = append_header_to_each(view, [WIRE_TRACEPARENT] * 40, [0, 17, 39])
    assert appended is not None
    rebuilt, wanted = appended
    assert rebuilt == add_headers(raw, add_traceparent)
    assert [(r.offset, r.key) for r in wanted] == [(0, None), (17, b"key-17"), (39, b"key-39")]
    (again,) = iter_batches(rebuilt)
    assert again.crc_is_valid()
    assert as_tuples(again) == [
        (offset, key, value, [TRACEPARENT], ts)
        for offset, key, value, _, ts in expected_tuples(records)
    ]


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=300)),
            st.one_of(st.none(), st.binary(max_size=20_000)),
        ),
        min_size=1,
        max_size=12,
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_append_header_to_each_matches_add_headers_on_any_record_shape(
    records: list[tuple[bytes | None, bytes | None]],
) -> None:
    raw = build_kafka_python([(k, v, [], 1_700_000_000_000) for k, v in records], 0)
    appended = append_header_to_each(BatchView(raw), [WIRE_TRACEPARENT] * len(records))
    assert appended is not None
    assert appended[0] == add_headers(raw, add_traceparent)


def test_append_header_to_each_leaves_batches_with_headers_to_the_general_path() -> None:
    raw = build_kafka_python(
        [(b"k", b"v", [], 1), (b"k", b"v", [("app", b"x")], 2), (b"k", b"v", [], 3)], 0
    )
    assert append_header_to_each(BatchView(raw), [WIRE_TRACEPARENT] * 3) is None
    # ...and so do a header count that does not match the records, and control batches.
    plain = build_kafka_python([(b"k", b"v", [], 1)] * 3, 0)
    assert append_header_to_each(BatchView(plain), [WIRE_TRACEPARENT] * 2) is None
    control = with_attributes(plain, 0x20)
    assert append_header_to_each(BatchView(control), [WIRE_TRACEPARENT] * 3) is None


def test_append_header_to_each_rejects_lying_lengths_and_bad_crcs() -> None:
    raw = bytearray(build_kafka_python([(b"k", b"v" * 20, [], 1000)] * 3, 0))
    raw[61] = 0xFE  # the first record claims more than the batch holds (CRC fixed below)
    raw[62] = 0x7F
    signed = with_attributes(bytes(raw), 0x10)
    with pytest.raises(RecordBatchError, match="does not fit"):
        append_header_to_each(BatchView(signed), [WIRE_TRACEPARENT] * 3)
    good = bytearray(build_kafka_python([(b"k", b"v" * 20, [], 1000)] * 3, 0))
    good[-3] ^= 0xFF  # payload byte changed, CRC not updated
    with pytest.raises(RecordBatchError, match="CRC"):
        append_header_to_each(BatchView(bytes(good)), [WIRE_TRACEPARENT] * 3)
