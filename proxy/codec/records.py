"""Kafka record batches (magic 2): read them lazily, and splice extra headers into their records.

Sans-I/O: functions on bytes/memoryview only. This module owns the byte layout below; the
compression of the records section is delegated to ``proxy.codec.compression``.

A partition's ``records`` field is a sequence of batches, each prefixed by its offset and length:

    offset  field                  type     notes
    0       baseOffset             int64
    8       batchLength            int32    bytes after this field (= total size - 12)
    12      partitionLeaderEpoch   int32
    16      magic                  int8     2; 0 and 1 are legacy message sets (same first 17 bytes)
    17      crc                    uint32   CRC-32C of bytes 21..end
    21      attributes             int16    bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4,
                                            4 zstd), 0x08 LogAppendTime, 0x10 transactional,
                                            0x20 control, 0x40 delete horizon set
    23      lastOffsetDelta        int32
    27      baseTimestamp          int64    ms (or the delete horizon when 0x40 is set)
    35      maxTimestamp           int64    ms; the timestamp of every record under LogAppendTime
    43      producerId             int64
    51      producerEpoch          int16
    53      baseSequence           int32
    57      recordCount            int32
    61      records                         compressed as a whole when codec != 0

    record:
        length          varint    bytes after this field
        attributes      int8      unused
        timestampDelta  varlong   ms from baseTimestamp
        offsetDelta     varint    from baseOffset
        keyLength       varint    -1 for a null key
        key             bytes
        valueLength     varint    -1 for a null value
        value           bytes
        headerCount     varint
        headers         headerKeyLength varint, headerKey utf-8,
                        headerValueLength varint (-1 for null), headerValue bytes

Varints are zig-zag encoded (protobuf style): at most 5 bytes for a varint, 10 for a varlong.

Adding headers changes only each touched record's length varint, its headerCount varint and the
bytes appended after its existing headers, then the (recompressed) records section, batchLength
and crc. Everything else is copied byte for byte, so idempotent and transactional producers keep
their producer id, epoch, sequence and flags, and untouched records keep their exact bytes.

Errors: the peer's bytes can be anything, so malformed input raises ``RecordBatchError`` (or
``CompressionError`` for a bad compressed body), never IndexError/struct.error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

import crc32c

from proxy.codec import native
from proxy.codec.compression import (
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    Codec,
    CompressionError,
    compress,
    decompress,
)

__all__ = [
    "BatchView",
    "CompressionError",
    "RecordBatchError",
    "RecordView",
    "add_headers",
    "iter_batches",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
Header: TypeAlias = tuple[str, bytes | None]

LOG_OVERHEAD: Final = 12  # baseOffset + batchLength: the part batchLength does not count
MAGIC_OFFSET: Final = 16
CRC_OFFSET: Final = 17
ATTRIBUTES_OFFSET: Final = 21  # the CRC covers everything from here on
RECORDS_OFFSET: Final = 61
# Java's ByteBufferLogInputStream treats anything shorter than a v0 message as corrupt.
MIN_LEGACY_MESSAGE_SIZE: Final = 14
#: The smallest record: length, attributes, timestamp delta, offset delta, key length, value
#: length and header count, one byte each.
MIN_RECORD_SIZE: Final = 7

CODEC_MASK: Final = 0x07
TIMESTAMP_TYPE_FLAG: Final = 0x08
TRANSACTIONAL_FLAG: Final = 0x10
CONTROL_FLAG: Final = 0x20
DELETE_HORIZON_FLAG: Final = 0x40

TIMESTAMP_TYPE_CREATE_TIME: Final = 0
TIMESTAMP_TYPE_LOG_APPEND_TIME: Final = 1

#: A v2 batch's header, from its base offset to its record count (`BatchView` names the fields).
BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
_OFFSET_AND_LENGTH = struct.Struct(">qi")
_LENGTH = struct.Struct(">i")
_CRC = struct.Struct(">I")
assert BATCH_HEADER.size == RECORDS_OFFSET

MAX_VARINT_BYTES: Final = 5
MAX_VARLONG_BYTES: Final = 10


class RecordBatchError(ValueError):
    """The bytes are not a well-formed record batch (corrupt, truncated or lying lengths)."""


def read_varint(buf: Buffer, pos: int, limit: int, max_bytes: int) -> tuple[int, int]:
    """Decode one zig-zag varint at ``pos`` that must end before ``limit``: (value, next pos)."""
    raw = 0
    shift = 0
    start = pos
    end = pos + max_bytes
    if end > limit:
        end = limit
    while pos < end:
        byte = buf[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
    if end - start < max_bytes:
        raise RecordBatchError("truncated varint")
    raise RecordBatchError(f"varint longer than {max_bytes} bytes")


def _encode_varint(value: int) -> bytes:
    """Zig-zag varint encoding of a value that fits in 64 bits."""
    if 0 <= value < len(_SMALL_VARINTS):
        return _SMALL_VARINTS[value]
    return _encode_varint_uncached(value)


def _encode_varint_uncached(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


# Record lengths and header counts are small non-negative numbers: encode each once.
_SMALL_VARINTS: Final = tuple(_encode_varint_uncached(value) for value in range(4096))


class RecordView:
    """One record of a batch, read in place. Key and value are copied only when asked for."""

    __slots__ = (
        "_buf",
        "_end",
        "_header_count",
        "_header_count_start",
        "_headers_start",
        "_key_length",
        "_key_start",
        "_length_start",
        "_start",
        "_value_length",
        "_value_start",
        "headers",
        "offset",
        "timestamp",
    )

    offset: int
    """baseOffset + offsetDelta."""
    timestamp: int
    """Milliseconds: baseTimestamp + timestampDelta, or maxTimestamp under LogAppendTime."""
    headers: tuple[Header, ...]

    @property
    def key(self) -> bytes | None:
        if self._key_length < 0:
            return None
        return bytes(self._buf[self._key_start : self._key_start + self._key_length])

    @property
    def value(self) -> bytes | None:
        if self._value_length < 0:
            return None
        return bytes(self._buf[self._value_start : self._value_start + self._value_length])

    def __repr__(self) -> str:
        return (
            f"RecordView(offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
            f"value={self.value!r}, headers={self.headers!r})"
        )


#: A record's fields as `RecordView` holds them: length start, start, end, offset, timestamp,
#: key start and length, value start and length, header count start, headers start, header
#: count, headers.
RecordFields: TypeAlias = tuple[
    int, int, int, int, int, int, int, int, int, int, int, int, tuple[Header, ...]
]


def _read_record(
    buf: memoryview,
    pos: int,
    limit: int,
    base_offset: int,
    base_timestamp: int,
    log_append_time: int | None,
) -> RecordView:
    """Parse the record starting at ``pos``; every length is checked against the record's own."""
    fields = _record_fields(buf, pos, limit, base_offset, base_timestamp, log_append_time)
    if fields is None:  # a value beyond 64 bits, which only the Python twin holds
        fields = record_fields_python(buf, pos, limit, base_offset, base_timestamp, log_append_time)
    record = RecordView()
    record._buf = buf
    (
        record._length_start,
        record._start,
        record._end,
        record.offset,
        record.timestamp,
        record._key_start,
        record._key_length,
        record._value_start,
        record._value_length,
        record._header_count_start,
        record._headers_start,
        record._header_count,
        record.headers,
    ) = fields
    return record


