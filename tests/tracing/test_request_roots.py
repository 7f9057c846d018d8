"""The producer's request lane: `inject_request_roots` gives every record of a whole Produce
request a root traceparent in one call. Both twins agree (result, and the random bytes they
draw), the frame is what the general composition (`inject_roots_python` per partition, then
`splice_located`) makes, and anything unusual is declined, before drawing where it can be."""

from __future__ import annotations

import datetime
import importlib
import random
import struct
import uuid
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.static.primitive import i16, i32

from proxy.codec import native
from proxy.codec.api_versions import decodable_ranges
from proxy.codec.apis import ApiKey
from proxy.codec.messages import decode_request
from proxy.codec.produce import (
    FLEXIBLE_FROM,
    TOPIC_IDS_FROM,
    layout_programs,
    locate_request_partitions,
    splice_located,
)
from proxy.codec.records import (
    CRC_OFFSET,
    RECORDS_OFFSET,
    first_record_has_headers,
    iter_batches,
)
from proxy.tracing.roots import (
    RANDOM_PER_ROOT,
    ROOT_HEADER_SIZE,
    inject_request_roots,
    inject_request_roots_python,
    inject_roots,
    inject_roots_python,
)
from proxy.tracing.traceparent import parse_traceparent

from ..proxy.messages import request_frame
from .test_interceptors import build_batch
from .test_roots import ONE_PERCENT

compiled = pytest.mark.skipif(native.compiled is None, reason="extension not built")

LOW, HIGH = decodable_ranges()[int(ApiKey.PRODUCE)]
VERSIONS = list(range(LOW, HIGH + 1))
PROGRAMS = layout_programs((LOW, HIGH))
#: A threshold no trace id is below: every context unsampled.
NONE_SAMPLED = b"0000000000000000"
LIMIT = 1 << 20
SIZE_PREFIX = 4
#: No profile or example database: the fuzz runs the same way everywhere and writes nothing.
FUZZ = settings(max_examples=300, deadline=None, database=None)

#: (topic name, or uuid from v13 on; [(partition, records or None)]).
Topic = tuple[Any, list[tuple[int, bytes | None]]]
Twin = Callable[..., Any]


def _twins() -> list[Twin]:
    """The compiled twin (when built) and the Python twin."""
    twins: list[Twin] = [inject_request_roots_python]
    if native.compiled is not None:
        twins.insert(0, native.compiled.inject_request_roots)
    return twins


class Draws:
    """A seeded `draw` that records how many bytes each call asked for."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return self.rng.randbytes(n)

    def after(self) -> bytes:
        """The RNG's next bytes: the same only when as many bytes were drawn before."""
        return self.rng.randbytes(8)


def _batch(count: int, *, size: int = 12, tag: int = 0, codec: int = 0) -> bytes:
    """A plain batch; `tag` makes its keys and values its own, to find them again."""
    return build_batch(
        [
            (b"k%d-%d" % (tag, i) if i % 2 else None, b"%d:" % tag + b"v" * size, [])
            for i in range(count)
        ],
        codec=codec,
    )


def _name(version: int, index: int, name: str) -> Any:
    """The topic as the version names it: `name` before v13, a topic id from v13."""
    return uuid.UUID(int=0xABC0 + index) if version >= TOPIC_IDS_FROM else name


def _request(
    version: int,
    topics: Sequence[Topic],
    *,
    transactional_id: str | None = None,
    acks: int = -1,
    timeout_ms: int = 30_000,
) -> Any:
    """A kio Produce request of `version`."""
    module = importlib.import_module(f"kio.schema.produce.v{version}.request")
    data = []
    for topic, partitions in topics:
        parts = tuple(
            module.PartitionProduceData(index=i32(index), records=records)
            for index, records in partitions
        )
        named = {"topic_id": topic} if version >= TOPIC_IDS_FROM else {"name": topic}
        data.append(module.TopicProduceData(partition_data=parts, **named))
    return module.ProduceRequest(
        transactional_id=transactional_id,
        acks=i16(acks),
        timeout=datetime.timedelta(milliseconds=timeout_ms),
        topic_data=tuple(data),
    )


def _frame(
    version: int,
    topics: Sequence[Topic],
    *,
    transactional_id: str | None = None,
    client_id: str | None = "lane-test",
) -> bytes:
    """The whole request frame, size prefix included."""
    payload = _request(version, topics, transactional_id=transactional_id)
    return request_frame(payload, 7, client_id)


