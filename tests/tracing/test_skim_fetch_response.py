"""The whole-response fetch skim (`skim_fetch_response`) against its Python twin and the general
path it stands in for.

With tracing on, every forwarded Fetch response goes through this one call. When it returns a
list, the consumer only learns each partition's highest offset and record count and never reads
the records, so a list must be given only when no record can carry a sampled context and its
figures must be exactly what the general path (`locate_fetched_partitions`, then `skim_batches`
per partition) computes. Anything else must be declined (None) without raising, by both twins
alike, for any bytes a broker sends.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import import_module
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode
from kio.static.primitive import i32, i64

from proxy.codec import native
from proxy.codec.api_versions import decodable_ranges
from proxy.codec.apis import ApiKey
from proxy.codec.errors import ProtocolError
from proxy.codec.fetch import (
    CAPTURED_RECORDS,
    CAPTURED_TOPIC,
    TOPIC_IDS_FROM,
    layout_program,
    locate_fetched_partitions,
)
from proxy.codec.framing import SIZE_PREFIX, frame
from proxy.codec.guard import Captures, captured_uuid, walk_python
from proxy.codec.headers import response_header_size
from proxy.codec.records import RecordBatchError
from proxy.tracing import skim
from proxy.tracing.skim import (
    SkimmedPartition,
    skim_batches,
    skim_fetch_response,
    skim_fetch_response_python,
)
from proxy.tracing.skim import sampled_record_starts_python as python_starts
from proxy.tracing.skim import sampled_traceparent_positions_python as python_search
from proxy.tracing.traceparent import format_traceparent
from tests.codec.test_fetch_skim import batch, legacy_message, traced
from tests.proxy.messages import response_frame

compiled = native.compiled
needs_compiled = pytest.mark.skipif(compiled is None, reason="the C extension is not built")

LOW, HIGH = decodable_ranges()[ApiKey.FETCH]
VERSIONS = list(range(LOW, HIGH + 1))
Answer = list[SkimmedPartition] | None
#: (partition index, records, aborted transactions as (producer id, first offset) or None).
Partition = tuple[int, bytes | None, list[tuple[int, int]] | None]
#: (topic name, used below v13; from v13 on the topic id is uuid(n + 1) for the n-th topic).
Topic = tuple[str, list[Partition]]


# -- building Fetch responses --------------------------------------------------------------------


def fetch_body(version: int, topics: list[Topic], *, tagged: bool = False) -> bytes:
    """A Fetch response frame without its size prefix, as kio writes it; with ``tagged``, the
    flexible versions also carry a partition's tagged field and (v16+) node endpoints, which
    the walk must step over."""
    module = import_module(f"kio.schema.fetch.v{version}.response")
    responses = []
    for n, (name, partitions) in enumerate(topics):
        datas = []
        for index, records, aborted in partitions:
            extra: dict[str, Any] = {}
            if tagged and version >= 12:
                extra["current_leader"] = module.LeaderIdAndEpoch(
                    leader_id=i32(1), leader_epoch=i32(3)
                )
            datas.append(
                module.PartitionData(
                    partition_index=i32(index),
                    error_code=ErrorCode.none,
                    high_watermark=i64(1000),
                    aborted_transactions=None
                    if aborted is None
                    else tuple(
                        module.AbortedTransaction(producer_id=i64(p), first_offset=i64(o))
                        for p, o in aborted
                    ),
                    records=records,
                    **extra,
                )
            )
        key: dict[str, Any] = (
            {"topic_id": uuid.UUID(int=n + 1)} if version >= TOPIC_IDS_FROM else {"topic": name}
        )
        responses.append(module.FetchableTopicResponse(partitions=tuple(datas), **key))
    fields = {f.name for f in dataclasses.fields(module.FetchResponse)}
    message: dict[str, Any] = {
        "throttle_time": datetime.timedelta(0),
        "responses": tuple(responses),
    }
    if "error_code" in fields:
        message["error_code"] = ErrorCode.none
    if tagged and "node_endpoints" in fields:
        message["node_endpoints"] = (
            module.NodeEndpoint(node_id=i32(7), host="10.0.0.7", port=i32(9092), rack=None),
        )
    return response_frame(module.FetchResponse(**message), 11)[SIZE_PREFIX:]


def clean(base_offset: int, count: int = 4) -> bytes:
    """A batch whose records all carry an unsampled traceparent: nothing to read."""
    records = [traced(base_offset + i + 1, False) for i in range(count)]
    return batch(records, base_offset=base_offset)


def headerless(base_offset: int, count: int = 3) -> bytes:
    """A batch of records without any header."""
    return batch([(b"key", b"value", [])] * count, base_offset=base_offset)


def sampled(base_offset: int) -> bytes:
    """A batch with one sampled traceparent among unsampled ones."""
    records = [traced(base_offset + i + 1, i == 1) for i in range(3)]
    return batch(records, base_offset=base_offset)


def spelled_in_a_value(base_offset: int) -> bytes:
    """A batch whose one record has no header but a value spelling a sampled traceparent's
    wire form: read by its length prefixes, nothing to read."""
    value = b"\x16traceparent\x6e" + format_traceparent(3, 4, True)
    return batch([(b"k", value, [])], base_offset=base_offset)


def more_records_than_it_holds(records: bytes) -> bytes:
    """The batch with its record count (bytes 57-60) one too high: its records cannot be read
    by their length prefixes, so the byte search judges it."""
    count = int.from_bytes(records[57:61], "big") + 1
    return records[:57] + count.to_bytes(4, "big") + records[61:]


def compressed(records: list[tuple[bytes | None, bytes | None, list]]) -> bytes:
    """A gzip batch (kafka-python writes a batch plain when gzip would not make it smaller)."""
    data = batch(records, codec=1)
    assert data[22] & 0x07 == 1
    return data


def mixed_partition() -> bytes:
    """Every kind of batch a consumer skips or counts, and nothing to read: unsampled contexts,
    a legacy message set, a control batch, records without headers, a cut final batch."""
    return (
        clean(100, 6)  # 100..105
        + legacy_message()
        + batch([(None, b"", [])], base_offset=106, control=True)
        + headerless(107, 3)  # 107..109
        + clean(110, 2)[:-7]  # cut at the fetch's byte limit: not seen yet
    )


def beyond_int64() -> bytes:
    """A batch whose last offset is past 2**63 - 1: the highest offset is added exactly."""
    data = bytearray(clean((1 << 63) - 1, 3))
    data[23:27] = (2).to_bytes(4, "big")  # lastOffsetDelta
    return bytes(data)


def rich_topics() -> list[Topic]:
    """Several topics and partitions: the response most tests start from (nothing to read)."""
    return [
        (
            "orders",
            [
                (0, clean(10), None),
                (1, None, None),  # null records
                (2, b"", []),  # empty records, an empty aborted list
                (3, mixed_partition(), []),
            ],
        ),
        ("audit", [(-1, headerless(0, 5), None), (2**31 - 1, legacy_message(), None)]),
        (
            "edge",
            [
                (5, batch([(None, b"", [])], base_offset=3, control=True), None),  # control only
                (6, clean(0, 1)[:-1], None),  # only a cut batch
                (7, beyond_int64(), None),
            ],
        ),
    ]


# -- running the twins ---------------------------------------------------------------------------


@contextmanager
def pure_python() -> Iterator[None]:
    """The Python twin all the way down: the Python walk and search, not the compiled ones it
    picks when the extension is built."""
    with (
        mock.patch.object(skim, "walk", walk_python),
        mock.patch.object(skim, "sampled_traceparent_positions", python_search),
        mock.patch.object(skim, "sampled_record_starts", python_starts),
    ):
        yield


def header_size(body: bytes, version: int) -> int:
    """Where the message starts, as the exchange finds it; a damaged flexible header falls back
    to the usual size, so the twins still see the bytes."""
    try:
        return response_header_size(body, ApiKey.FETCH, version)
    except ProtocolError:
        return 4 if version < 12 else 5


def answers(program: Any, body: Any, offset: Any, version: Any) -> Answer:
    """The one answer all twins give (checked here): the Python twin as shipped, the Python
    twin over the Python walk and search, and the compiled one when built."""
    shipped = skim_fetch_response_python(program, body, offset, version)
    with pure_python():
        pure = skim_fetch_response_python(program, body, offset, version)
    assert pure == shipped
    if compiled is not None:
        assert compiled.skim_fetch_response(program, body, offset, version) == shipped
    return shipped


def skimmed(body: bytes, version: int) -> Answer:
    """Both twins' answer for a whole response body of `version`."""
    return answers(layout_program(version), body, header_size(body, version), version)