def record_fields_python(
    buf: Buffer,
    pos: int,
    limit: int,
    base_offset: int,
    base_timestamp: int,
    log_append_time: int | None,
) -> RecordFields:
    """The fields of the record starting at ``pos`` (see `RecordFields`). `_speedups.c` has the
    compiled twin, which answers None for a value that does not fit in 64 bits.

    One-byte varints (most of them) are decoded inline: the function call per varint was half
    of the parse time.
    """
    length_start = pos
    length, pos = read_varint(buf, pos, limit, MAX_VARINT_BYTES)
    end = pos + length
    if length <= 0 or end > limit:
        raise RecordBatchError(f"record length {length} does not fit the batch")
    start = pos
    pos += 1  # attributes: unused by any Kafka version

    if pos < end and (byte := buf[pos]) < 0x80:
        timestamp_delta = (byte >> 1) ^ -(byte & 1)
        pos += 1
    else:
        timestamp_delta, pos = read_varint(buf, pos, end, MAX_VARLONG_BYTES)
    if pos < end and (byte := buf[pos]) < 0x80:
        offset_delta = (byte >> 1) ^ -(byte & 1)
        pos += 1
    else:
        offset_delta, pos = read_varint(buf, pos, end, MAX_VARINT_BYTES)
    offset = base_offset + offset_delta
    timestamp = base_timestamp + timestamp_delta if log_append_time is None else log_append_time

    if pos < end and (byte := buf[pos]) < 0x80:
        key_length = (byte >> 1) ^ -(byte & 1)
        pos += 1
    else:
        key_length, pos = read_varint(buf, pos, end, MAX_VARINT_BYTES)
    key_start = pos
    if key_length > 0:
        pos += key_length
        if pos > end:
            raise RecordBatchError("record key runs past the record")
    value_length, pos = read_varint(buf, pos, end, MAX_VARINT_BYTES)
    value_start = pos
    if value_length > 0:
        pos += value_length
        if pos > end:
            raise RecordBatchError("record value runs past the record")

    header_count_start = pos
    if pos < end and (byte := buf[pos]) < 0x80:
        header_count = (byte >> 1) ^ -(byte & 1)
        pos += 1
    else:
        header_count, pos = read_varint(buf, pos, end, MAX_VARINT_BYTES)
    if header_count == 0:
        if pos != end:
            raise RecordBatchError(f"record has {end - pos} bytes after its headers")
        headers: tuple[Header, ...] = ()
    else:
        headers = _read_headers(buf, pos, end, header_count)
    return (
        length_start,
        start,
        end,
        offset,
        timestamp,
        key_start,
        key_length,
        value_start,
        value_length,
        header_count_start,
        pos,
        header_count,
        headers,
    )