def _topics(version: int, counts: Sequence[Sequence[int | None]]) -> list[Topic]:
    """Topics of partitions with `counts` records each (None: null records)."""
    return [
        (
            _name(version, t, f"topic-{t}"),
            [
                (p * 3 + 1, None if n is None else _batch(n, tag=t * 10 + p))
                for p, n in enumerate(partitions)
            ],
        )
        for t, partitions in enumerate(counts)
    ]


#: Three topics: a null partition, a partition of one record, unequal sizes.
SHAPE: list[list[int | None]] = [[4, None, 9], [1], [12, 3, 6]]


def _header_size(frame: bytes | memoryview, version: int) -> int:
    (length,) = struct.unpack_from(">h", frame, SIZE_PREFIX + 8)
    return 10 + max(length, 0) + (1 if version >= FLEXIBLE_FROM else 0)


def _reframed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _patched(frame: bytes, old: bytes, new: bytes) -> bytes:
    """`frame` with the one occurrence of `old` replaced by `new`, its size prefix mended."""
    assert frame.count(old) == 1
    return _reframed(frame[SIZE_PREFIX:].replace(old, new))


def _run(
    twin: Twin,
    frame: bytes | memoryview,
    version: int,
    threshold: bytes | None = None,
    limit: int = LIMIT,
    *,
    seed: int = 1,
    programs: dict[int, Any] | None = None,
) -> tuple[Any, list[int], bytes]:
    """(result, bytes asked of each draw, the RNG's next bytes after) of one twin."""
    draws = Draws(seed)
    result = twin(
        PROGRAMS if programs is None else programs,
        draws,
        threshold,
        crc32c.crc32c,
        limit,
        frame,
        version,
    )
    return result, draws.calls, draws.after()


def _both(
    frame: bytes | memoryview,
    version: int,
    threshold: bytes | None = None,
    limit: int = LIMIT,
    *,
    seed: int = 1,
    programs: dict[int, Any] | None = None,
) -> tuple[Any, list[int]]:
    """The twins' common result and draws; they must agree (and not raise)."""
    runs = [
        _run(twin, frame, version, threshold, limit, seed=seed, programs=programs)
        for twin in _twins()
    ]
    for run in runs[1:]:
        assert run[0] == runs[0][0]
        assert run[1:] == runs[0][1:]
    return runs[0][0], runs[0][1]


def _composed(
    frame: bytes, version: int, threshold: bytes | None, limit: int = LIMIT, seed: int = 1
) -> Any:
    """What the general path's pieces make of the request: `inject_roots_python` per
    partition, in order, with the same draw, then `splice_located`."""
    body = memoryview(frame)[SIZE_PREFIX:]
    layout = locate_request_partitions(body, _header_size(frame, version), version)
    assert layout is not None
    draw = random.Random(seed).randbytes
    replacements: dict[tuple[int, int], bytes] = {}
    parts = []
    unsampled = 0
    for located, (_, end) in zip(layout.partitions, layout.fields, strict=True):
        if located.records is None:
            continue
        injected = inject_roots_python(located.records, draw, threshold, crc32c.crc32c, limit)
        assert injected is not None
        replacements[(located.topic_index, located.partition_index)] = injected[0]
        if not injected[2]:
            unsampled += injected[1]
            continue
        topic: Any = located.topic
        if version >= TOPIC_IDS_FROM:  # the raw id, all zeros when kio reads it as None
            topic = located.topic_id.bytes if located.topic_id is not None else bytes(16)
        start = SIZE_PREFIX + end - len(located.records)
        parts.append((topic, located.partition, start, SIZE_PREFIX + end, injected))
    if not replacements:
        return frame, 0, None, []
    spliced = splice_located(body, layout, version, replacements)
    return spliced, unsampled, layout.transactional_id if parts else None, parts


