"""The producer's fast path: a new root context for every record of a whole batch, in one pass.

Nearly every traced Produce request carries, per partition, one uncompressed batch of records
without headers (ProducerPerformance, librdkafka's and the Java client's defaults). For those,
drawing the contexts, adding one `traceparent` header to each record and re-signing the batch
is one call (`_speedups.c` has the compiled twin) instead of the general batch-by-batch path of
`ProducePartition.inject`, whose result it equals for the same random draw. Anything else
(compressed, control, several batches, records that already have headers, a batch too large
for the headers, a CRC that is already wrong) is answered None and left to that general path,
which knows how to say what is wrong.

`inject_request_roots` does the same for a whole Produce request: the pairing core calls it for
every Produce request while tracing is on, so a request whose records are all unsampled goes out
rebuilt without any Python running for it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..codec import native
from ..codec.guard import Captures, Program, walk
from ..codec.produce import (
    CAPTURED_PARTITION,
    CAPTURED_TOPIC,
    CAPTURED_TRANSACTIONAL_ID,
    TOPIC_IDS_FROM,
    locate_request_partitions,
    plain_header_size,
    splice_located,
)
from ..codec.records import (
    ATTRIBUTES_OFFSET,
    CODEC_MASK,
    CONTROL_FLAG,
    CRC_OFFSET,
    LOG_OVERHEAD,
    MAGIC_OFFSET,
    MIN_RECORD_SIZE,
    RECORDS_OFFSET,
    RecordBatchError,
    first_record_has_headers,
    record_fields_python,
    splice_one_header_each_python,
)
from ..interceptors import LaneResult
from .traceparent import VALUE_LENGTH, WIRE_PREFIX, root_traceparents_python

#: A traceparent header in wire form, as each record gains it.
ROOT_HEADER_SIZE = len(WIRE_PREFIX) + VALUE_LENGTH
#: Random bytes per context: 16 of trace id, 8 of span id.
RANDOM_PER_ROOT = 24
_HEADER = struct.Struct(">qi")
_COUNT = struct.Struct(">i")
_CRC = struct.Struct(">I")

_SIZE_PREFIX = 4

#: (new batch, record count, [(index, trace id, span id, record start, offset, key)] of the
#: sampled records, the start counted in the original batch's records section).
Injected = tuple[bytes, int, list[tuple[int, int, int, int, int, bytes | None]]]


def inject_roots_python(
    records: bytes | memoryview,
    draw: Callable[[int], bytes],
    threshold: bytes | None,
    crc: Callable[..., int],
    max_batch_bytes: int,
) -> Injected | None:
    """`records` as one re-signed batch with a new root traceparent on every record, or None
    when they are not one whole uncompressed batch of records without headers that stays
    within `max_batch_bytes`. `draw(n)` gives n random bytes; `crc` is CRC-32C."""
    view = memoryview(records)
    size = len(view)
    if size < RECORDS_OFFSET:
        return None
    _, batch_length = _HEADER.unpack_from(view, 0)
    attributes = view[ATTRIBUTES_OFFSET + 1]
    if (
        batch_length + LOG_OVERHEAD != size
        or view[MAGIC_OFFSET] != 2
        or attributes & CODEC_MASK
        or attributes & CONTROL_FLAG
    ):
        return None
    count = _COUNT.unpack_from(view, RECORDS_OFFSET - 4)[0]
    body = view[RECORDS_OFFSET:]
    if (
        count <= 0
        or count > len(body) // MIN_RECORD_SIZE
        or size + count * ROOT_HEADER_SIZE > max_batch_bytes
        or first_record_has_headers(body)
        or crc(view[ATTRIBUTES_OFFSET:]) != _CRC.unpack_from(view, CRC_OFFSET)[0]
    ):
        return None
    drawn = draw(count * RANDOM_PER_ROOT)
    for at in range(0, len(drawn), RANDOM_PER_ROOT):
        if not any(drawn[at : at + 16]) or not any(drawn[at + 16 : at + RANDOM_PER_ROOT]):
            return None  # an invalid (all-zero) id: the general path draws again
    headers, sampled = root_traceparents_python(drawn, threshold)
    starts: list[int] = []
    new_body = splice_one_header_each_python(body, headers, [s[0] for s in sampled], starts)
    if new_body is None or RECORDS_OFFSET + len(new_body) > max_batch_bytes:
        return None
    header = bytearray(view[:RECORDS_OFFSET])
    _COUNT.pack_into(header, 8, RECORDS_OFFSET - LOG_OVERHEAD + len(new_body))
    _CRC.pack_into(header, CRC_OFFSET, crc(new_body, crc(header[ATTRIBUTES_OFFSET:])))
    base_offset, _ = _HEADER.unpack_from(view, 0)
    found = [
        (*ids, start, *_offset_and_key(body, start, base_offset))
        for ids, start in zip(sampled, starts, strict=True)
    ]
    return bytes(header) + new_body, count, found


def _offset_and_key(body: memoryview, start: int, base_offset: int) -> tuple[int, bytes | None]:
    """The offset and key of the record that begins at `start` of the batch's records."""
    fields = record_fields_python(body, start, len(body), base_offset, 0, None)
    key_start, key_size = fields[5], fields[6]
    return fields[3], bytes(body[key_start : key_start + key_size]) if key_size >= 0 else None