def general_path(body: bytes, version: int) -> list[tuple[Any, int, int, int]]:
    """What the general path computes for a response with nothing to read: the located
    partitions (topic name, or topic id from v13 on) and each one's skim."""
    located = locate_fetched_partitions(body, version)
    assert located is not None
    figures = []
    for part in located:
        assert len(part.records) > 0
        highest, count, wanted = skim_batches(part.records)
        assert wanted == []
        topic = part.topic_id if version >= TOPIC_IDS_FROM else part.topic
        figures.append((topic, part.partition, highest, count))
    return figures


def comparable(answer: list[SkimmedPartition], version: int) -> list[tuple[Any, int, int, int]]:
    """The skim's list with raw topic ids read as the general path reads them."""
    if version < TOPIC_IDS_FROM:
        return list(answer)
    assert all(type(topic) is bytes and len(topic) == 16 for topic, *_ in answer)
    return [(captured_uuid(topic), *rest) for topic, *rest in answer]  # type: ignore[arg-type]


def topic_name(version: int, n: int, name: str) -> str | bytes:
    """How the skim names the n-th topic of a `fetch_body` response."""
    return uuid.UUID(int=n + 1).bytes if version >= TOPIC_IDS_FROM else name


def captured(body: bytes, version: int, kind: int) -> list[tuple[int, int, int]]:
    """(start, value start, end) of each field of `kind` the layout walk crosses."""
    captures: Captures = []
    walked = walk_python(layout_program(version), body, header_size(body, version), captures)
    assert walked is not None and walked[0] == len(body)
    return [(start, value, end) for k, start, value, end in captures if k == kind]