def _check_decoded(
    original: bytes, result: Any, version: int, topics: Sequence[Topic], threshold: Any
) -> None:
    """The rebuilt request, decoded by kio: the same request with one valid traceparent on
    every record, sampled exactly where the lane says, and positions that slice out the
    original records."""
    sent, unsampled, transactional_id, parts = result
    assert int.from_bytes(sent[:SIZE_PREFIX], "big") == len(sent) - SIZE_PREFIX
    header_size = _header_size(original, version)
    assert (
        sent[SIZE_PREFIX : SIZE_PREFIX + header_size]
        == (original[SIZE_PREFIX : SIZE_PREFIX + header_size])
    )
    before = decode_request(0, version, memoryview(original)[SIZE_PREFIX:], header_size)
    after = decode_request(0, version, memoryview(sent)[SIZE_PREFIX:], header_size)
    assert (after.acks, after.timeout, after.transactional_id) == (
        before.acks,
        before.timeout,
        before.transactional_id,
    )
    by_partition = {
        (topic.bytes if version >= TOPIC_IDS_FROM else topic, index): records
        for topic, partitions in topics
        for index, records in partitions
    }
    sampled_parts = {(p[0], p[1]): p for p in parts}
    counted_unsampled = 0
    assert len(after.topic_data) == len(before.topic_data)
    for old_topic, new_topic in zip(before.topic_data, after.topic_data, strict=True):
        name = getattr(new_topic, "name", None)
        topic_id = getattr(new_topic, "topic_id", None)
        assert (name, topic_id) == (
            getattr(old_topic, "name", None),
            getattr(old_topic, "topic_id", None),
        )
        key = name
        if version >= TOPIC_IDS_FROM:
            key = topic_id.bytes if topic_id is not None else bytes(16)
        for old, new in zip(old_topic.partition_data, new_topic.partition_data, strict=True):
            assert new.index == old.index
            if old.records is None:
                assert new.records is None
                continue
            (old_batch,) = iter_batches(old.records)
            (new_batch,) = iter_batches(new.records)
            assert new_batch.crc_is_valid()
            assert (new_batch.base_offset, new_batch.record_count, new_batch.producer_id) == (
                old_batch.base_offset,
                old_batch.record_count,
                old_batch.producer_id,
            )
            contexts = []
            for old_record, new_record in zip(
                old_batch.records(), new_batch.records(), strict=True
            ):
                assert old_record.headers == ()
                assert (new_record.key, new_record.value) == (old_record.key, old_record.value)
                assert (new_record.offset, new_record.timestamp) == (
                    old_record.offset,
                    old_record.timestamp,
                )
                ((header, value),) = new_record.headers
                assert header == "traceparent"
                context = parse_traceparent(value)
                assert context is not None
                contexts.append(context)
            flagged = [i for i, c in enumerate(contexts) if c[2]]
            if threshold is None:
                assert len(flagged) == len(contexts)
            elif threshold == NONE_SAMPLED:
                assert flagged == []
            part = sampled_parts.pop((key, new.index), None)
            if part is None:
                assert flagged == []
                counted_unsampled += len(contexts)
                continue
            _, _, start, end, (batch, count, sampled) = part
            assert original[start:end] == by_partition[(key, new.index)]
            assert batch == new.records and count == len(contexts)
            assert [s[0] for s in sampled] == flagged
            assert [s[1:3] for s in sampled] == [contexts[i][:2] for i in flagged]
    assert sampled_parts == {}
    assert unsampled == counted_unsampled
    assert transactional_id == (before.transactional_id if parts else None)


# 1. Both twins agree.


@compiled
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("threshold", [None, ONE_PERCENT, NONE_SAMPLED])
@pytest.mark.parametrize("transactional_id", [None, "txn-7"])
def test_both_twins_give_the_same_result_and_draw_the_same_bytes(
    version: int, threshold: bytes | None, transactional_id: str | None
) -> None:
    """Full tuples equal, and the RNG left in the same state: the pairing core may run
    either twin and the spans built from the result must not depend on which."""
    frame = _frame(version, _topics(version, SHAPE), transactional_id=transactional_id)
    result, calls = _both(frame, version, threshold, seed=version)
    assert result is not None
    sent, unsampled, txn, parts = result
    counts = [n for partitions in SHAPE for n in partitions if n is not None]
    assert calls == [n * RANDOM_PER_ROOT for n in counts]
    if threshold is None:
        assert unsampled == 0 and len(parts) == len(counts) and txn == transactional_id
    if threshold == NONE_SAMPLED:
        assert (unsampled, txn, parts) == (sum(counts), None, [])
    grown = len(sent) - len(frame) - sum(counts) * ROOT_HEADER_SIZE
    # varints may take a byte more: each record's length, a flexible records length
    assert 0 <= grown <= sum(counts) + (len(counts) if version >= FLEXIBLE_FROM else 0)