#: The fast path the producer runs: the compiled twin when the extension is built.
inject_roots = native.twin("inject_roots", inject_roots_python, error=RecordBatchError)


#: A partition with sampled records: (topic name, or the raw 16-byte topic id from v13 on,
#: partition, start and end of its original records in the frame, what `inject_roots` made).
LanePartition = tuple[str | bytes, int, int, int, Injected]


def inject_request_roots_python(
    programs: dict[int, Program],
    draw: Callable[[int], bytes],
    threshold: bytes | None,
    crc: Callable[..., int],
    max_batch_bytes: int,
    frame: bytes | memoryview,
    api_version: int,
) -> LaneResult | None:
    """A Produce request (its whole frame) with a new root traceparent on every record, by
    `inject_roots_python` per partition; None, for the general path, when the request is
    anything but plain: a header with tagged fields or a client id that is not ASCII, a version
    without a program, a transactional id or topic name that is not ASCII, a null topic name,
    a request the layout walk cannot read to its end, or any partition `inject_roots` declines.
    Errors are declined too: the general path meets them again and says what they are."""
    try:
        body = memoryview(frame)[_SIZE_PREFIX:]
        header_size = plain_header_size(body, api_version)
        if header_size is None or api_version not in programs:
            return None
        if not _plain_names(programs[api_version], body, header_size, api_version):
            return None
        layout = locate_request_partitions(body, header_size, api_version)
        if layout is None:
            return None
        replacements: dict[tuple[int, int], bytes] = {}
        parts: list[LanePartition] = []
        records = 0
        for located, (_, end) in zip(layout.partitions, layout.fields, strict=True):
            if located.records is None:
                continue
            injected = inject_roots_python(located.records, draw, threshold, crc, max_batch_bytes)
            if injected is None:
                return None
            replacements[(located.topic_index, located.partition_index)] = injected[0]
            if not injected[2]:
                records += injected[1]
                continue
            topic = located.topic
            if topic is None:  # named by id: as the request carries it
                topic = located.topic_id.bytes if located.topic_id is not None else bytes(16)
            start = _SIZE_PREFIX + end - len(located.records)
            parts.append((topic, located.partition, start, _SIZE_PREFIX + end, injected))
        if not replacements:
            return frame, records, None, parts
        spliced = splice_located(body, layout, api_version, replacements)
        if len(spliced) - _SIZE_PREFIX > 0x7FFFFFFF:
            return None
        return spliced, records, layout.transactional_id if parts else None, parts
    except Exception:
        return None


def _plain_names(program: Program, body: memoryview, header_size: int, api_version: int) -> bool:
    """Whether the request walks to its end with its transactional id and topic names (every
    topic's, with partitions or not) plain ASCII and no topic name null: checked before any
    draw, so such requests are declined having drawn nothing."""
    captures: Captures = []
    walked = walk(program, body, header_size, captures)
    if walked is None or walked[0] != len(body):
        return False
    for kind, start, value, end in captures:
        named = kind == CAPTURED_TRANSACTIONAL_ID or (
            kind == CAPTURED_TOPIC and api_version < TOPIC_IDS_FROM
        )
        if named and value >= 0 and not bytes(body[value:end]).isascii():
            return False
        if kind == CAPTURED_TOPIC and api_version < TOPIC_IDS_FROM and value < 0:
            return False
        if kind == CAPTURED_PARTITION and end - start != 4:
            return False
    return True


#: The request lane the pairing core runs: the compiled twin when the extension is built.
inject_request_roots = native.twin("inject_request_roots", inject_request_roots_python)
