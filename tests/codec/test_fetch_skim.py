"""The fetch skim's batch walk (`skim_batches`) against its Python twin, and what it finds.

The consumer side calls it on every fetched partition when tracing, so it reads a broker's bytes:
both twins must give the same answer for any input, well-formed or damaged (the same result, or
RecordBatchError with the same message), and the answer must name exactly the records that carry
a sampled traceparent header, whatever else the batches hold.
"""

from __future__ import annotations

import random
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from proxy.codec import native
from proxy.codec.records import RECORDS_OFFSET, BatchView, RecordBatchError
from proxy.tracing import skim
from proxy.tracing.skim import Skim, skim_batches, skim_batches_python
from proxy.tracing.skim import sampled_record_starts_python as python_starts
from proxy.tracing.skim import sampled_traceparent_positions_python as python_search
from proxy.tracing.traceparent import format_traceparent, parse_traceparent
from tests.tracing.test_interceptors import build_batch

FIXTURES = Path(__file__).parent / "fixtures"
compiled = native.compiled


def batch(
    records: list[tuple[bytes | None, bytes | None, list]],
    *,
    base_offset: int = 0,
    codec: int = 0,
    control: bool = False,
) -> bytes:
    """A v2 batch as kafka-python writes it (a control batch when asked: the flag only)."""
    data = bytearray(build_batch(records, codec, base_offset=base_offset))
    if control:
        data[22] |= 0x20
    return bytes(data)


def traced(trace_id: int, sampled: bool, value: bytes = b"v" * 30) -> tuple:
    return (None, value, [("traceparent", format_traceparent(trace_id, 7, sampled))])


def legacy_message() -> bytes:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    builder.append(0, timestamp=1_700_000_000_000, key=None, value=b"old")
    return bytes(builder.build())


def partition() -> bytes:
    """A fetched partition as a broker sends it: plain, compressed, control and legacy batches,
    sampled and unsampled contexts, a value that spells a sampled header, a cut final batch."""
    plain = batch(
        [traced(i + 1, i in (2, 5)) for i in range(8)]
        + [(b"k", b"\x16traceparent\x6e" + format_traceparent(3, 4, True), [])],
        base_offset=100,
    )
    unsampled = batch([traced(i + 50, False) for i in range(6)], base_offset=109)
    compressed = batch([traced(i + 60, i == 1) for i in range(4)], base_offset=115, codec=1)
    marker = batch([(None, b"", [])], base_offset=119, control=True)
    untraced = batch([(b"key", b"value", [("other", b"x")])] * 3, base_offset=120)
    last = batch([traced(99, True)], base_offset=123)
    return plain + unsampled + legacy_message() + compressed + marker + untraced + last[:-5]


def both(records: bytes) -> Skim | str:
    """The Python twin's answer (or its error message), after checking the compiled twin's."""
    # Python all the way down: the twin's search too, not the compiled one it picks when built.
    with (
        mock.patch.object(skim, "sampled_traceparent_positions", python_search),
        mock.patch.object(skim, "sampled_record_starts", python_starts),
    ):
        try:
            expected: Skim | str = skim_batches_python(records)
        except RecordBatchError as exc:
            expected = f"error: {exc}"
    if compiled is not None:
        try:
            got: Skim | str = compiled.skim_batches(records)
        except ValueError as exc:
            got = f"error: {exc}"
        assert got == expected
        assert skim_batches is not skim_batches_python
    return expected


def test_the_skim_names_the_batches_and_records_that_carry_a_sampled_context() -> None:
    records = partition()
    highest, record_count, wanted = both(records)  # type: ignore[misc]
    # Data batches only: the legacy message, the control marker and the cut batch are not seen.
    assert highest == 122
    assert record_count == 9 + 6 + 4 + 3
    plain_starts = wanted[0][2]
    assert [w[2] is None for w in wanted] == [False, True]  # then the compressed one, to unpack
    view = memoryview(records)
    start, end, _ = wanted[0]
    found = BatchView(view[start:end]).records_at(view[start + RECORDS_OFFSET : end], plain_starts)
    # The two sampled contexts; not the record whose value spells one: headers are read by
    # their lengths, never searched for in payloads.
    assert [r.offset for r in found] == [102, 105]
    contexts = [parse_traceparent(dict(r.headers).get("traceparent")) for r in found]
    assert contexts == [(3, 7, True), (6, 7, True)]


def test_a_partition_without_sampled_contexts_names_no_uncompressed_batch() -> None:
    records = batch([traced(i + 1, False) for i in range(20)], base_offset=7)
    assert both(records) == (26, 20, [])
    assert both(b"") == (-1, 0, [])
    assert both(records[:-1]) == (-1, 0, [])  # the only batch is cut: nothing is seen yet


def test_offsets_beyond_64_bits_are_added_exactly() -> None:
    records = bytearray(batch([traced(1, False)] * 3, base_offset=(1 << 63) - 1))
    records[23:27] = (2).to_bytes(4, "big")  # lastOffsetDelta
    assert both(bytes(records))[0] == (1 << 63) + 1


@pytest.mark.parametrize(
    "name", ["librdkafka_none.bin", "librdkafka_gzip.bin", "librdkafka_lz4.bin"]
)
def test_batches_written_by_librdkafka_read_alike(name: str) -> None:
    records = (FIXTURES / name).read_bytes()
    _, count, wanted = both(records)  # type: ignore[misc]
    assert count == 4
    # No traceparent in them: only a compressed batch is named, for the caller to unpack.
    assert [w[2] for w in wanted] == ([] if name == "librdkafka_none.bin" else [None])


def damaged_copies(records: bytes, seed: int) -> list[bytes]:
    """Cuts, flipped bytes and lying lengths and counts, as a broken or hostile broker sends."""
    rng = random.Random(seed)
    copies = [records[:cut] for cut in range(0, len(records), 37)]
    for _ in range(150):
        damaged = bytearray(records)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        copies.append(bytes(damaged))
    for at, value in ((8, 0), (8, 13), (8, 0x7FFFFFF0), (16, 3), (57, 0xFFFFFFFF), (57, 1000)):
        damaged = bytearray(records)
        size = 1 if at == 16 else 4
        damaged[at : at + size] = value.to_bytes(size, "big")
        copies.append(bytes(damaged))
    return copies


def test_damaged_partitions_get_the_same_answer_from_both_twins() -> None:
    records = partition()
    answers = [both(copy) for copy in damaged_copies(records, seed=5)]
    # The copies reach every kind of answer: results, and the walk's and the steps' refusals.
    errors = {a.split(" at byte")[0].split(" ")[1] for a in answers if isinstance(a, str)}
    assert {"batch", "unknown", "record", "negative"} <= errors
    assert any(not isinstance(a, str) and a[2] for a in answers)


@given(
    records=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 1 << 40), st.booleans()).map(lambda t: traced(*t)),
            st.binary(max_size=80).map(lambda v: (None, v, [])),
            st.just((None, b"\x16traceparent\x6e" + format_traceparent(5, 6, True), [])),
        ),
        min_size=1,
        max_size=12,
    ),
    codec=st.sampled_from([0, 0, 1]),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=2),
)
@settings(max_examples=300, deadline=None)
def test_any_batch_gets_the_same_answer(
    records: list[tuple], codec: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(batch(records, codec=codec) * 2)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    both(bytes(data))