@compiled
@pytest.mark.parametrize("seed", range(6))
def test_one_percent_sampling_counts_only_partitions_without_a_sampled_record(
    seed: int,
) -> None:
    """At 1%, a large request has partitions of both kinds: the twins agree on which, and
    count only the records of partitions without a sampled one."""
    version = HIGH
    shape: list[list[int | None]] = [[60] * 4, [60] * 4]
    frame = _frame(version, _topics(version, shape), transactional_id="tx")
    result, _ = _both(frame, version, ONE_PERCENT, seed=seed)
    _, unsampled, txn, parts = result
    assert unsampled == 60 * (8 - len(parts))
    assert txn == ("tx" if parts else None)
    _check_decoded(frame, result, version, _topics(version, shape), ONE_PERCENT)


@compiled
def test_one_percent_seeds_do_reach_both_kinds() -> None:
    """Guards the test above: among its seeds some give a sampled partition and some
    leave a partition unsampled, so both branches ran."""
    version = HIGH
    frame = _frame(version, _topics(version, [[60] * 4, [60] * 4]))
    sampled = [len(_both(frame, version, ONE_PERCENT, seed=s)[0][3]) for s in range(6)]
    assert any(sampled) and any(n < 8 for n in sampled)


def test_the_lane_the_producer_runs_is_the_compiled_twin_when_built() -> None:
    """`inject_request_roots` is what the pairing core calls: the compiled twin when the
    extension is built (the fast path), the Python twin otherwise."""
    expected = native.compiled.inject_request_roots if native.compiled else None
    assert inject_request_roots is (expected or inject_request_roots_python)


# 2. The lane equals the general composition, and kio reads the result back.


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("threshold", [None, ONE_PERCENT, NONE_SAMPLED])
def test_the_lane_frame_is_the_general_paths_frame(version: int, threshold: bytes | None) -> None:
    """Each twin's whole result equals per-partition `inject_roots_python` then
    `splice_located` with the same draw, and decodes to the same request with one
    traceparent per record."""
    topics = _topics(version, SHAPE)
    frame = _frame(version, topics, transactional_id="txn-ascii")
    expected = _composed(frame, version, threshold, seed=3)
    for twin in _twins():
        result = _run(twin, frame, version, threshold, seed=3)[0]
        assert result == expected, twin
        _check_decoded(frame, result, version, topics, threshold)


@pytest.mark.parametrize("version", [LOW, FLEXIBLE_FROM - 1, FLEXIBLE_FROM, HIGH])
@pytest.mark.parametrize("client_id", [None, "", "c" * 200])
def test_a_null_empty_or_long_client_id_is_still_plain(version: int, client_id: str | None) -> None:
    """The header's client id is skipped whatever its (ASCII) length, null included."""
    topics = _topics(version, [[2, 3]])
    frame = _frame(version, topics, client_id=client_id)
    expected = _composed(frame, version, None)
    for twin in _twins():
        result = _run(twin, frame, version)[0]
        assert result == expected
        _check_decoded(frame, result, version, topics, None)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("as_view", [False, True])
def test_a_request_without_records_is_returned_as_it_came(version: int, as_view: bool) -> None:
    """All partitions null (or no topics): the frame object itself, nothing drawn, and no
    transactional id read."""
    for counts in ([[None, None], [None]], []):
        raw = _frame(version, _topics(version, counts), transactional_id="tx")
        frame: bytes | memoryview = memoryview(raw) if as_view else raw
        for twin in _twins():
            result, calls, _ = _run(twin, frame, version)
            assert result == (frame, 0, None, [])
            assert result[0] is frame
            assert calls == []


@pytest.mark.parametrize("version", [LOW, HIGH])
def test_an_empty_transactional_id_is_returned_as_empty(version: int) -> None:
    """An empty (not null) transactional id comes back as "" with sampled records."""
    frame = _frame(version, _topics(version, [[2]]), transactional_id="")
    for twin in _twins():
        assert _run(twin, frame, version)[0][2] == ""


@pytest.mark.parametrize("version", [LOW, FLEXIBLE_FROM, HIGH])
def test_partitions_are_reported_as_the_request_names_them(version: int) -> None:
    """Partition indexes are signed int32 as sent; from v13 the topic is the raw id, all
    zeros for the nil id (which kio reads as None)."""
    zero = uuid.UUID(int=0) if version >= TOPIC_IDS_FROM else "zero"
    topics: list[Topic] = [
        (zero, [(-1, _batch(1)), (2**31 - 1, _batch(2, tag=1))]),
        (_name(version, 5, "five"), [(0, None), (7, _batch(1, tag=2))]),
    ]
    frame = _frame(version, topics)
    result, _ = _both(frame, version)
    first = bytes(16) if version >= TOPIC_IDS_FROM else "zero"
    second = _name(version, 5, "five")
    second = second.bytes if version >= TOPIC_IDS_FROM else second
    assert [p[:2] for p in result[3]] == [(first, -1), (first, 2**31 - 1), (second, 7)]
    assert result == _composed(frame, version, None)
    _check_decoded(frame, result, version, topics, None)


