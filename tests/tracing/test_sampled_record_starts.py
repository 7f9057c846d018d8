"""The fetch skim's record read (`sampled_record_starts`): which records of a batch body hold a
traceparent header with the sampled flag, found by the records' length prefixes.

The compiled twin reads every record's framing and never the payloads; the Python twin searches
the bytes first and reads the records only when the search hits. Both must name exactly the
records whose parsed headers hold a sampled traceparent when the body is well formed, and, when it
is not, the records holding the byte search's hits (or raise the same error), whatever the bytes.
"""

from __future__ import annotations

import random
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.codec import native
from proxy.codec.records import RECORDS_OFFSET, BatchView, RecordBatchError, record_starts_holding
from proxy.tracing import skim
from proxy.tracing.skim import (
    sampled_record_starts,
    sampled_record_starts_python,
    sampled_traceparent_positions_python,
)
from proxy.tracing.traceparent import WIRE_PREFIX, format_traceparent
from tests.tracing.test_interceptors import build_batch

compiled = native.compiled
SAMPLED = format_traceparent(0xAB, 0xCD, True)
UNSAMPLED = format_traceparent(0xAB, 0xCD, False)
SPELLED = WIRE_PREFIX + SAMPLED  # a sampled header's wire form, as payload bytes

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def body_of(records: list[Record], codec: int = 0) -> tuple[bytes, int]:
    """An uncompressed batch body as kafka-python writes it, and its record count."""
    return build_batch(records, codec)[RECORDS_OFFSET:], len(records)


def answer(data: bytes, start: int, end: int, count: int) -> list[int] | str:
    """The Python twin's answer (Python all the way down) or its error, after checking that the
    compiled twin, as the skim binds it, agrees."""
    with mock.patch.object(
        skim, "sampled_traceparent_positions", sampled_traceparent_positions_python
    ):
        try:
            expected: list[int] | str = sampled_record_starts_python(data, start, end, count)
        except RecordBatchError as exc:
            expected = f"error: {exc}"
    if compiled is not None:
        assert sampled_record_starts is not sampled_record_starts_python
        for buffer in (data, memoryview(data), bytearray(data)):
            try:
                got: list[int] | str = sampled_record_starts(buffer, start, end, count)
            except RecordBatchError as exc:
                got = f"error: {exc}"
            assert got == expected
    return expected


def parsed_starts(records: list[Record], codec: int = 0) -> list[int]:
    """The oracle for a well-formed body: the records whose parsed headers hold a traceparent of
    55 characters with the sampled flag (the strict parser has the last word on the rest)."""
    batch = BatchView(build_batch(records, codec))
    return [
        record._length_start
        for record in batch.records(batch.body())
        if any(
            key == "traceparent"
            and value is not None
            and len(value) == 55
            and value[-1:] in (b"1", b"3", b"5", b"7", b"9", b"b", b"d", b"f")
            for key, value in record.headers
        )
    ]


# -- well-formed bodies: exactly the records with a sampled header ------------------------------


def test_records_with_a_sampled_traceparent_header_are_named() -> None:
    records: list[Record] = [
        (None, b"v", [("traceparent", UNSAMPLED)]),
        (b"k", b"v" * 300, [("traceparent", SAMPLED)]),
        (None, None, []),
        (None, b"v", [("baggage", b"a=1"), ("traceparent", SAMPLED), ("other", None)]),
        (None, b"v", [("traceparent", format_traceparent(1, 2, True)[:-2] + b"03")]),
    ]
    body, count = body_of(records)
    starts = answer(body, 0, len(body), count)
    assert starts == parsed_starts(records)
    assert len(starts) == 3


@pytest.mark.parametrize(
    "record",
    [
        pytest.param((None, SPELLED, []), id="a value spelling a sampled header"),
        pytest.param((SPELLED, b"v", []), id="a key spelling one"),
        pytest.param((None, b"v", [("other", SPELLED)]), id="another header's value spelling one"),
        pytest.param((None, b"v", [("Traceparent", SAMPLED)]), id="another key's case"),
        pytest.param((None, b"v", [("traceparent", SAMPLED[:-1])]), id="a value one short"),
        pytest.param((None, b"v", [("traceparent", SAMPLED + b"1")]), id="a value one long"),
        pytest.param((None, b"v", [("traceparent", None)]), id="a null value"),
        pytest.param((None, b"v", [("traceparent", UNSAMPLED)]), id="the unsampled flag"),
    ],
)
def test_look_alikes_in_a_well_formed_body_are_not_named(record: Record) -> None:
    """What the byte search would stop at, or a header the strict parser refuses anyway: the
    record read passes it over."""
    body, count = body_of([(None, b"v", []), record, (None, b"w", [])])
    assert answer(body, 0, len(body), count) == []