def _read_headers(buf: memoryview, pos: int, end: int, header_count: int) -> tuple[Header, ...]:
    """Decode a record's headers, which must end exactly where the record does."""
    # Each header takes at least two bytes: a cheap bound before trusting the count.
    if header_count < 0 or header_count * 2 > end - pos:
        raise RecordBatchError(f"impossible header count {header_count}")
    headers: list[Header] = []
    for _ in range(header_count):
        name_length, pos = read_varint(buf, pos, end, MAX_VARINT_BYTES)
        if name_length < 0 or pos + name_length > end:
            raise RecordBatchError(f"bad header key length {name_length}")
        try:
            name = str(buf[pos : pos + name_length], "utf-8")
        except UnicodeDecodeError as exc:
            raise RecordBatchError("header key is not utf-8") from exc
        pos += name_length
        value_length, pos = read_varint(buf, pos, end, MAX_VARINT_BYTES)
        if value_length < 0:
            headers.append((name, None))
            continue
        if pos + value_length > end:
            raise RecordBatchError(f"bad header value length {value_length}")
        headers.append((name, bytes(buf[pos : pos + value_length])))
        pos += value_length
    if pos != end:
        raise RecordBatchError(f"record has {end - pos} bytes after its headers")
    return tuple(headers)


#: The compiled twin when built (`_speedups.c`): about three times faster.
_record_fields = native.twin("read_record", record_fields_python, error=RecordBatchError)


def record_starts_holding(
    data: Buffer, start: int, end: int, record_count: int, positions: Sequence[int]
) -> list[int]:
    """Where the records of a batch body ``data[start:end]`` that hold one of ``positions``
    (ascending offsets into ``data``) begin, as offsets from ``start``.

    Records are stepped over by their length prefix, unparsed, and only as far as the last
    position: a record that is never reached is never checked.
    """
    if record_count < 0:
        raise RecordBatchError(f"negative record count {record_count}")
    starts: list[int] = []
    pos = start
    index = 0
    wanted = len(positions)
    for _ in range(record_count):
        if index == wanted:
            break
        if pos >= end:
            raise RecordBatchError(f"batch holds fewer than {record_count} records")
        length, record_start = read_varint(data, pos, end, MAX_VARINT_BYTES)
        record_end = record_start + length
        if length <= 0 or record_end > end:
            raise RecordBatchError(f"record length {length} does not fit the batch")
        if positions[index] < record_end:
            starts.append(pos - start)
            while index < wanted and positions[index] < record_end:
                index += 1
        pos = record_end
    return starts