@pytest.mark.parametrize("version", [LOW, FLEXIBLE_FROM, HIGH])
def test_the_batch_limit_counts_the_rebuilt_batch(version: int) -> None:
    """The limit bounds the rebuilt batch: exactly its size is taken; a byte less is
    declined, after the draw when only the rebuilt size (whose record lengths grew a varint
    byte) is over, before it when the plain estimate already is."""
    topics = _topics(version, [[5, 2]])
    frame = _frame(version, topics)
    batch = _batch(5, tag=0)
    rebuilt = inject_roots_python(batch, random.Random(1).randbytes, None, crc32c.crc32c, LIMIT)
    assert rebuilt is not None
    exact = len(rebuilt[0])
    estimate = len(batch) + 5 * ROOT_HEADER_SIZE
    assert exact > estimate  # each record's length varint took a byte more
    result, _ = _both(frame, version, None, exact)
    assert result == _composed(frame, version, None, exact)
    _check_decoded(frame, result, version, topics, None)
    assert _both(frame, version, None, exact - 1) == (None, _draws_of(5))
    assert _both(frame, version, None, estimate - 1) == (None, [])


# 3. Declines.


def _draws_of(*counts: int) -> list[int]:
    return [n * RANDOM_PER_ROOT for n in counts]


def _tagged_header(frame: bytes, version: int) -> bytes:
    """The frame with one tagged field (tag 0, one byte) in its request header."""
    at = SIZE_PREFIX + _header_size(frame, version) - 1
    assert frame[at] == 0
    return _reframed(frame[SIZE_PREFIX:at] + b"\x01\x00\x01A" + frame[at + 1 :])


def _null_name(frame: bytes, version: int, name: str) -> bytes:
    """The frame with topic `name` (ASCII) made a null string."""
    raw = name.encode()
    if version >= FLEXIBLE_FROM:
        return _patched(frame, bytes([len(raw) + 1]) + raw, b"\x00")
    return _patched(frame, len(raw).to_bytes(2, "big") + raw, b"\xff\xff")


def _decline_case(case: str, version: int) -> tuple[bytes, int, dict[int, Any], int, list[int]]:
    """(frame, api version, programs, limit, draws expected) of a request to decline."""
    topics = _topics(version, [[3, 2], [4]])
    frame = _frame(version, topics)
    programs, limit, draws = PROGRAMS, LIMIT, []
    if case == "tagged header fields":
        frame = _tagged_header(frame, version)
    elif case == "non-ascii client id":
        frame = _frame(version, topics, client_id="clïent")
    elif case == "non-ascii topic name":
        topics[0] = ("tópico", topics[0][1])
        frame = _frame(version, topics)
    elif case == "non-ascii topic name after a partition":
        # Names are checked before any draw: nothing is drawn for the first partition.
        topics[1] = ("tópico", topics[1][1])
        frame = _frame(version, topics)
    elif case == "non-ascii transactional id":
        frame = _frame(version, topics, transactional_id="tx-é")
    elif case == "null topic name":
        frame = _null_name(frame, version, "topic-0")
    elif case == "version without a program":
        programs = {v: p for v, p in PROGRAMS.items() if v != version}
    elif case == "cut short":
        frame = frame[:-1]
    elif case == "cut short, size mended":
        frame = _reframed(frame[SIZE_PREFIX:-5])
    elif case == "trailing bytes":
        frame = _reframed(frame[SIZE_PREFIX:] + b"\x00")
    elif case == "compressed first partition":
        topics[0][1][0] = (1, _batch(3, codec=1))
        frame = _frame(version, topics)
    elif case == "compressed last partition":
        topics[1][1][0] = (1, _batch(4, codec=1))
        frame = _frame(version, topics)
        draws = _draws_of(3, 2)
    elif case == "headers in the second partition":
        topics[0][1][1] = (4, build_batch([(None, b"v", [("h", b"1")])] * 2))
        frame = _frame(version, topics)
        draws = _draws_of(3)
    elif case == "headers on a later record":
        later = build_batch([(None, b"v", []), (None, b"w", [("h", b"1")])])
        topics[0][1][1] = (4, later)
        frame = _frame(version, topics)
        draws = _draws_of(3, 2)
    elif case == "two batches in a partition":
        topics[0][1][1] = (4, _batch(2) + _batch(1))
        frame = _frame(version, topics)
        draws = _draws_of(3)
    elif case == "batch too large":
        topics[1][1][0] = (1, _batch(4, size=300))
        frame = _frame(version, topics)
        limit = len(_batch(4, size=300)) + 4 * ROOT_HEADER_SIZE - 1
        draws = _draws_of(3, 2)
    elif case == "wrong crc":
        damaged = bytearray(_batch(2))
        damaged[-1] ^= 1
        topics[0][1][1] = (4, bytes(damaged))
        frame = _frame(version, topics)
        draws = _draws_of(3)
    else:
        raise AssertionError(case)
    return frame, version, programs, limit, draws