def test_the_window_and_the_offsets_are_relative_to_start() -> None:
    records: list[Record] = [(None, b"v", []), (None, b"v", [("traceparent", SAMPLED)])]
    body, count = body_of(records)
    expected = parsed_starts(records)
    assert expected != []
    assert answer(b"\x00" * 7 + body + b"trailing", 7, 7 + len(body), count) == expected
    # An end past the data is the end of the data.
    assert answer(b"\x00" * 7 + body, 7, 10**9, count) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=20), st.just(SPELLED)),
            st.one_of(st.none(), st.binary(max_size=300), st.just(SPELLED)),
            st.lists(
                st.tuples(
                    st.sampled_from(["traceparent", "tracestate", "x", "Traceparent"]),
                    st.one_of(
                        st.none(),
                        st.just(SAMPLED),
                        st.just(UNSAMPLED),
                        st.binary(max_size=70),
                        st.integers(0, 255).map(
                            lambda flags: b"00-%032x-%016x-%02x" % (1, 2, flags)
                        ),
                    ),
                ),
                max_size=4,
            ),
        ),
        max_size=12,
    )
)
def test_any_well_formed_body_gets_the_parsers_answer(records: list[Record]) -> None:
    body, count = body_of(records)
    assert answer(body, 0, len(body), count) == parsed_starts(records)


# -- bodies the record read cannot read: the byte search judges ---------------------------------


def damaged_cases() -> dict[str, tuple[bytes, int]]:
    spelled, count = body_of([(None, b"v", []), (None, SPELLED, []), (None, b"w", [])])
    return {
        "a record count one too high": (spelled, count + 1),
        "a record count one too low": (spelled, count - 1),
        "a negative record count": (spelled, -1),
        "bytes after the last record": (spelled + b"\x00", count),
        "a record with bytes after its headers": (
            # the first record's length one higher, and one byte more in it
            bytes([spelled[0] + 2]) + spelled[1:3] + b"\x00" + spelled[3:],
            count,
        ),
    }


@pytest.mark.parametrize("case", list(damaged_cases()))
def test_a_body_that_does_not_read_as_its_records_goes_by_the_byte_search(case: str) -> None:
    """The search's hits are where the records holding them begin, as before the record read:
    here the record whose value spells a sampled header."""
    body, count = damaged_cases()[case]
    hits = sampled_traceparent_positions_python(body, 0, len(body))
    expected = record_starts_holding(body, 0, len(body), count, hits) if count >= 0 else None
    if expected is None:
        assert answer(body, 0, len(body), count) == "error: negative record count -1"
    else:
        assert answer(body, 0, len(body), count) == expected
        assert len(expected) == 1


def test_a_damaged_body_without_hits_names_nothing() -> None:
    body, count = body_of([(None, b"v", [("traceparent", UNSAMPLED)])] * 3)
    assert answer(body[:-5], 0, len(body) - 5, count) == []
    assert answer(body, 0, len(body), count + 4) == []


def test_negative_bounds_are_refused_alike() -> None:
    body, count = body_of([(None, b"v", [])])
    refused = "error: start and end must not be negative"
    assert answer(body, -1, len(body), count) == answer(body, 0, -1, count) == refused


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_damage_gets_the_same_answer_from_both_twins(data: st.DataObject) -> None:
    """Flipped bytes, cuts and lying counts in bodies of records with sampled and unsampled
    headers and spelled payloads: the twins agree, and never raise anything else."""
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    records: list[Record] = []
    for _ in range(rng.randint(0, 8)):
        headers = [("traceparent", rng.choice([SAMPLED, UNSAMPLED]))] if rng.random() < 0.6 else []
        value = SPELLED if rng.random() < 0.2 else rng.randbytes(rng.randint(0, 200))
        records.append((None, value, headers))
    body, count = body_of(records)
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(0, 4))):
        if damaged:
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    if data.draw(st.booleans()) and damaged:
        del damaged[rng.randrange(len(damaged)) :]
    count += data.draw(st.integers(-2, 2))
    answer(bytes(damaged), 0, len(damaged), count)


def test_compressed_batches_are_read_the_same_way_once_unpacked() -> None:
    """The consumer reads a compressed batch's records after decompressing them: a value
    spelling a sampled header there is passed over too."""
    records: list[Record] = [(None, SPELLED * 4, []), (None, b"v", [("traceparent", SAMPLED)])]
    batch = BatchView(build_batch(records, 1))
    assert batch.attributes & 0x7
    body = bytes(batch.body())
    expected = parsed_starts(records, 1)
    assert answer(body, 0, len(body), batch.record_count) == expected
    assert len(expected) == 1
