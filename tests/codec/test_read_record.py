"""The compiled record reader (`read_record` in `_speedups.c`) against its Python twin.

Every record the proxy parses goes through it (sampled records on both sides, every record on
the general injection path), so it reads a peer's bytes: for records written by real clients and
for cut, flipped and lying copies of them, both twins must give the same fields or refuse with
the same message. The compiled twin may also answer None, for a value beyond 64 bits, which
the Python twin's integers then hold.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from proxy.codec import native
from proxy.codec.records import (
    BatchView,
    RecordBatchError,
    _read_record,
    _record_fields,
    iter_batches,
    record_fields_python,
)

FIXTURES = Path(__file__).parent / "fixtures"
compiled = native.compiled
pytestmark = pytest.mark.skipif(compiled is None, reason="the C extension is not built")


def body_of(records: list[tuple[bytes | None, bytes | None, list]]) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, (key, value, headers) in enumerate(records):
        builder.append(
            i, timestamp=1_700_000_000_000 + i * 7, key=key, value=value, headers=headers
        )
    return bytes(BatchView(builder.build()).body())


BODY = body_of(
    [
        (None, b"v", []),
        (b"key", None, [("traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")]),
        (b"", b"", [("h\u00e9", None), ("x", b""), ("y", b"z" * 200)]),
        (b"k" * 300, b"v" * 5000, [("a", b"1")] * 70),
    ]
)


def answer(data: bytes, pos: int, limit: int, append_time: int | None = None, **bases: int):
    """Both twins' answer: the fields, or the error message; compiled None means "ask Python"."""
    base_offset, base_timestamp = bases.get("base_offset", 40), bases.get("base_timestamp", 10**12)
    args = (memoryview(data), pos, limit, base_offset, base_timestamp, append_time)
    try:
        expected: object = record_fields_python(*args)
    except RecordBatchError as exc:
        expected = f"error: {exc}"
    assert compiled is not None
    try:
        got: object = compiled.read_record(*args)
    except ValueError as exc:
        got = f"error: {exc}"
    if got is not None:
        assert got == expected
    return expected


def record_starts(body: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(body):
        starts.append(pos)
        pos = record_fields_python(memoryview(body), pos, len(body), 0, 0, None)[2]
    return starts


def test_records_written_by_clients_read_alike() -> None:
    starts = record_starts(BODY)
    assert len(starts) == 4
    for at in starts:
        fields = answer(BODY, at, len(BODY))
        assert not isinstance(fields, str)
        assert answer(BODY, at, len(BODY), append_time=123)[4] == 123  # type: ignore[index]
    third = _read_record(memoryview(BODY), starts[2], len(BODY), 40, 10**12, None)
    assert (third.offset, third.key, third.value) == (42, b"", b"")
    assert third.headers == (("h\u00e9", None), ("x", b""), ("y", b"z" * 200))
    for name in ("librdkafka_none.bin", "librdkafka_gzip.bin", "librdkafka_zstd.bin"):
        (batch,) = iter_batches((FIXTURES / name).read_bytes())
        body = bytes(batch.body())
        for at in record_starts(body):
            assert not isinstance(answer(body, at, len(body)), str)


def test_cut_and_damaged_records_are_refused_alike() -> None:
    rng = random.Random(11)
    messages = set()
    for at in record_starts(BODY):
        for limit in range(at, len(BODY), 3):
            result = answer(BODY, at, limit)
            if isinstance(result, str):
                messages.add(result.split(" ")[1])
    starts = record_starts(BODY)
    for at, end in zip(starts, [*starts[1:], len(BODY)], strict=True):
        for _ in range(1000):
            damaged = bytearray(BODY)
            for _ in range(rng.randint(1, 3)):
                # Mostly in the record's fields and first headers, where damage is noticed.
                damaged[rng.randrange(at, min(end, at + 40 + rng.randrange(end - at)))] = (
                    rng.randrange(256)
                )
            result = answer(bytes(damaged), at, len(damaged))
            if isinstance(result, str):
                messages.add(result.split(" ")[1])
    # Lengths, varints, keys, values, header counts, header keys and trailing bytes all refused.
    assert {"record", "truncated", "impossible", "bad", "header"} <= messages


def test_values_beyond_64_bits_go_to_the_python_twin() -> None:
    # A 10-byte timestamp delta of 2**64 - 1 (zig-zag), then offset delta 0, null key and value.
    big = bytes([0]) + b"\xff" * 9 + b"\x7f" + b"\x00\x01\x01\x00"
    record = bytes([len(big) * 2]) + big
    assert compiled is not None
    args = (memoryview(record), 0, len(record), 0, 0, None)
    assert compiled.read_record(*args) is None
    assert _record_fields(*args) is None
    fields = _read_record(memoryview(record), 0, len(record), 0, 0, None)
    assert fields.timestamp == record_fields_python(*args)[4]
    assert abs(fields.timestamp) >= 1 << 63
    # A base offset at the int64 limit: the sum needs 65 bits.
    at = record_starts(BODY)[1]
    assert compiled.read_record(memoryview(BODY), at, len(BODY), (1 << 63) - 1, 0, None) is None
    assert _read_record(memoryview(BODY), at, len(BODY), (1 << 63) - 1, 0, None).offset == 1 << 63


@given(
    data=st.binary(min_size=1, max_size=60),
    base_offset=st.integers(-(1 << 63), (1 << 63) - 1),
    append_time=st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1)),
)
@settings(max_examples=500, deadline=None)
def test_any_bytes_read_alike(data: bytes, base_offset: int, append_time: int | None) -> None:
    answer(data, 0, len(data), append_time, base_offset=base_offset)


def test_overlong_varints_are_refused_alike() -> None:
    timestamp = bytes([0]) + b"\xff" * 10 + b"\x00" * 8  # no end within 10 bytes
    assert compiled is not None
    record = bytes([len(timestamp) * 2]) + timestamp
    with pytest.raises(ValueError, match="longer than 10"):  # refused, not handed to Python
        compiled.read_record(record, 0, len(record), 0, 0, None)
    offset = bytes([0, 0]) + b"\xff" * 5 + b"\x00" * 8  # no end within 5 bytes
    for fields, longest in ((timestamp, 10), (offset, 5)):
        record = bytes([len(fields) * 2]) + fields
        assert answer(record, 0, len(record)) == f"error: varint longer than {longest} bytes"


def test_arguments_outside_the_contract_raise_instead_of_crashing() -> None:
    assert compiled is not None
    for args, error in (
        ((b"", -1, 0), ValueError),
        ((b"\x02\x00", 2, 1), ValueError),
        ((b"\x02\x00", 0, 5), ValueError),
    ):
        with pytest.raises(error):
            compiled.read_record(*args, 0, 0, None)
    with pytest.raises(TypeError):
        compiled.read_record(b"\x02\x00", 0, 2, 0, 0, "x")
    with pytest.raises(OverflowError):
        compiled.read_record(b"\x02\x00", 0, 2, 0, 0, 1 << 64)