DECLINES = [
    "non-ascii client id",
    "non-ascii topic name",
    "non-ascii topic name after a partition",
    "non-ascii transactional id",
    "null topic name",
    "version without a program",
    "cut short",
    "cut short, size mended",
    "trailing bytes",
    "compressed first partition",
    "compressed last partition",
    "headers in the second partition",
    "headers on a later record",
    "two batches in a partition",
    "batch too large",
    "wrong crc",
]


@pytest.mark.parametrize("version", [LOW, FLEXIBLE_FROM - 1, FLEXIBLE_FROM, HIGH])
@pytest.mark.parametrize("case", [*DECLINES, "tagged header fields"])
def test_anything_unusual_is_declined_after_drawing_only_what_it_must(
    case: str, version: int
) -> None:
    """None from both twins; a decline found before a partition's draw draws nothing for
    it (the RNG's next bytes are a fresh RNG's when nothing was drawn at all)."""
    if case == "tagged header fields" and version < FLEXIBLE_FROM:
        pytest.skip("only flexible headers have tagged fields")
    if "topic name" in case and version >= TOPIC_IDS_FROM:
        pytest.skip("topics are named by id")
    frame, api_version, programs, limit, draws = _decline_case(case, version)
    fresh = random.Random(1).randbytes(8)
    for twin in _twins():
        result, calls, after = _run(twin, frame, api_version, None, limit, programs=programs)
        assert result is None
        assert calls == draws
        assert (after == fresh) == (draws == [])


@pytest.mark.parametrize("version", [LOW, HIGH])
def test_a_version_outside_the_programs_is_declined(version: int) -> None:
    """The request's version must have a layout program: one past the range has none."""
    frame = _frame(version, _topics(version, [[2]]))
    for twin in _twins():
        assert _run(twin, frame, HIGH + 1)[0] is None
        assert _run(twin, frame, version, programs={})[0] is None


@pytest.mark.parametrize("frame", [b"", b"\x00\x00", b"\x00\x00\x00\x00", b"\x00" * 13])
def test_frames_too_short_for_a_header_are_declined(frame: bytes) -> None:
    """Nothing to read: declined, not an IndexError."""
    for twin in _twins():
        for version in (LOW, HIGH):
            assert _run(twin, frame, version) == (None, [], random.Random(1).randbytes(8))


@pytest.mark.parametrize("version", [LOW, HIGH])
def test_errors_on_the_way_are_declined_too(version: int) -> None:
    """A draw that raises or gives only zero ids: the general path meets the request
    again, so the lane answers None rather than raising."""
    frame = _frame(version, _topics(version, [[2, 1]]))

    def failing(n: int) -> bytes:
        raise RuntimeError("no entropy")

    for twin in _twins():
        for draw in (failing, bytes):
            assert twin(PROGRAMS, draw, None, crc32c.crc32c, LIMIT, frame, version) is None


@compiled
@pytest.mark.parametrize("version", [LOW, FLEXIBLE_FROM])
def test_a_non_ascii_topic_without_partitions_is_judged_alike(version: int) -> None:
    """Every topic's name is checked, with partitions or not: both twins decline, unread."""
    topics = [("orders", [(0, _batch(2))]), ("tópico", [])]
    result, draws = _both(_frame(version, topics), version)
    assert result is None
    assert draws == []


@compiled
@pytest.mark.parametrize("case", ["null", "not utf-8"])
def test_a_bad_later_topic_name_draws_alike(case: str) -> None:
    """Both twins decline before drawing anything, so they leave the RNG in the same state."""
    version = LOW
    frame = _frame(version, [("orders", [(0, _batch(2))]), ("second", [(0, _batch(2))])])
    if case == "null":
        frame = _null_name(frame, version, "second")
    else:
        frame = _patched(frame, b"second", b"\xffecond")
    result, _ = _both(frame, version)
    assert result is None