class BatchView:
    """One record batch (or legacy message) read in place; records are decoded on demand."""

    __slots__ = (
        "_decompressed",
        "_max_decompressed_size",
        "attributes",
        "base_offset",
        "base_sequence",
        "base_timestamp",
        "batch_length",
        "crc",
        "last_offset_delta",
        "magic",
        "max_timestamp",
        "partition_leader_epoch",
        "producer_epoch",
        "producer_id",
        "raw",
        "record_count",
    )

    def __init__(
        self, batch: Buffer, *, max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE
    ) -> None:
        """Parse the fixed header of exactly one batch (``batch`` must hold nothing else)."""
        self.raw = batch if isinstance(batch, memoryview) else memoryview(batch)
        self._max_decompressed_size = max_decompressed_size
        self._decompressed: memoryview | None = None
        if len(self.raw) < LOG_OVERHEAD + MIN_LEGACY_MESSAGE_SIZE:
            raise RecordBatchError(f"{len(self.raw)} bytes is too short for a batch")
        self.base_offset, self.batch_length = _OFFSET_AND_LENGTH.unpack_from(self.raw, 0)
        if self.batch_length + LOG_OVERHEAD != len(self.raw):
            raise RecordBatchError(
                f"batchLength {self.batch_length} does not match {len(self.raw)} bytes"
            )
        self.magic = self.raw[MAGIC_OFFSET]
        if self.magic < 2:
            # Legacy message set entry: offset, size, crc(4), magic, attributes(1), ...
            self.partition_leader_epoch = -1
            self.crc = _CRC.unpack_from(self.raw, LOG_OVERHEAD)[0]
            self.attributes = self.raw[MAGIC_OFFSET + 1]
            self.last_offset_delta = 0
            self.base_timestamp = self.max_timestamp = -1
            self.producer_id, self.producer_epoch, self.base_sequence = -1, -1, -1
            self.record_count = 0
            return
        if self.magic != 2:
            raise RecordBatchError(f"unknown magic {self.magic}")
        if len(self.raw) < RECORDS_OFFSET:
            raise RecordBatchError(f"{len(self.raw)} bytes is too short for a v2 batch")
        (
            _,
            _,
            self.partition_leader_epoch,
            _,
            self.crc,
            self.attributes,
            self.last_offset_delta,
            self.base_timestamp,
            self.max_timestamp,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            self.record_count,
        ) = BATCH_HEADER.unpack_from(self.raw, 0)

    @property
    def is_legacy(self) -> bool:
        """Magic 0/1 message set: no headers, nothing to extract or inject."""
        return self.magic < 2

    @property
    def compression(self) -> int:
        return self.attributes & CODEC_MASK

    @property
    def timestamp_type(self) -> int:
        """0 CreateTime, 1 LogAppendTime."""
        return 1 if self.attributes & TIMESTAMP_TYPE_FLAG else 0

    @property
    def is_transactional(self) -> bool:
        return not self.is_legacy and bool(self.attributes & TRANSACTIONAL_FLAG)

    @property
    def is_control(self) -> bool:
        """Commit/abort markers: never carry user records."""
        return not self.is_legacy and bool(self.attributes & CONTROL_FLAG)

    def record_count_is_possible(self) -> bool:
        """Whether the (decompressed) records could hold as many records as the header claims.
        Work done per claimed record before the records are read (drawing a context for each)
        must not be driven by a count a peer made up."""
        if self.is_legacy:
            return True
        return 0 <= self.record_count <= len(self._body()) // MIN_RECORD_SIZE

    def crc_is_valid(self) -> bool:
        """True when the stored CRC-32C matches (legacy messages use CRC-32: not checked here)."""
        if self.is_legacy:
            return True
        return crc32c.crc32c(self.raw[ATTRIBUTES_OFFSET:]) == self.crc

    def body(self) -> memoryview:
        """The records section, decompressed (a view of the batch itself when uncompressed)."""
        if self.is_legacy:
            return memoryview(b"")
        return self._body()

    def records(self, body: memoryview | None = None) -> Iterator[RecordView]:
        """Decode the records, decompressing the body now (not when the batch was found)."""
        if self.is_legacy:
            return iter(())
        return self._records(self._body() if body is None else body)

    def _body(self) -> memoryview:
        payload = self.raw[RECORDS_OFFSET:]
        if self.compression == Codec.NONE:
            return payload
        if self._decompressed is None:  # kept: a batch is often read twice (try, fall back)
            self._decompressed = memoryview(
                decompress(self.compression, payload, max_size=self._max_decompressed_size)
            )
        return self._decompressed

    def _records(self, body: memoryview) -> Iterator[RecordView]:
        if self.record_count < 0:
            raise RecordBatchError(f"negative record count {self.record_count}")
        log_append_time = self.max_timestamp if self.timestamp_type else None
        pos = 0
        limit = len(body)
        for _ in range(self.record_count):
            if pos >= limit:
                raise RecordBatchError(f"batch holds fewer than {self.record_count} records")
            record = _read_record(
                body, pos, limit, self.base_offset, self.base_timestamp, log_append_time
            )
            pos = record._end
            yield record
        if pos != limit:
            raise RecordBatchError(f"{limit - pos} bytes left after {self.record_count} records")

    def records_at(self, body: memoryview, starts: Sequence[int]) -> list[RecordView]:
        """Parse the records that begin at ``starts`` (offsets into ``body``, as the fetch skim
        finds them)."""
        log_append_time = self.max_timestamp if self.timestamp_type else None
        limit = len(body)
        base_offset, base_timestamp = self.base_offset, self.base_timestamp
        return [
            _read_record(body, start, limit, base_offset, base_timestamp, log_append_time)
            for start in starts
        ]

    def __repr__(self) -> str:
        return (
            f"BatchView(base_offset={self.base_offset}, magic={self.magic}, "
            f"attributes={self.attributes:#x}, record_count={self.record_count}, "
            f"size={len(self.raw)})"
        )


