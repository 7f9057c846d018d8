"""Receive spans written straight from fetched records: the consumer's compiled span path.

With W3C propagation, parent-based sampling, a span per record and an OTLP exporter, a
`receive` span is known in full from its record (offset, timestamp, key, traceparent) and what
the spans of its partition share (`SpanTemplate`). `receive_spans` reads a partition's records
once, by their length prefixes as the skim does, and writes each sampled record's span in OTLP
wire form: no record view, context, attribute dict or SDK span object is made for it, and the
export encoder joins the bytes as they are (`EncodedSpans`). The compiled twin is in
`_receive_spans.c`.

Only the usual case is taken: batches whose records (decompressed by the caller's function) read
exactly, header keys of the records with a sampled traceparent in ASCII, numbers within 64 bits.
Anything else is declined (None) and `FetchTracer` goes the general way, whose spans these equal
byte for byte.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import ParamSpec

from ..codec import native
from ..codec.records import (
    BATCH_HEADER,
    CODEC_MASK,
    CONTROL_FLAG,
    LOG_OVERHEAD,
    MAGIC_OFFSET,
    MAX_VARINT_BYTES,
    MAX_VARLONG_BYTES,
    MIN_LEGACY_MESSAGE_SIZE,
    RECORDS_OFFSET,
    TIMESTAMP_TYPE_FLAG,
    Buffer,
)
from .otlp_encoding import (
    SpanTemplate,
    int_attribute,
    parent_span_id,
    span_field,
    span_ids,
    span_times,
    str_attribute,
)
from .spans import KEY_LIMIT
from .traceparent import SAMPLED_FLAG_CHARS, VALUE_LENGTH, WIRE_KEY, parse_traceparent

#: (highest offset of the data batches or -1, records in them, records read with a valid
#: context, records read without one, the spans' `ScopeSpans.spans` fields, how many spans).
Received = tuple[int, int, int, int, bytes, int]

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_M64 = (1 << 64) - 1
_NOT_ASCII = re.compile(rb"[^\x00-\x7f]")
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")


_P = ParamSpec("_P")


class _Declined(Exception):
    """Not the usual case: the general path reads these records."""


def _declining(function: Callable[_P, Received]) -> Callable[_P, Received | None]:
    """`function`, answering None where it declines (raises `_Declined`)."""

    @functools.wraps(function)
    def declining(*args: _P.args, **kwargs: _P.kwargs) -> Received | None:
        try:
            return function(*args, **kwargs)
        except _Declined:
            return None

    return declining


@_declining
def receive_spans_python(
    records: Buffer,
    template: SpanTemplate,
    high: int,
    start_ns: int,
    end_ns: int,
    now_ms: int,
    draw: Callable[[int], bytes],
    key_text: Callable[[bytes], str | None],
    decompress: Callable[[int, memoryview], bytes],
) -> Received:
    """A partition's fetched `records` read for their sampled contexts, and a `receive` span
    in wire form (`template`) for each: its parent the record's context, a new span id from
    `draw` (8 bytes a span, drawn once; zero becomes 1), `start_ns` to `end_ns` (both above
    zero, within int64, as `high` and `now_ms` are; anything else is declined), the record's
    offset, its age at `now_ms`, the redelivered mark when the offset is not above `high`, and
    its key when short printable text (ASCII is judged here, anything else by `key_text`).
    A compressed batch is read from what `decompress(codec, its records section)` gives.
    None when the records are not the usual case (see the module's docstring)."""
    for number in (high, start_ns, end_ns, now_ms):
        if not isinstance(number, int):
            raise _Declined
        _int64(number)
    if start_ns <= 0 or end_ns <= 0:
        raise _Declined
    view = memoryview(records).cast("B")
    total = len(view)
    highest = -1
    record_count = with_context = without_context = 0
    sampled: list[tuple[int, int, int, int, bytes | None]] = []
    pos = 0
    while total - pos >= LOG_OVERHEAD:
        batch_length = int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True)
        if batch_length < MIN_LEGACY_MESSAGE_SIZE:
            raise _Declined
        end = pos + LOG_OVERHEAD + batch_length
        if end > total:
            break  # a truncated final batch: normal at a fetch's byte limit
        magic = view[pos + MAGIC_OFFSET]
        if magic < 2:
            pos = end
            continue
        if magic != 2 or end - pos < RECORDS_OFFSET:
            raise _Declined
        fields = BATCH_HEADER.unpack_from(view, pos)
        base_offset, attributes, last_delta = fields[0], fields[5], fields[6]
        base_timestamp, max_timestamp, count = fields[7], fields[8], fields[12]
        if attributes & CONTROL_FLAG:
            pos = end
            continue
        highest = max(highest, base_offset + last_delta)
        record_count += count
        if count < 0:
            raise _Declined
        log_append_time = max_timestamp if attributes & TIMESTAMP_TYPE_FLAG else None
        body, at, stop = view, pos + RECORDS_OFFSET, end
        if attributes & CODEC_MASK:
            body, at = _decompressed(decompress, attributes & CODEC_MASK, view[at:end]), 0
            stop = len(body)
        for _ in range(count):
            at, found = _read_record(body, at, stop)
            if found is None:
                continue
            offset_delta, timestamp_delta, key, traceparent = found
            offset = _int64(base_offset + offset_delta)
            highest = max(highest, offset)
            context = parse_traceparent(traceparent)
            if context is None:
                without_context += 1
                continue
            with_context += 1
            trace_id, parent_id, is_sampled = context
            if is_sampled:
                timestamp = (
                    log_append_time
                    if log_append_time is not None
                    else base_timestamp + timestamp_delta
                )
                age = _int64(max(now_ms - timestamp, 0))
                sampled.append((trace_id, parent_id, offset, age, key))
        if at != stop:
            raise _Declined
        pos = end
    _int64(highest)
    spans = _write_spans(sampled, template, high, start_ns, end_ns, draw, key_text)
    return highest, record_count, with_context, without_context, spans, len(sampled)