# 4. Fuzz: damaged requests.


@cache
def _fuzz_base(version: int) -> bytes:
    """A small request: short records so that most bytes are structure, not batches."""
    topics = _topics(version, [[2, None], [1, 3]])
    return _frame(version, topics, transactional_id="tx")


def _damaged(frame: bytes, how: str, at: int, data: bytes, mend: bool) -> bytes:
    """`frame` overwritten, cut or with bytes inserted at `at`; with `mend`, its size
    prefix fixed (the lane ignores it, the damage is in the body)."""
    at %= len(frame) + 1
    if how == "overwrite":
        damaged = frame[:at] + data + frame[at + len(data) :]
    elif how == "truncate":
        damaged = frame[:at]
    else:
        damaged = frame[:at] + data + frame[at:]
    return _reframed(damaged[SIZE_PREFIX:]) if mend and len(damaged) >= SIZE_PREFIX else damaged


def _agree(frame: bytes, version: int, threshold: bytes | None) -> None:
    """Both twins give equal results without raising and drew alike; a rebuilt frame is the
    general composition's."""
    runs = [_run(twin, frame, version, threshold) for twin in _twins()]
    assert all(run[0] == runs[0][0] for run in runs)
    assert all(run[1:] == runs[0][1:] for run in runs)
    if runs[0][0] is not None and runs[0][0][0] is not frame:
        assert runs[0][0] == _composed(frame, version, threshold)


@compiled
@FUZZ
@given(
    st.sampled_from(VERSIONS),
    st.sampled_from(["overwrite", "truncate", "insert"]),
    st.integers(0, 4000),
    st.binary(min_size=1, max_size=6),
    st.booleans(),
    st.sampled_from([None, ONE_PERCENT]),
)
def test_both_twins_agree_on_damaged_requests(
    version: int, how: str, at: int, data: bytes, mend: bool, threshold: bytes | None
) -> None:
    """Any damage: the same answer from both twins, never an exception."""
    _agree(_damaged(_fuzz_base(version), how, at, data, mend), version, threshold)


def _resigned(batch: bytes, at: int, data: bytes) -> bytes:
    """A batch damaged past its header and signed again, so the damage reaches the
    records."""
    damaged = bytearray(batch)
    at = RECORDS_OFFSET + at % (len(batch) - RECORDS_OFFSET)
    damaged[at : at + len(data)] = data
    damaged = damaged[: len(batch)]
    damaged[CRC_OFFSET : CRC_OFFSET + 4] = crc32c.crc32c(bytes(damaged[21:])).to_bytes(4, "big")
    return bytes(damaged)


@compiled
@FUZZ
@given(
    st.sampled_from(VERSIONS),
    st.integers(0, 400),
    st.binary(min_size=1, max_size=4),
    st.sampled_from([None, ONE_PERCENT]),
)
def test_both_twins_agree_on_requests_with_damaged_records(
    version: int, at: int, data: bytes, threshold: bytes | None
) -> None:
    """Damaged records in a well-formed request (the second partition's batch, signed
    again): the twins agree, draws included."""
    topics = _topics(version, [[2, 3]])
    topics[0][1][1] = (4, _resigned(_batch(3, tag=1), at, data))
    frame = _frame(version, topics)
    _agree(frame, version, threshold)


@compiled
def test_both_twins_agree_on_two_thousand_damaged_copies() -> None:
    """A deterministic sweep beside hypothesis: every damage kind at seeded positions,
    biased to the header and topic names where structure lies."""
    rng = random.Random(20_240)
    taken = declined = 0
    for _ in range(2000):
        version = rng.choice(VERSIONS)
        frame = _fuzz_base(version)
        at = rng.randrange(60) if rng.random() < 0.6 else rng.randrange(len(frame))
        data = rng.randbytes(rng.randint(1, 4))
        how = rng.choice(["overwrite", "truncate", "insert"])
        damaged = _damaged(frame, how, at, data, rng.random() < 0.5)
        _agree(damaged, version, rng.choice([None, ONE_PERCENT]))
        result = _run(inject_request_roots_python, damaged, version)[0]
        taken += result is not None
        declined += result is None
    assert taken > 50 and declined > 500  # both outcomes were exercised