class BatchHeader(NamedTuple):
    """Where one batch lies in a partition's records, and the header fields a reader picks
    batches by: read without building a `BatchView`, for walks that pass most batches by."""

    start: int
    end: int
    base_offset: int
    magic: int
    attributes: int
    last_offset_delta: int
    producer_id: int
    record_count: int


def iter_batch_headers(records: Buffer) -> Iterator[BatchHeader]:
    """The header of each complete batch of a partition's ``records`` field.

    A truncated final batch is normal (a fetch response is cut at a byte limit) and is skipped;
    a length that cannot be right, an unknown magic or a v2 batch shorter than its header raise
    RecordBatchError.
    """
    pos = 0
    total = len(records)
    while total - pos >= LOG_OVERHEAD:
        base_offset, batch_length = _OFFSET_AND_LENGTH.unpack_from(records, pos)
        if batch_length < MIN_LEGACY_MESSAGE_SIZE:
            raise RecordBatchError(f"batch length {batch_length} at byte {pos} is impossible")
        end = pos + LOG_OVERHEAD + batch_length
        if end > total:
            return
        magic = records[pos + MAGIC_OFFSET]
        if magic < 2:
            attributes = records[pos + MAGIC_OFFSET + 1]
            yield BatchHeader(pos, end, base_offset, magic, attributes, 0, -1, 0)
        elif magic != 2:
            raise RecordBatchError(f"unknown magic {magic}")
        elif end - pos < RECORDS_OFFSET:
            raise RecordBatchError(f"{end - pos} bytes is too short for a v2 batch")
        else:
            fields = BATCH_HEADER.unpack_from(records, pos)
            yield BatchHeader(
                pos, end, base_offset, magic, fields[5], fields[6], fields[9], fields[12]
            )
        pos = end


def iter_batches(
    records: Buffer, *, max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE
) -> Iterator[BatchView]:
    """Yield each complete batch of a partition's ``records`` field (see `iter_batch_headers`
    for what is skipped and what raises)."""
    view = memoryview(records) if not isinstance(records, memoryview) else records
    for header in iter_batch_headers(view):
        yield BatchView(
            view[header.start : header.end], max_decompressed_size=max_decompressed_size
        )


@dataclass(frozen=True, slots=True)
class EncodedHeaders:
    """Headers already in wire form: callers that add the same kind of header to every record
    (a traceparent) build these directly and skip per-header encoding."""

    count: int
    data: bytes


HeadersForRecord: TypeAlias = Callable[
    [RecordView], Sequence[tuple[str, bytes | None]] | EncodedHeaders
]


def encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> EncodedHeaders:
    return EncodedHeaders(len(headers), _encode_headers(headers))