# -- 1 and 2: the same list from both twins, with the general path's figures ----------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("tagged", [False, True])
def test_a_response_with_nothing_to_read_gives_each_partitions_figures(
    version: int, tagged: bool
) -> None:
    """The usual response: every partition with records, in wire order, with its highest data
    offset and record count; null and empty records are left out, skipped batches not counted."""
    body = fetch_body(version, rich_topics(), tagged=tagged)
    answer = skimmed(body, version)
    assert answer == [
        (topic_name(version, 0, "orders"), 0, 13, 4),
        (topic_name(version, 0, "orders"), 3, 109, 9),  # legacy, control and cut batch unseen
        (topic_name(version, 1, "audit"), -1, 4, 5),
        (topic_name(version, 1, "audit"), 2**31 - 1, -1, 0),  # a legacy message set only
        (topic_name(version, 2, "edge"), 5, -1, 0),  # a control batch only
        (topic_name(version, 2, "edge"), 6, -1, 0),  # a cut batch only
        (topic_name(version, 2, "edge"), 7, (1 << 63) + 1, 3),
    ]
    assert comparable(answer, version) == general_path(body, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_responses_without_partitions_or_records_give_an_empty_list(version: int) -> None:
    """Nothing fetched is nothing to read (a long poll that timed out): an empty list."""
    assert skimmed(fetch_body(version, []), version) == []
    topics: list[Topic] = [("idle", [(0, None, None), (1, b"", None)]), ("none", [])]
    body = fetch_body(version, topics)
    assert skimmed(body, version) == []
    assert general_path(body, version) == []


@pytest.mark.parametrize("version", [4, 11, 12, 13, HIGH])
def test_unsampled_contexts_and_records_without_headers_need_no_reading(version: int) -> None:
    """Only the sampled flag makes a record worth reading: unsampled traceparents, other
    headers, no headers at all and a payload that spells a sampled header are skimmed."""
    others = batch([(b"k", b"v", [("baggage", b"a=1"), ("other", b"x")])] * 2, base_offset=40)
    partitions: list[Partition] = [
        (0, clean(0, 30), None),
        (1, headerless(7, 9), None),
        (2, others, None),
        (3, spelled_in_a_value(50), None),
    ]
    body = fetch_body(version, [("t", partitions)])
    assert skimmed(body, version) == [
        (topic_name(version, 0, "t"), 0, 29, 30),
        (topic_name(version, 0, "t"), 1, 15, 9),
        (topic_name(version, 0, "t"), 2, 41, 2),
        (topic_name(version, 0, "t"), 3, 50, 1),
    ]
    assert comparable(skimmed(body, version) or [], version) == general_path(body, version)


@pytest.mark.parametrize("version", [4, 12, 13, HIGH])
def test_the_body_may_be_any_buffer(version: int) -> None:
    """The exchange hands a view of the frame it read: the answer does not depend on the
    buffer type."""
    body = fetch_body(version, rich_topics())
    expected = skimmed(body, version)
    offset = header_size(body, version)
    framed = len(body).to_bytes(4, "big") + body
    for buffer in (bytearray(body), memoryview(body), memoryview(framed)[SIZE_PREFIX:]):
        assert answers(layout_program(version), buffer, offset, version) == expected


@needs_compiled
def test_the_consumer_runs_the_compiled_twin() -> None:
    """The exported name is the compiled function when the extension is built."""
    assert compiled is not None
    assert skim_fetch_response is compiled.skim_fetch_response


# -- 3: declines -------------------------------------------------------------------------------


def with_partition(extra: Partition, *, topic: int = 0) -> list[Topic]:
    """`rich_topics` with one more partition appended to its `topic`-th topic."""
    topics = rich_topics()
    name, partitions = topics[topic]
    topics[topic] = (name, [*partitions, extra])
    return topics


DECLINED_PARTITIONS: dict[str, Callable[[], Partition]] = {
    "sampled": lambda: (9, sampled(50), None),
    "sampled flag 03": lambda: (
        9,
        batch([(None, b"v", [("traceparent", format_traceparent(1, 2, True)[:-2] + b"03")])]),
        None,
    ),
    "sampled after clean batches": lambda: (9, clean(0) + headerless(4) + sampled(7), None),
    "a damaged batch whose value spells a sampled header": lambda: (
        9,
        more_records_than_it_holds(spelled_in_a_value(0)),
        None,
    ),
    "compressed, no context": lambda: (9, compressed([(b"k", b"v" * 200, [])] * 3), None),
    "compressed unsampled": lambda: (
        9,
        compressed([traced(i + 1, False) for i in range(3)]),
        None,
    ),
    "aborted transactions": lambda: (9, clean(0), [(7, 0)]),
    "aborted transactions, null records": lambda: (9, None, [(7, 0), (8, 3)]),
    "aborted transactions, empty records": lambda: (9, b"", [(7, 0)]),
    "impossible batch length": lambda: (
        9,
        clean(0)[:8] + b"\x00\x00\x00\x05" + clean(0)[12:],
        None,
    ),
    "unknown magic": lambda: (9, clean(0)[:16] + b"\x03" + clean(0)[17:], None),
    "v2 batch shorter than its header": lambda: (
        9,
        clean(0)[:8] + (30).to_bytes(4, "big") + clean(0)[12:],
        None,
    ),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", list(DECLINED_PARTITIONS))
@pytest.mark.parametrize("topic", [0, 2])
def test_one_partition_to_read_declines_the_whole_response(
    version: int, case: str, topic: int
) -> None:
    """A record that may carry a sampled context, a compressed batch, aborted transactions or
    batches the skim cannot read, in any one partition, send the whole response to the general
    path, even when every other partition is clean."""
    body = fetch_body(version, with_partition(DECLINED_PARTITIONS[case](), topic=topic))
    assert skimmed(body, version) is None


@pytest.mark.parametrize("version", [4, 12, 13, HIGH])
def test_the_general_path_agrees_there_is_something_to_read(version: int) -> None:
    """A declined hit is one the general path would read: its skim names the batch."""
    body = fetch_body(version, with_partition((9, sampled(50), None)))
    assert skimmed(body, version) is None
    located = locate_fetched_partitions(body, version)
    assert located is not None
    wanted = [skim_batches(part.records)[2] for part in located]
    assert [part.partition for part, w in zip(located, wanted, strict=True) if w] == [9]
    body = fetch_body(version, with_partition((9, compressed([(b"k", b"v" * 200, [])]), None)))
    located = locate_fetched_partitions(body, version)
    assert located is not None
    (ninth,) = [part for part in located if part.partition == 9]
    assert skim_batches(ninth.records)[2][0][2] is None  # named for decompression


@pytest.mark.parametrize("version", range(LOW, TOPIC_IDS_FROM))
def test_a_null_topic_name_declines(version: int) -> None:
    """kio's decode reports a null name; the skim leaves it to the general path."""
    topics = rich_topics()
    topics.insert(1, ("", [(0, clean(0), None)]))
    body = bytearray(fetch_body(version, topics))
    start, value, end = captured(bytes(body), version, CAPTURED_TOPIC)[1]
    assert value == end  # the empty name
    if version >= 12:
        body[start] = 0  # compact string: length + 1, 0 is null
    else:
        body[start : start + 2] = b"\xff\xff"  # int16 -1
    assert skimmed(bytes(body), version) is None
    assert locate_fetched_partitions(bytes(body), version) is None
    # The empty name itself is a name like any other.
    assert skimmed(fetch_body(version, topics), version) is not None


@pytest.mark.parametrize("version", range(LOW, TOPIC_IDS_FROM))
@pytest.mark.parametrize("spelled", [b"caf\xc3\xa9", b"caf\xff\xfe", b"\x80\x80\x80\x80\x80"])
def test_a_topic_name_that_is_not_ascii_declines(version: int, spelled: bytes) -> None:
    """A name to decode in full (UTF-8, or not even that) is the general path's."""
    topics = rich_topics()
    topics.append(("cafex", [(0, None, None), (1, clean(0), None)]))
    body = bytearray(fetch_body(version, topics))
    _, value, end = captured(bytes(body), version, CAPTURED_TOPIC)[-1]
    assert body[value:end] == b"cafex"
    body[value:end] = spelled
    assert skimmed(bytes(body), version) is None
    located = locate_fetched_partitions(bytes(body), version)
    if spelled == b"caf\xc3\xa9":  # well-formed: the general path reads it
        assert located is not None and located[-1].topic == "café"


@pytest.mark.parametrize("version", range(LOW, TOPIC_IDS_FROM))
def test_a_non_ascii_name_without_records_still_declines(version: int) -> None:
    """The name is judged when it is crossed, whether or not its partitions hold records."""
    topics = [("cafex", [(0, None, None)]), ("plain", [(0, clean(0), None)])]
    body = bytearray(fetch_body(version, topics))
    _, value, end = captured(bytes(body), version, CAPTURED_TOPIC)[0]
    body[value:end] = b"caf\xc3\xa9"
    assert skimmed(bytes(body), version) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_a_walk_that_does_not_end_at_the_bodys_end_declines(version: int) -> None:
    """Trailing bytes or a cut body: the layout is not what the walk found."""
    body = fetch_body(version, rich_topics())
    assert skimmed(body, version) is not None
    for damaged in (body + b"\x00", body + b"\x00" * 64, body[:-1], body[: len(body) // 2]):
        assert skimmed(damaged, version) is None
    # Every cut, including through the header and inside a records field.
    for cut in range(0, len(body), 17):
        assert skimmed(body[:cut], version) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_an_array_count_larger_than_the_body_declines(version: int) -> None:
    """The walk refuses such a count with an error (kio would reserve memory for it): the
    skim declines instead of raising."""
    body = fetch_body(version, rich_topics())
    offset = header_size(body, version)
    # The responses' count follows throttle_time (and from v7 on error_code and session_id).
    at = offset + (4 if version < 7 else 10)
    if version < 12:  # an int32
        damaged = body[:at] + b"\x7f\xff\xff\xff" + body[at + 4 :]
    else:  # a varint of count + 1
        damaged = body[:at] + b"\xff\xff\xff\xff\x07" + body[at + 1 :]
    assert locate_fetched_partitions(damaged, version) is None
    assert skimmed(damaged, version) is None


@pytest.mark.parametrize("version", [4, 12, 13, HIGH])
def test_damaged_records_the_walk_still_crosses_decline(version: int) -> None:
    """Batch bytes the skim cannot read, inside a records field whose length is intact."""
    body = fetch_body(version, rich_topics())
    _, value, end = captured(body, version, CAPTURED_RECORDS)[0]
    assert end - value == len(clean(10))
    for at, patch in ((8, b"\x00\x00\x00\x01"), (8, b"\xff\xff\xff\xff"), (16, b"\x07")):
        damaged = bytearray(body)
        damaged[value + at : value + at + len(patch)] = patch
        assert skimmed(bytes(damaged), version) is None
        located = locate_fetched_partitions(bytes(damaged), version)
        assert located is not None  # the layout is fine: the batches are not
        with pytest.raises(RecordBatchError):
            skim_batches(located[0].records)


def differs(version: int, other: int) -> bool:
    """Whether the two versions' untagged layouts differ (some versions share one, and v16
    only adds a top-level tagged field to v13's)."""
    return layout_program(version)[:2] != layout_program(other)[:2]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_program_of_another_layout_declines(version: int) -> None:
    """A program that does not fit the body cannot walk it to its end; one of the same layout
    reads it alike."""
    body = fetch_body(version, rich_topics(), tagged=True)
    offset = header_size(body, version)
    expected = skimmed(body, version)
    assert expected
    others = [other for other in VERSIONS if differs(version, other)]
    assert len(others) >= 9
    for other in others:
        assert answers(layout_program(other), body, offset, version) is None
        assert answers(layout_program(other), body, offset, other) is None
    for same in VERSIONS:
        if layout_program(same) == layout_program(version):
            assert answers(layout_program(same), body, offset, version) == expected


def test_node_endpoints_are_a_tag_older_programs_do_not_know() -> None:
    """The v13 program stops at v16's node endpoints tag: declined."""
    body = fetch_body(16, rich_topics(), tagged=True)
    assert skimmed(body, 16) is not None
    assert answers(layout_program(13), body, header_size(body, 16), 16) is None


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(lambda p, b, o, v: ((1, 2), b, o, v), id="program-malformed"),
        pytest.param(lambda p, b, o, v: (None, b, o, v), id="program-none"),
        pytest.param(lambda p, b, o, v: (p, "text", o, v), id="body-text"),
        pytest.param(lambda p, b, o, v: (p, None, o, v), id="body-none"),
        pytest.param(lambda p, b, o, v: (p, b, -1, v), id="offset-negative"),
        pytest.param(lambda p, b, o, v: (p, b, len(b) + 1, v), id="offset-past-end"),
        pytest.param(lambda p, b, o, v: (p, b, 1 << 70, v), id="offset-huge"),
        pytest.param(lambda p, b, o, v: (p, b, float(o), v), id="offset-float"),
        pytest.param(lambda p, b, o, v: (p, b, None, v), id="offset-none"),
        pytest.param(lambda p, b, o, v: (p, b, 0, v), id="offset-zero"),
        pytest.param(lambda p, b, o, v: (p, b, o, None), id="version-none"),
        pytest.param(lambda p, b, o, v: (p, memoryview(b)[::2], o, v), id="body-strided"),
    ],
)
@pytest.mark.parametrize("version", [4, 12, 13])
def test_arguments_it_cannot_use_are_declined(
    arguments: Callable[[Any, bytes, int, int], tuple[Any, Any, Any, Any]], version: int
) -> None:
    """Never raises: whatever it is handed, the answer is None from both twins."""
    body = fetch_body(version, rich_topics())
    args = arguments(layout_program(version), body, header_size(body, version), version)
    assert answers(*args) is None


@needs_compiled
def test_the_compiled_twin_checks_its_argument_count() -> None:
    """A wrong call is a programming error, not a peer's bytes: TypeError."""
    assert compiled is not None
    with pytest.raises(TypeError):
        compiled.skim_fetch_response(layout_program(4), b"")


@needs_compiled
@pytest.mark.parametrize(
    ("topics", "api_version"),
    [
        pytest.param([("t", [(0, b"", None)])], 1 << 64, id="too-large"),
        pytest.param([("t", [(0, b"", None)])], 4.0, id="float"),
        pytest.param([], None, id="none-without-topics"),
        pytest.param([("t", [(0, b"", None)])], 1 << 15, id="past-int16"),
    ],
)
def test_both_twins_answer_alike_for_an_api_version_that_is_not_a_small_int(
    topics: list[Topic], api_version: Any
) -> None:
    """A version no Fetch request can carry is declined by both twins, before any walk."""
    assert compiled is not None
    body = fetch_body(4, topics)
    args = (layout_program(4), body, 4, api_version)
    assert compiled.skim_fetch_response(*args) is None
    assert skim_fetch_response_python(*args) is None


# -- 4: damaged responses ------------------------------------------------------------------------


@cache
def base_body(version: int) -> bytes:
    """The undamaged response the fuzz starts from: nothing to read, tagged fields in the
    flexible versions, and a few records that spell a sampled context only after damage."""
    topics = rich_topics()
    topics.append(("late", [(4, clean(200, 3) + headerless(203, 2), [])]))
    return fetch_body(version, topics, tagged=True)


def check(body: bytes, version: int) -> Answer:
    """Both twins' answer for damaged bytes; a list must still be the general path's figures
    wherever the exchange would skim: only a response whose header it can read (the twins are
    also asked past a damaged flexible header, where the general path has nothing to say)."""
    answer = skimmed(body, version)
    if answer is not None and header_is_readable(body, version):
        assert comparable(answer, version) == general_path(body, version)
    return answer


def header_is_readable(body: bytes, version: int) -> bool:
    try:
        response_header_size(body, ApiKey.FETCH, version)
    except ProtocolError:
        return False
    return True


def damaged_copies(version: int, count: int, seed: int) -> Iterator[bytes]:
    """Flipped bytes, cuts, insertions and lying lengths and counts, as a broken or hostile
    broker sends them."""
    body = base_body(version)
    rng = random.Random(seed)
    records = captured(body, version, CAPTURED_RECORDS)
    for _ in range(count):
        damaged = bytearray(body)
        kind = rng.randrange(6)
        if kind == 0:  # anywhere
            for _ in range(rng.randint(1, 3)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 1:  # inside a partition's records, where the walk still passes
            _, value, end = rng.choice(records)
            if end > value:
                damaged[rng.randrange(value, end)] = rng.randrange(256)
        elif kind == 2:
            del damaged[rng.randrange(len(damaged)) :]
        elif kind == 3:
            at = rng.randrange(len(damaged) + 1)
            damaged[at:at] = rng.randbytes(rng.randint(1, 4))
        elif kind == 4:
            at = rng.randrange(len(damaged))
            del damaged[at : at + rng.randint(1, 4)]
        else:  # a big or negative length or count
            at = rng.randrange(len(damaged) - 4)
            damaged[at : at + 4] = rng.choice((b"\x7f\xff\xff\xff", b"\xff\xff\xff\xfe"))
        yield bytes(damaged)


def test_damaged_responses_get_the_same_answer_from_both_twins() -> None:
    """Some damage still walks to the end with readable batches (a list), most does not
    (None); neither twin raises and they never differ."""
    outcomes = {"list": 0, "none": 0}
    for version in VERSIONS:
        for damaged in damaged_copies(version, 200, seed=version):
            answer = check(damaged, version)
            outcomes["none" if answer is None else "list"] += 1
    assert sum(outcomes.values()) == 200 * len(VERSIONS)
    assert outcomes["list"] > 100 and outcomes["none"] > 100, outcomes


@given(
    version=st.sampled_from(VERSIONS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["overwrite", "truncate", "insert"]),
            st.integers(0, 4000),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=3,
    ),
)
@settings(max_examples=300, deadline=None)
@example(version=12, edits=[("overwrite", 4, b"\r")])  # a flexible header with 13 tags
def test_any_damage_gets_the_same_answer(version: int, edits: list[tuple[str, int, bytes]]) -> None:
    """Whatever the damage, the twins agree, neither raises, and a list is the general
    path's."""
    data = bytearray(base_body(version))
    for edit, at, value in edits:
        at %= len(data) + 1
        if edit == "overwrite":
            data[at : at + len(value)] = value
        elif edit == "truncate":
            del data[at:]
        else:
            data[at:at] = value
    check(bytes(data), version)


# -- 5: the fetch lane (`skim_fetch_frame`: a whole frame, run by the pairing core) ---------------


def lane_programs() -> dict[int, Any]:
    return {version: layout_program(version) for version in VERSIONS}


def lane_answers(programs: Any, frame: Any, version: Any) -> Answer:
    """The one answer both twins of the lane give (checked here)."""
    python = skim.skim_fetch_frame_python(programs, frame, version)
    if compiled is not None:
        assert compiled.skim_fetch_frame(programs, frame, version) == python
    return python


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("tagged", [False, True])
def test_the_lane_answers_for_a_frame_what_the_skim_answers_for_its_body(
    version: int, tagged: bool
) -> None:
    body = fetch_body(version, rich_topics(), tagged=tagged)
    answer = lane_answers(lane_programs(), frame(body), version)
    assert answer is not None and len(answer) == 7
    assert answer == skimmed(body, version)
    sampled_body = fetch_body(version, with_partition((9, sampled(40), None)))
    assert lane_answers(lane_programs(), frame(sampled_body), version) is None, "to read"


@pytest.mark.parametrize("version", [v for v in VERSIONS if v >= 12])
def test_the_lane_leaves_a_header_with_tagged_fields_to_the_general_path(version: int) -> None:
    """The exchange reads such a header in full; the lane takes only the usual one."""
    body = fetch_body(version, rich_topics())
    assert body[4] == 0, "no tagged header fields"
    tagged = body[:4] + b"\x01\x00\x01\x07" + body[5:]  # one tagged field, tag 0, one byte
    assert skimmed(tagged, version) is not None, "the skim itself could read past it"
    assert lane_answers(lane_programs(), frame(tagged), version) is None


@pytest.mark.parametrize(
    ("programs", "data", "version"),
    [
        pytest.param({}, frame(b"\x00\x00\x00\x0b\x00"), 12, id="no-program-for-the-version"),
        pytest.param(None, frame(b"\x00\x00\x00\x0b\x00"), 12, id="no-programs"),
        pytest.param("lane_programs", frame(b"\x00\x00\x00\x0b"), 12, id="cut-header"),
        pytest.param("lane_programs", b"\x00\x00", 4, id="shorter-than-a-prefix"),
        pytest.param("lane_programs", frame(b"\x00\x00\x00\x0b\x00"), 1 << 40, id="huge-version"),
        pytest.param("lane_programs", frame(b"\x00\x00\x00\x0b\x00"), "12", id="text-version"),
    ],
)
def test_the_lane_declines_what_it_cannot_use(programs: Any, data: bytes, version: Any) -> None:
    """Never raises: it runs before the response is sent, where an exception would close the
    connection over something the general path handles."""
    if programs == "lane_programs":
        programs = lane_programs()
    assert lane_answers(programs, data, version) is None


def test_damaged_frames_get_the_same_answer_from_both_lane_twins() -> None:
    outcomes = {"list": 0, "none": 0}
    for version in VERSIONS:
        for damaged in damaged_copies(version, 100, seed=1000 + version):
            answer = lane_answers(lane_programs(), frame(damaged), version)
            outcomes["none" if answer is None else "list"] += 1
            if answer is not None:
                assert answer == skimmed(damaged, version)
    assert outcomes["list"] > 50 and outcomes["none"] > 50, outcomes


@needs_compiled
def test_the_consumers_lane_is_the_compiled_twin() -> None:
    from functools import partial

    from opentelemetry.sdk.resources import Resource

    from proxy.metrics import Metrics
    from proxy.tracing.consumer import FetchTracer
    from proxy.tracing.core import TracingCore
    from proxy.tracing.propagation import Propagation
    from proxy.tracing.sampling import sampler_from_env
    from tests.proxy.collected import CollectedSpans

    core = TracingCore(
        sampler=sampler_from_env("parentbased_traceidratio", "0.01"),
        propagation=Propagation(["tracecontext"]),
        pipeline=CollectedSpans(Metrics()),
        resource=Resource.create({}),
    )
    lane = FetchTracer(core, Metrics()).fetch_lane((LOW, HIGH))
    assert isinstance(lane, partial) and lane.func is compiled.skim_fetch_frame
    assert sorted(lane.args[0]) == VERSIONS
