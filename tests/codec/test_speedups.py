"""The compiled twins (`proxy/codec/_speedups.c`) against their pure-Python originals.

Both must give the same answer for every input, well-formed or not: the same bytes, the same
"not applicable" (None), or an error (RecordBatchError) for the same inputs. The inputs are batch
bodies written by real clients (librdkafka captures, kafka-python), then cut, flipped and given
lying lengths; byte strings holding traceparent headers with every flag value, near the ends
of the window scanned and behind look-alike prefixes; and random draws for new root contexts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from proxy.codec import native
from proxy.codec.records import (
    RecordBatchError,
    iter_batches,
    splice_one_header_each,
    splice_one_header_each_python,
)
from proxy.tracing.skim import sampled_traceparent_positions_python
from proxy.tracing.traceparent import (
    WIRE_PREFIX,
    format_traceparent,
    parse_traceparent,
    root_traceparents_python,
)

FIXTURES = Path(__file__).parent / "fixtures"
HEADER = WIRE_PREFIX + format_traceparent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B71, True)

compiled = native.compiled


def test_the_compiled_twins_are_built() -> None:
    # scripts/setup installs the package with its C extension; without it the proxy still works
    # (on the Python twins) but every figure in benchmarks/README.md would be wrong.
    assert compiled is not None, "proxy/codec/_speedups.c was not built (no C compiler?)"
    assert native.describe() == "compiled"


# --- splice_one_header_each --------------------------------------------------------------------


def outcome(
    splice: Callable[..., bytes | None], body: bytes, encoded: Sequence[bytes], wanted: list[int]
) -> tuple[str, object, list[int]]:
    starts: list[int] = []
    try:
        result = splice(memoryview(body), encoded, wanted, starts)
    except RecordBatchError:
        return ("error", None, [])
    return ("ok", result, starts)


compiled_splice = splice_one_header_each  # the compiled twin, as the proxy binds it


def assert_same_splice(body: bytes, count: int, wanted: list[int]) -> tuple[str, object]:
    encoded = [HEADER[: 13 + (i % 56)] for i in range(count)]  # headers of different sizes
    python = outcome(splice_one_header_each_python, body, encoded, wanted)
    native_result = outcome(compiled_splice, body, encoded, wanted)
    assert native_result == python
    return python[0], python[1]


def headerless_body(records: list[tuple[bytes | None, bytes | None]]) -> tuple[bytes, int]:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for offset, (key, value) in enumerate(records):
        builder.append(offset, 1_700_000_000_000 + offset * 7919, key, value, [])
    return bytes(builder.build())[61:], len(records)


def librdkafka_body() -> tuple[bytes, int]:
    (batch,) = iter_batches((FIXTURES / "librdkafka_none.bin").read_bytes())
    return bytes(batch.body()), batch.record_count


@pytest.mark.skipif(compiled is None, reason="the C extension is not built")
def test_splice_matches_on_client_written_bodies() -> None:
    shapes = [
        [(None, b"v")],
        [(b"k" * 200, b"v" * 20_000)] * 3,  # 2- and 3-byte length varints
        [(None, None), (b"", b""), (b"key", None)],
        [(None, bytes(range(256)) * 4)] * 16,
    ]
    for records in shapes:
        body, count = headerless_body(records)
        kind, result = assert_same_splice(body, count, [0, count - 1])
        assert kind == "ok" and isinstance(result, bytes)
    body, count = librdkafka_body()
    # librdkafka's test records carry headers: both twins leave them to the general path.
    assert assert_same_splice(body, count, [0]) == ("ok", None)


@pytest.mark.skipif(compiled is None, reason="the C extension is not built")
@given(
    records=st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=200)),
            st.one_of(st.none(), st.binary(max_size=3000)),
        ),
        min_size=1,
        max_size=8,
    ),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
    count_delta=st.integers(-1, 1),
    wanted_seed=st.integers(0, 1 << 16),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_splice_matches_on_damaged_bodies(
    records: list[tuple[bytes | None, bytes | None]],
    edits: list[tuple[int, int]],
    cut: int | None,
    count_delta: int,
    wanted_seed: int,
) -> None:
    body, count = headerless_body(records)
    damaged = bytearray(body)
    for at, value in edits:
        if damaged:
            damaged[at % len(damaged)] = value
    if cut is not None and damaged:
        del damaged[cut % len(damaged) :]
    count = max(0, count + count_delta)
    wanted = sorted(random.Random(wanted_seed).sample(range(count), min(count, 2)))
    assert_same_splice(bytes(damaged), count, wanted)


@pytest.mark.skipif(compiled is None, reason="the C extension is not built")
def test_splice_errors_reach_callers_as_record_batch_errors() -> None:
    body, count = headerless_body([(b"k", b"v" * 20)] * 3)
    lying = bytearray(body)
    lying[0] = 0x7F  # the first record claims -64 bytes
    with pytest.raises(RecordBatchError, match="does not fit"):
        compiled_splice(memoryview(bytes(lying)), [HEADER] * count, [], [])
    with pytest.raises(RecordBatchError, match="bytes left"):
        compiled_splice(memoryview(body + b"\x00"), [HEADER] * count, [], [])


# --- sampled_traceparent_positions -------------------------------------------------------------


def traceparent(flags: int) -> bytes:
    return WIRE_PREFIX + b"00-%032x-%016x-%02x" % (0xAB, 0xCD, flags)


def assert_same_scan(data: bytes, start: int, end: int) -> list[int]:
    """The Python twin's answer, after checking that the compiled one (when built) agrees."""
    expected = sampled_traceparent_positions_python(data, start, end)
    # The Python twin searches other buffers in the bytes they view, or in a copy of the window.
    for buffer in (memoryview(data), memoryview(b"xx" + data)[2:], bytearray(data)):
        assert sampled_traceparent_positions_python(buffer, start, end) == expected
    if compiled is not None:
        assert compiled.sampled_traceparent_positions(data, start, end) == expected
    return expected