def _encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        encoded_name = name.encode()
        parts.append(_encode_varint(len(encoded_name)))
        parts.append(encoded_name)
        if value is None:
            parts.append(_encode_varint(-1))
        else:
            parts.append(_encode_varint(len(value)))
            parts.append(value)
    return b"".join(parts)


def add_headers(
    batch: Buffer | BatchView,
    headers_for_record: HeadersForRecord,
    *,
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
) -> bytes | None:
    """Return ``batch`` re-encoded with extra headers appended to records, or None if unchanged.

    ``headers_for_record`` sees every record and returns the headers to append to it (empty for
    none). None means "forward the original bytes": nothing was added, or the batch is a control
    or legacy batch, which must never be altered. A batch whose CRC is already wrong raises
    RecordBatchError rather than being re-signed: the broker must still see the corruption.
    """
    view = (
        batch
        if isinstance(batch, BatchView)
        else BatchView(batch, max_decompressed_size=max_decompressed_size)
    )
    body = _alterable_body(view)
    if body is None:
        return None
    pieces: list[Buffer] = []
    copied_up_to = 0
    # Callbacks often return the same header list for a whole batch: encode it once.
    last_extra: object = None
    added = b""
    added_count = 0
    for record in view._records(body):
        extra = headers_for_record(record)
        if type(extra) is EncodedHeaders:
            if not extra.count:
                continue
            added, added_count = extra.data, extra.count
            last_extra = None
        elif not extra:
            continue
        elif extra is not last_extra:
            added, added_count = _encode_headers(extra), len(extra)
            last_extra = extra
        header_count = _encode_varint(record._header_count + added_count)
        kept_before_count = body[record._start : record._header_count_start]
        kept_headers = body[record._headers_start : record._end]
        new_length = len(kept_before_count) + len(header_count) + len(kept_headers) + len(added)
        pieces += (
            body[copied_up_to : record._length_start],
            _encode_varint(new_length),
            kept_before_count,
            header_count,
            kept_headers,
            added,
        )
        copied_up_to = record._end
    if not pieces:
        return None
    pieces.append(body[copied_up_to:])
    return _resigned(view, b"".join(pieces))


def append_header_to_each(
    view: BatchView, encoded: Sequence[bytes], wanted: Sequence[int] = ()
) -> tuple[bytes, list[RecordView]] | None:
    """The batch re-signed with ``encoded[i]`` (one header in wire form) added to record i,
    and the records at the ``wanted`` indices (ascending) parsed from the original.

    The fast path for giving every record one new header (a traceparent): records are stepped
    through by their varints, no record objects are built. It applies only to records without
    headers; None means it does not apply (a record has headers, a control or legacy batch, a
    count that differs from the batch's) and the caller takes `add_headers` instead.
    """
    if len(encoded) != view.record_count:
        return None
    body = _alterable_body(view)
    if body is None:
        return None
    starts: list[int] = []
    new_body = splice_one_header_each(body, encoded, wanted, starts)
    if new_body is None:
        return None
    limit = len(body)
    log_append_time = view.max_timestamp if view.timestamp_type else None
    records = [
        _read_record(body, at, limit, view.base_offset, view.base_timestamp, log_append_time)
        for at in starts
    ]
    return _resigned(view, new_body), records


def first_record_has_headers(body: Buffer) -> bool:
    """Whether the first record of a records section plainly has headers (or bytes after its
    fields), read without raising: only then is the answer True. A producer that sets headers
    sets them on every record, so the fast paths decline its batches here, before drawing any
    context; anything odd about the record is left to the splice, which judges it."""
    limit = len(body)
    try:
        length, start = read_varint(body, 0, limit, MAX_VARINT_BYTES)
        end = start + length
        if length <= 0 or end > limit:
            return False
        field = start + 1  # attributes
        for _ in range(2):  # timestamp delta, offset delta
            field = read_varint(body, field, end, MAX_VARINT_BYTES)[1]
        for _ in range(2):  # key, then value: length and bytes
            size, field = read_varint(body, field, end, MAX_VARINT_BYTES)
            field += max(size, 0)
    except RecordBatchError:
        return False
    return field < end and (field != end - 1 or body[field] != 0)