def _decompressed(
    decompress: Callable[[int, memoryview], bytes], codec: int, payload: memoryview
) -> memoryview:
    """A compressed batch's records section, or declined when `decompress` cannot give it
    (the general path then says what is wrong)."""
    try:
        body = decompress(codec, payload)
    except Exception:
        raise _Declined from None
    if type(body) is not bytes:
        raise _Declined
    return memoryview(body)


def _read_record(
    view: memoryview, pos: int, end: int
) -> tuple[int, tuple[int, int, bytes | None, bytes | None] | None]:
    """The record at `pos`, read to its end: (where it ends, and for a record holding a sampled
    traceparent header its offset delta, timestamp delta, key and first traceparent value)."""
    length, at = _varint(view, pos, end, MAX_VARINT_BYTES)
    if length <= 0 or length > end - at:
        raise _Declined
    record_end = at + length
    at += 1  # attributes
    timestamp_delta, at = _varint(view, at, record_end, MAX_VARLONG_BYTES)
    offset_delta, at = _varint(view, at, record_end, MAX_VARINT_BYTES)
    key_size, at = _varint(view, at, record_end, MAX_VARINT_BYTES)
    key_start, at = at, _step_over(at, record_end, key_size, -1)
    value_size, at = _varint(view, at, record_end, MAX_VARINT_BYTES)
    at = _step_over(at, record_end, value_size, -1)
    header_count, at = _varint(view, at, record_end, MAX_VARINT_BYTES)
    if header_count < 0:
        raise _Declined
    holds_sampled, ascii_keys = False, True
    first: tuple[int, int] | None = None
    for _ in range(header_count):
        name_size, at = _varint(view, at, record_end, MAX_VARINT_BYTES)
        name_start, at = at, _step_over(at, record_end, name_size, 0)
        value_size, at = _varint(view, at, record_end, MAX_VARINT_BYTES)
        value_start, at = at, _step_over(at, record_end, value_size, -1)
        name = bytes(view[name_start : name_start + name_size])
        if _NOT_ASCII.search(name):
            ascii_keys = False
        if first is None and name.lower() == WIRE_KEY:
            first = (value_start, value_size)
        if (
            name == WIRE_KEY
            and value_size == VALUE_LENGTH
            and view[value_start + VALUE_LENGTH - 1] in SAMPLED_FLAG_CHARS
        ):
            holds_sampled = True
    if at != record_end:
        raise _Declined
    if not holds_sampled:
        return record_end, None
    if not ascii_keys:
        raise _Declined  # the general path decodes the keys and says what is wrong
    assert first is not None  # the sampled header is a traceparent
    value_start, value_size = first
    traceparent = bytes(view[value_start : value_start + value_size]) if value_size >= 0 else None
    key = bytes(view[key_start : key_start + key_size]) if key_size >= 0 else None
    return record_end, (offset_delta, timestamp_delta, key, traceparent)


def _write_spans(
    sampled: list[tuple[int, int, int, int, bytes | None]],
    template: SpanTemplate,
    high: int,
    start_ns: int,
    end_ns: int,
    draw: Callable[[int], bytes],
    key_text: Callable[[bytes], str | None],
) -> bytes:
    if not sampled:
        return b""
    drawn = draw(8 * len(sampled))
    if type(drawn) is not bytes or len(drawn) != 8 * len(sampled):
        raise TypeError("draw must return as many bytes as asked")
    head = template.head + span_times(start_ns, max(end_ns, start_ns))
    fields = []
    for index, (trace_id, parent_id, offset, age, key) in enumerate(sampled):
        span_id = int.from_bytes(drawn[8 * index : 8 * index + 8], "big") or 1
        parts = [
            span_ids(trace_id, span_id),
            parent_span_id(parent_id),
            head,
            template.common,
            int_attribute(template.offset_key, offset),
            int_attribute(template.age_key, age),
        ]
        if offset <= high:
            parts.append(template.redelivered)
        text = _shown_key(key, key_text)
        if text is not None:
            parts.append(str_attribute(template.message_key_key, text))
        parts.append(template.tail)
        fields.append(span_field(b"".join(parts)))
    return b"".join(fields)


def _shown_key(key: bytes | None, key_text: Callable[[bytes], str | None]) -> bytes | None:
    """The key's bytes when it is shown as an attribute (`spans.printable_key`)."""
    if key is None or len(key) > KEY_LIMIT:
        return None
    if not _NOT_ASCII.search(key):
        return key if _PRINTABLE_ASCII.fullmatch(key) else None
    text = key_text(key)
    return None if text is None else text.encode("utf-8")


def _varint(view: memoryview, pos: int, limit: int, max_bytes: int) -> tuple[int, int]:
    """A zig-zag varint of at most `max_bytes` bytes ending before `limit`, within 64 bits."""
    raw = shift = 0
    stop = min(pos + max_bytes, limit)
    while pos < stop:
        byte = view[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            if raw > _M64:
                raise _Declined
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
    raise _Declined


def _step_over(pos: int, limit: int, size: int, smallest: int) -> int:
    """Past a key or value of `size` bytes (-1: null) at `pos`."""
    if size < smallest or size > limit - pos:
        raise _Declined
    return pos + max(size, 0)


def _int64(value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _Declined
    return value


#: The consumer's span path: the compiled twin when the extension is built.
receive_spans = native.twin("receive_spans", receive_spans_python)