def test_scan_finds_every_sampled_flag_value_and_no_other() -> None:
    data = b"".join(b"\x00\x16x" + traceparent(flags) for flags in range(256))
    found = assert_same_scan(data, 0, len(data))
    assert len(found) == 128  # every odd flags byte, written in lower-case hex
    assert all(data[at + 67] in b"13579bdf" for at in found)


def test_scan_respects_the_window_and_headers_cut_by_it() -> None:
    data = b"ab" + traceparent(1) + b"cd" + traceparent(1)
    second = 2 + 68 + 2
    assert assert_same_scan(data, 0, len(data)) == [2, second]
    assert assert_same_scan(data, 3, len(data)) == [second]
    assert assert_same_scan(data, 0, len(data) - 1) == [2]  # its flags fall outside
    assert assert_same_scan(data, 0, 2 + 12) == []  # not even the whole prefix
    assert assert_same_scan(data, 0, 10 * len(data)) == [2, second]  # end is clamped
    assert assert_same_scan(data, len(data), 0) == []


def test_a_look_alike_prefix_in_a_value_does_not_hide_the_header_after_it() -> None:
    # A record value ending in the prefix bytes, then the record's real header 14 bytes on: a
    # search that skipped a whole header's length past the look-alike would miss it.
    data = b"value:" + WIRE_PREFIX + b"\x02" + traceparent(1)
    assert assert_same_scan(data, 0, len(data)) == [6 + 13 + 1]


@given(
    pieces=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.integers(0, 255).map(traceparent),
            st.just(WIRE_PREFIX),
            st.integers(1, 67).map(lambda n: traceparent(1)[:n]),
        ),
        max_size=12,
    ),
    start=st.integers(0, 300),
    end=st.integers(0, 900),
)
@settings(max_examples=400, deadline=None)
def test_scan_matches_on_any_bytes(pieces: list[bytes], start: int, end: int) -> None:
    assert_same_scan(b"".join(pieces), start, end)


# --- root_traceparents -------------------------------------------------------------------------


@pytest.mark.skipif(compiled is None, reason="the C extension is not built")
@given(
    drawn=st.lists(st.binary(min_size=24, max_size=24), max_size=40).map(b"".join),
    threshold=st.one_of(
        st.none(),
        st.integers(0, (1 << 64) - 1).map(lambda bound: b"%016x" % bound),
    ),
)
@settings(max_examples=300, deadline=None)
def test_root_contexts_match(drawn: bytes, threshold: bytes | None) -> None:
    assert compiled is not None
    made = compiled.root_traceparents(drawn, threshold)
    if made is None:  # an all-zero id: the Python twin draws that one again
        assert any(
            drawn[at : at + 16] == bytes(16) or drawn[at + 16 : at + 24] == bytes(8)
            for at in range(0, len(drawn), 24)
        )
        return
    assert made == root_traceparents_python(drawn, threshold)


@pytest.mark.skipif(compiled is None, reason="the C extension is not built")
def test_root_contexts_are_valid_sampled_by_threshold_and_never_zero() -> None:
    assert compiled is not None
    drawn = bytes(range(48)) + bytes(range(200, 224))
    headers, sampled = compiled.root_traceparents(drawn, b"8000000000000000")
    assert [len(h) for h in headers] == [68, 68, 68]
    contexts = [parse_traceparent(h[len(WIRE_PREFIX) :]) for h in headers]
    assert contexts[0] == (
        int.from_bytes(drawn[:16], "big"),
        int.from_bytes(drawn[16:24], "big"),
        True,
    )
    # Sampled when the trace id's low 64 bits are below the bound: 0x08..0f yes, 0xd0..d7 no.
    assert [c[2] for c in contexts if c] == [True, True, False]
    assert sampled == [(i, *contexts[i][:2]) for i in (0, 1)]
    assert compiled.root_traceparents(bytes(24), None) is None
    assert compiled.root_traceparents(b"\x01" * 16 + bytes(8), None) is None
    with pytest.raises(ValueError):
        compiled.root_traceparents(bytes(25), None)


@pytest.mark.skipif(compiled is None, reason="the C extension is not built")
def test_arguments_outside_the_contract_are_refused_alike() -> None:
    assert compiled is not None
    data = b"xx" + traceparent(1)
    for scan in (compiled.sampled_traceparent_positions, sampled_traceparent_positions_python):
        with pytest.raises(ValueError, match="negative"):
            scan(data, -10, len(data))
    # The compiled splice appends to `starts` while it reads `encoded` and `wanted`: one list
    # in two roles would have its items moved under it.
    body, _ = headerless_body([(None, b"v")] * 2)
    shared: list = [HEADER, HEADER]
    with pytest.raises(ValueError, match="own"):
        compiled.splice_one_header_each(body, shared, [], shared)