def splice_one_header_each_python(
    body: memoryview, encoded: Sequence[bytes], wanted: Sequence[int], starts: list[int]
) -> bytes | None:
    """The records of ``body`` with ``encoded[i]`` added to record i as its only header; the
    positions of the records at the ``wanted`` indices (ascending) are appended to ``starts``
    (an empty list). None when a record already has headers (or trailing bytes).
    `_speedups.c` has the compiled twin."""
    limit = len(body)
    pieces: list[Buffer] = []
    append = pieces.append
    wanted_seen = 0
    next_wanted = wanted[0] if wanted else -1
    pos = 0
    try:
        for index, added in enumerate(encoded):
            if index == next_wanted:
                starts.append(pos)
                wanted_seen += 1
                next_wanted = wanted[wanted_seen] if wanted_seen < len(wanted) else -1
            # Varints of one or two bytes (nearly all lengths) are decoded inline: this loop
            # runs once per produced record.
            raw = body[pos]
            if raw < 0x80:
                start = pos + 1
            elif body[pos + 1] < 0x80:
                raw = (raw & 0x7F) | (body[pos + 1] << 7)
                start = pos + 2
            else:
                raw, start = read_varint(body, pos, limit, MAX_VARINT_BYTES)
                raw = (raw << 1) ^ (raw >> 63)  # back to zig-zag form, decoded below
            length = (raw >> 1) ^ -(raw & 1)
            end = start + length
            if length <= 0 or end > limit:
                raise RecordBatchError(f"record length {length} does not fit the batch")
            field = start + 1  # attributes
            while body[field] & 0x80:  # timestamp delta
                field += 1
            field += 1
            while body[field] & 0x80:  # offset delta
                field += 1
            field += 1
            raw = body[field]  # key length: usually -1 (null) or short
            if raw < 0x80:
                field += 1
            else:
                raw, field = read_varint(body, field, end, MAX_VARINT_BYTES)
                raw = (raw << 1) ^ (raw >> 63)
            if raw & 1 == 0:  # zig-zag: even is a length >= 0
                field += raw >> 1
            raw = body[field]  # value length
            if raw < 0x80:
                field += 1
            elif body[field + 1] < 0x80:
                raw = (raw & 0x7F) | (body[field + 1] << 7)
                field += 2
            else:
                raw, field = read_varint(body, field, end, MAX_VARINT_BYTES)
                raw = (raw << 1) ^ (raw >> 63)
            if raw & 1 == 0:
                field += raw >> 1
            if field != end - 1 or body[field] != 0:
                if field >= end:
                    raise RecordBatchError("record fields run past the record")
                return None  # the record has headers (or trailing bytes): the general path
            append(_encode_varint(length + len(added)))
            append(body[start:field])
            append(b"\x02")  # header count 1, zig-zag
            append(added)
            pos = end
    except IndexError:
        raise RecordBatchError("record fields run past the batch") from None
    if pos != limit:
        raise RecordBatchError(f"{limit - pos} bytes left after {len(encoded)} records")
    return b"".join(pieces)


splice_one_header_each = native.twin(
    "splice_one_header_each", splice_one_header_each_python, error=RecordBatchError
)


def _alterable_body(view: BatchView) -> memoryview | None:
    """The (decompressed) records of a batch headers may be added to; None for control and
    legacy batches, which must never be altered. A batch whose CRC is already wrong raises
    rather than being re-signed: the broker must still see the corruption."""
    if view.is_legacy or view.is_control:
        return None
    if not view.crc_is_valid():
        raise RecordBatchError("batch CRC does not match its contents")
    return view._body()


def _resigned(view: BatchView, new_body: bytes) -> bytes:
    """The batch with a new records section: compressed like the original, length and CRC
    recomputed; everything else in the header is kept."""
    codec = view.compression
    payload = (
        new_body
        if codec == Codec.NONE
        else compress(codec, new_body, like=view.raw[RECORDS_OFFSET:])
    )
    header = bytearray(view.raw[:RECORDS_OFFSET])
    _LENGTH.pack_into(header, 8, RECORDS_OFFSET - LOG_OVERHEAD + len(payload))
    crc = crc32c.crc32c(payload, crc32c.crc32c(header[ATTRIBUTES_OFFSET:]))
    _CRC.pack_into(header, CRC_OFFSET, crc)
    return b"".join((header, payload))