# 5. first_record_has_headers, and inject_roots declining before any draw.


def _body(batch: bytes) -> bytes:
    return batch[RECORDS_OFFSET:]


def test_first_record_has_headers_reads_the_first_record() -> None:
    """True only for a first record with headers; the other records do not matter."""
    with_headers = build_batch([(b"k", b"v", [("h", b"1")]), (None, b"w", [])])
    null_header = build_batch([(None, None, [("h", None)])])
    later = build_batch([(None, b"v", []), (None, b"w", [("h", b"1")])])
    assert first_record_has_headers(_body(with_headers))
    assert first_record_has_headers(memoryview(_body(null_header)))
    assert not first_record_has_headers(_body(later))
    assert not first_record_has_headers(_body(_batch(5)))
    assert not first_record_has_headers(_body(build_batch([(None, None, [])])))


def test_bytes_after_the_first_records_fields_count_as_headers() -> None:
    """A first record with a byte after its (zero) header count is not plain either."""
    body = bytearray(_body(build_batch([(None, b"v", [])])))
    assert body[0] == 2 * 7  # zigzag length 7: attributes, 2 deltas, key, value, count
    body[0] += 2
    body.append(0)
    assert first_record_has_headers(bytes(body))
    plain = bytearray(_body(build_batch([(None, b"v", [])])))
    assert not first_record_has_headers(bytes(plain))
    plain[-1] = 2  # a header count of one, its header missing: still plainly headers
    assert first_record_has_headers(bytes(plain))


def test_first_record_has_headers_never_raises_on_cut_bodies() -> None:
    """Cut anywhere, the answer is False (nothing plainly there), never an exception."""
    body = _body(build_batch([(b"key", b"value", [("h", b"1")])]))
    for cut in range(len(body) - 1):
        assert first_record_has_headers(body[:cut]) is False


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=40))
def test_first_record_has_headers_never_raises_on_garbage(body: bytes) -> None:
    """Garbage gives a bool and no exception."""
    assert isinstance(first_record_has_headers(body), bool)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x01", False),  # negative length
        (b"\x00", False),  # zero length
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", False),  # a varint that never ends
        (b"\x14\x00\x00\x00\x01\x01", False),  # length past the body
        (b"\x0c\x00\x00\x00\x7f\x01\x00", False),  # key length past the record
    ],
)
def test_first_record_has_headers_on_odd_records(body: bytes, expected: bool) -> None:
    """Odd first records are left to the splice to judge: False."""
    assert first_record_has_headers(body) is expected


def _roots_twins() -> list[Twin]:
    twins: list[Twin] = [inject_roots_python, inject_roots]
    if native.compiled is not None:
        twins.append(native.compiled.inject_roots)
    return twins


@pytest.mark.parametrize("threshold", [None, ONE_PERCENT])
def test_inject_roots_declines_a_batch_with_headers_before_drawing(
    threshold: bytes | None,
) -> None:
    """A first record with headers: None, and `draw` is never called (it would raise)."""
    batch = build_batch([(None, b"v", [("h", b"1")]), (None, b"w", [])])

    def draw(n: int) -> bytes:
        raise AssertionError("drew for a batch it declines")

    for twin in _roots_twins():
        assert twin(batch, draw, threshold, crc32c.crc32c, LIMIT) is None


def test_inject_roots_draws_for_headers_on_a_later_record() -> None:
    """Headers only on a later record are found by the splice, after the draw: the early
    decline is the first record's alone."""
    batch = build_batch([(None, b"v", []), (None, b"w", [("h", b"1")])])
    for twin in _roots_twins():
        draws = Draws(1)
        assert twin(batch, draws, None, crc32c.crc32c, LIMIT) is None
        assert draws.calls == [2 * RANDOM_PER_ROOT]


@compiled
@FUZZ
@given(st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_inject_roots_twins_draw_alike_on_damaged_records(at: int, data: bytes) -> None:
    """The compiled first-record check is the Python one: on re-signed damaged batches
    both twins give the same result and draw the same bytes."""
    batch = _resigned(_batch(3, size=4), at, data)
    runs = []
    for twin in (native.compiled.inject_roots, inject_roots_python):  # type: ignore[union-attr]
        draws = Draws(1)
        try:
            result: Any = twin(batch, draws, None, crc32c.crc32c, LIMIT)
        except ValueError as exc:
            result = ("raised", str(exc))
        runs.append((result, draws.calls))
    assert runs[0] == runs[1]
