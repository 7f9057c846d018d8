"""Finding the few fetched records that may carry a sampled traceparent, without parsing them.

The consumer side's hot path at low sampling rates: nearly every fetched byte belongs to a record
that gets no span. The records of a batch are stepped over by their length prefixes to their
headers, and only those holding a traceparent header with the sampled flag are parsed, by the
strict parser that has the last word; payload bytes are never read. A batch whose records do not
read that way goes by a byte search for the header's wire form instead, a superset of what that
parser accepts for the lower-case key and a version-00 value, the form every W3C propagator
writes.

The loops have compiled twins (`_speedups.c`): the search, the records holding a sampled header,
and the walk over a partition's batches that finds them in each.
`skim_fetch_response` skims every partition of a Fetch response in one call (`_fetch_skim.c`),
for the usual response with nothing to read; `skim_fetch_frame`, the same for a whole frame, is
the pairing core's fetch lane, run before the response is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..codec import native
from ..codec.fetch import (
    CAPTURED_ABORTED_OFFSET,
    CAPTURED_ABORTED_PRODUCER,
    CAPTURED_PARTITION,
    CAPTURED_RECORDS,
    CAPTURED_TOPIC,
    TOPIC_IDS_FROM,
)
from ..codec.framing import SIZE_PREFIX
from ..codec.guard import Captures, Program, walk
from ..codec.records import (
    CODEC_MASK,
    CONTROL_FLAG,
    MAX_VARINT_BYTES,
    MAX_VARLONG_BYTES,
    RECORDS_OFFSET,
    BatchHeader,
    Buffer,
    RecordBatchError,
    iter_batch_headers,
    read_varint,
    record_starts_holding,
)
from ..interceptors import SkimmedPartition
from .traceparent import SAMPLED_FLAG_CHARS, VALUE_LENGTH, WIRE_KEY, WIRE_PREFIX

#: From the start of a traceparent header (`WIRE_PREFIX`, as it appears in a decompressed batch
#: body) to the last character of its flags ("00-<32>-<16>-0X").
_FLAGS_LAST_CHAR = len(WIRE_PREFIX) + VALUE_LENGTH - 1
_PREFIX_SIZE = len(WIRE_PREFIX)
_KEY_SIZE = len(WIRE_KEY)

#: (batch start, batch end, where its candidate records begin in its body): None for a
#: compressed batch, which the caller decompresses and searches itself.
WantedBatch = tuple[int, int, list[int] | None]
#: (highest offset of the data batches or -1, how many records they hold, the batches to read).
Skim = tuple[int, int, list[WantedBatch]]


def sampled_traceparent_positions_python(
    data: bytes | memoryview, start: int, end: int
) -> list[int]:
    """Where in ``data[start:end]`` a traceparent header with the sampled flag may start.

    A superset: each position still goes through the strict parser. `bytes.find` skips
    between headers at memory speed, where a regular expression walks every byte. The search
    goes on right after each prefix found (the prefix cannot overlap itself), so a record value
    that happens to hold the prefix bytes cannot hide a real header that follows it.
    """
    if start < 0 or end < 0:
        raise ValueError("start and end must not be negative")
    end = min(end, len(data))
    # bytes.find needs bytes (the compiled twin reads any buffer as it is): a view of a whole
    # bytes object is searched in that object, any other buffer only in a copy of the window.
    base = 0
    if not isinstance(data, bytes):
        whole = data.obj if isinstance(data, memoryview) else None
        if isinstance(whole, bytes) and data.nbytes == len(whole):
            data = whole
        else:
            base, data = start, bytes(data[start:end])
            start, end = 0, max(end - base, 0)
    positions: list[int] = []
    find = data.find
    pos = find(WIRE_PREFIX, start, end)
    while pos >= 0:
        flags_at = pos + _FLAGS_LAST_CHAR
        if flags_at < end and data[flags_at] in SAMPLED_FLAG_CHARS:
            positions.append(base + pos)
        pos = find(WIRE_PREFIX, pos + _PREFIX_SIZE, end)
    return positions


#: The compiled twin when built: a memchr scan, over ten times faster.
sampled_traceparent_positions = native.twin(
    "sampled_traceparent_positions", sampled_traceparent_positions_python
)


def sampled_record_starts_python(
    data: Buffer, start: int, end: int, record_count: int
) -> list[int]:
    """Where the records of the batch body ``data[start:end]`` that hold a traceparent header
    with the sampled flag begin, as offsets from ``start``.

    The records are read one by one and each one's headers found by the length prefixes, so
    payload bytes are never searched (the compiled twin's way: a byte search stops at every
    byte of a payload that looks like the prefix's first). A body that is not exactly
    `record_count` well-formed records goes by the byte search instead: the records holding its
    hits, as `record_starts_holding` finds them (and raises for them). This twin searches first,
    as searching is what Python does fast, and reads the records only when there is a hit: the
    answer is the same.
    """
    if start < 0 or end < 0:
        raise RecordBatchError("start and end must not be negative")
    hits = sampled_traceparent_positions(data, start, end)
    if not hits:
        return []
    end = min(end, len(data))
    starts = _read_sampled_starts(data, start, end, record_count)
    if starts is None:
        return record_starts_holding(data, start, end, record_count, hits)
    return starts


def _read_sampled_starts(data: Buffer, start: int, end: int, record_count: int) -> list[int] | None:
    """`sampled_record_starts`' structural read: None when the body is not exactly
    `record_count` well-formed records."""
    if record_count < 0:
        return None
    starts: list[int] = []
    pos = start
    try:
        for _ in range(record_count):
            if pos >= end:
                return None
            length, at = read_varint(data, pos, end, MAX_VARINT_BYTES)
            record_end = at + length
            if length <= 0 or record_end > end:
                return None
            at += 1  # attributes
            _, at = read_varint(data, at, record_end, MAX_VARLONG_BYTES)  # timestamp delta
            _, at = read_varint(data, at, record_end, MAX_VARINT_BYTES)  # offset delta
            for _field in ("key", "value"):
                size, at = read_varint(data, at, record_end, MAX_VARINT_BYTES)
                if size < -1 or size > record_end - at:
                    return None
                at += max(size, 0)
            header_count, at = read_varint(data, at, record_end, MAX_VARINT_BYTES)
            if header_count < 0:
                return None
            sampled = False
            for _ in range(header_count):
                key_size, at = read_varint(data, at, record_end, MAX_VARINT_BYTES)
                if key_size < 0 or key_size > record_end - at:
                    return None
                key_start = at
                value_size, at = read_varint(data, at + key_size, record_end, MAX_VARINT_BYTES)
                if value_size < -1 or value_size > record_end - at:
                    return None
                at += max(value_size, 0)
                if (
                    key_size == _KEY_SIZE
                    and value_size == VALUE_LENGTH
                    and data[key_start : key_start + key_size] == WIRE_KEY
                    and data[at - 1] in SAMPLED_FLAG_CHARS
                ):
                    sampled = True
            if at != record_end:
                return None
            if sampled:
                starts.append(pos - start)
            pos = record_end
    except RecordBatchError:
        return None
    return starts if pos == end else None


#: The compiled twin when built: the structural read alone, far faster than the search.
sampled_record_starts = native.twin(
    "sampled_record_starts", sampled_record_starts_python, error=RecordBatchError
)


def skim_headers(records: Buffer, headers: Iterable[BatchHeader]) -> Skim:
    """Skim the batches of a partition's ``records`` that ``headers`` name (the data batches a
    consumer sees): uncompressed ones are searched in place, compressed ones are handed back."""
    highest = -1
    record_count = 0
    wanted: list[WantedBatch] = []
    for header in headers:
        highest = max(highest, header.base_offset + header.last_offset_delta)
        record_count += header.record_count
        if header.attributes & CODEC_MASK:
            wanted.append((header.start, header.end, None))
            continue
        body_start = header.start + RECORDS_OFFSET
        starts = sampled_record_starts(records, body_start, header.end, header.record_count)
        if starts:
            wanted.append((header.start, header.end, starts))
    return highest, record_count, wanted


def skim_batches_python(records: Buffer) -> Skim:
    """`skim_headers` over every data batch (v2, not a control batch): what a consumer sees of
    a partition with no aborted transactions in it."""
    data_batches = (  # lazily: a damaged batch raises only once the walk reaches it
        header
        for header in iter_batch_headers(records)
        if header.magic == 2 and not header.attributes & CONTROL_FLAG
    )
    return skim_headers(records, data_batches)


#: The compiled twin when built: the batch walk, the search and the record steps in one call.
skim_batches = native.twin("skim_batches", skim_batches_python, error=RecordBatchError)


def skim_fetch_response_python(
    program: Program, body: Buffer, offset: int, api_version: int
) -> list[SkimmedPartition] | None:
    """Every partition with records of the Fetch response in `body` (its message starting at
    `offset`, walked with `program`, `fetch.layout_program`'s), skimmed, when none of them holds
    a record that may carry a sampled context. None, for the general path, for anything else:
    a hit, aborted transactions, a null topic name or one that is not ASCII, a walk that does
    not end at the body's end, a partition the skim cannot read. Never raises."""
    if type(api_version) is not int or not -(1 << 15) <= api_version < 1 << 15:
        return None  # no Fetch version
    try:
        view = memoryview(body)
        captures: Captures = []
        walked = walk(program, view, offset, captures)
        if walked is None or walked[0] != len(view):
            return None
        skimmed: list[SkimmedPartition] = []
        topic: str | bytes | None = None
        partition = 0
        for kind, start, value, end in captures:
            if kind == CAPTURED_TOPIC:
                if api_version >= TOPIC_IDS_FROM:
                    topic = bytes(view[start:end])
                elif value < 0:
                    return None  # a null name
                else:  # a name that is not ASCII raises: declined, to be decoded in full
                    topic = str(view[value:end], "ascii")
            elif kind == CAPTURED_PARTITION:
                if end - start != 4:
                    return None
                partition = int.from_bytes(view[start:end], "big", signed=True)
            elif kind in (CAPTURED_ABORTED_PRODUCER, CAPTURED_ABORTED_OFFSET):
                return None  # which records a consumer sees depends on them
            elif kind == CAPTURED_RECORDS and value >= 0 and end > value:
                if topic is None:
                    return None
                highest, count, wanted = skim_batches_python(view[value:end])
                if wanted:
                    return None  # a record to read: the general path
                skimmed.append((topic, partition, highest, count))
        return skimmed
    except Exception:
        return None


#: The whole-response skim the consumer side runs: the compiled twin when built.
skim_fetch_response = native.twin("skim_fetch_response", skim_fetch_response_python)


def skim_fetch_frame_python(
    programs: Mapping[int, Program], frame: Buffer, api_version: int
) -> list[SkimmedPartition] | None:
    """`skim_fetch_response` for a whole response frame (size prefix first), walked with
    `programs[api_version]`. Its header is of v1 when that program is flexible: tagged header
    fields are declined. The pairing core's fetch lane (`FetchTracer.fetch_lane`): it runs
    before the frame is sent, so anything unusual is left to the general path. Never raises."""
    try:
        program = programs.get(api_version) if isinstance(programs, Mapping) else None
        if program is None:
            return None
        body = memoryview(frame)[SIZE_PREFIX:]
        offset = 5 if program[0] else 4  # the correlation id, then no tagged fields
        if len(body) < offset or (program[0] and body[4] != 0):
            return None
    except Exception:
        return None
    return skim_fetch_response_python(program, body, offset, api_version)


#: The fetch lane's skim: the compiled twin when built.
skim_fetch_frame = native.twin("skim_fetch_frame", skim_fetch_frame_python)
