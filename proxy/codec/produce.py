"""Produce requests and responses: the parts the proxy reads and the records it may replace."""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

from .apis import ApiKey, request_schema, response_schema
from .errors import ProtocolError
from .guard import (
    Captures,
    Program,
    captured_text,
    captured_uuid,
    program,
    walk,
    walk_response,
)
from .varint import read_uvarint, write_uvarint

_INT16 = struct.Struct(">h")
FLEXIBLE_FROM = 9
#: Produce requests name topics by id from this version on (KIP-516).
TOPIC_IDS_FROM = 13


def produce_acks(body: bytes | memoryview, header_size: int, api_version: int) -> int:
    """The acks of a Produce request, read without decoding its records.

    Every request must be tracked until its response, except acks=0 produces which get none;
    this reads just the transactional id and acks that precede the topic data.
    """
    offset = header_size
    try:
        if api_version >= FLEXIBLE_FROM:
            length, offset = read_uvarint(body, offset)
            offset += max(length - 1, 0)
        else:
            (length,) = _INT16.unpack_from(body, offset)
            offset += 2 + max(length, 0)
        (acks,) = _INT16.unpack_from(body, offset)
    except struct.error as exc:
        raise ProtocolError("Produce request ends before its acks") from exc
    return acks


def plain_header_size(body: bytes | memoryview, api_version: int) -> int | None:
    """The size of a Produce request's header when it is plain: a client id of ASCII (or null)
    and, in flexible versions, no tagged fields. None for any other header, which only the full
    parse (with its own error messages) may judge."""
    if len(body) < 10:
        return None
    length = _INT16.unpack_from(body, 8)[0]
    offset = 10
    if length >= 0:
        if length > len(body) - offset or not bytes(body[offset : offset + length]).isascii():
            return None
        offset += length
    elif length != -1:
        return None
    if api_version >= FLEXIBLE_FROM:
        if offset >= len(body) or body[offset] != 0:
            return None
        offset += 1
    return offset


class PartitionRecords(NamedTuple):
    """One partition of a Produce request (a named tuple: made for every partition of every
    traced request)."""

    topic_index: int
    partition_index: int
    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    records: bytes | memoryview | None


def iter_request_partitions(payload: Any) -> Iterator[PartitionRecords]:
    """Every partition's records in a decoded Produce request."""
    for t_index, topic in enumerate(payload.topic_data or ()):
        name = getattr(topic, "name", None)
        topic_id = getattr(topic, "topic_id", None)
        for p_index, partition in enumerate(topic.partition_data or ()):
            yield PartitionRecords(
                t_index, p_index, name, topic_id, partition.index, partition.records
            )


class RequestLayout(NamedTuple):
    """Where a Produce request's partitions and their records lie, found without decoding it."""

    transactional_id: str | None
    partitions: list[PartitionRecords]
    #: (start, end) of each partition's records field, length prefix included, in the frame body.
    fields: list[tuple[int, int]]


#: The capture ids of the layout program (the request lane, `tracing.roots`, reads them too).
CAPTURED_TRANSACTIONAL_ID, CAPTURED_TOPIC, CAPTURED_PARTITION, CAPTURED_RECORDS = range(4)
_CAPTURED = {
    "transactional_id": CAPTURED_TRANSACTIONAL_ID,
    "topic_data.name": CAPTURED_TOPIC,
    "topic_data.topic_id": CAPTURED_TOPIC,
    "topic_data.partition_data.index": CAPTURED_PARTITION,
    "topic_data.partition_data.records": CAPTURED_RECORDS,
}


@cache
def _layout_program(api_version: int) -> Program:
    return program(request_schema(ApiKey.PRODUCE, api_version), _CAPTURED)


def layout_programs(versions: tuple[int, int]) -> dict[int, Program]:
    """The layout walk's program of each Produce version in the range (for the request lane,
    which walks requests in compiled code)."""
    return {version: _layout_program(version) for version in range(versions[0], versions[1] + 1)}


def locate_request_partitions(
    body: bytes | memoryview, header_size: int, api_version: int
) -> RequestLayout | None:
    """The layout of a Produce request, from the guard's walk along kio's schema (which also
    checks its array counts). Records come out as views of `body`, not copies. None when the
    walk cannot finish, leaves bytes over or finds a string kio would refuse: only kio's decode
    can judge such a request, and it refuses every one the walk was found to stop at."""
    view = memoryview(body)
    captures: Captures = []
    walked = walk(_layout_program(api_version), view, header_size, captures)
    if walked is None or walked[0] != len(view):
        return None
    transactional_id: str | None = None
    partitions: list[PartitionRecords] = []
    fields: list[tuple[int, int]] = []
    topic: str | None = None
    topic_id: uuid.UUID | None = None
    t_index = p_index = -1
    partition = 0
    try:
        for kind, start, value, end in captures:
            if kind == CAPTURED_RECORDS:
                records = view[value:end] if value >= 0 else None
                partitions.append(
                    PartitionRecords(t_index, p_index, topic, topic_id, partition, records)
                )
                fields.append((start, end))
            elif kind == CAPTURED_PARTITION:
                p_index += 1
                partition = int.from_bytes(view[start:end], "big", signed=True)
            elif kind == CAPTURED_TOPIC:
                t_index, p_index = t_index + 1, -1
                if api_version >= TOPIC_IDS_FROM:
                    topic, topic_id = None, captured_uuid(bytes(view[start:end]))
                elif value < 0:
                    return None  # a null topic name
                else:
                    topic, topic_id = captured_text(view, value, end), None
            else:
                transactional_id = captured_text(view, value, end)
    except UnicodeDecodeError:
        return None
    return RequestLayout(transactional_id, partitions, fields)


def splice_located(
    body: bytes | memoryview,
    layout: RequestLayout,
    api_version: int,
    replacements: Mapping[tuple[int, int], bytes],
) -> bytes:
    """The whole frame (size prefix included) of the request with some partitions' records
    replaced, every other byte as it was; one copy."""
    view = memoryview(body)
    pieces: list[bytes | memoryview] = [b""]
    copied = 0
    for located, (start, end) in zip(layout.partitions, layout.fields, strict=True):
        new = replacements.get((located.topic_index, located.partition_index))
        if new is None:
            continue
        pieces += (view[copied:start], _length_prefix(api_version, len(new)), new)
        copied = end
    pieces.append(view[copied:])
    pieces[0] = sum(map(len, pieces)).to_bytes(4, "big")
    return b"".join(pieces)


def replace_records(payload: Any, replacements: Mapping[tuple[int, int], bytes]) -> Any:
    """A copy of the Produce request with some partitions' records replaced."""
    topics = list(payload.topic_data)
    for t_index, topic in enumerate(topics):
        partitions = list(topic.partition_data)
        touched = False
        for p_index, partition in enumerate(partitions):
            new = replacements.get((t_index, p_index))
            if new is not None:
                partitions[p_index] = dataclasses.replace(
                    partition, records=type(partition.records)(new)
                )
                touched = True
        if touched:
            topics[t_index] = dataclasses.replace(topic, partition_data=tuple(partitions))
    return dataclasses.replace(payload, topic_data=tuple(topics))


def _length_prefix(api_version: int, size: int) -> bytes:
    if api_version >= FLEXIBLE_FROM:
        return write_uvarint(size + 1)
    return size.to_bytes(4, "big", signed=True)


@dataclass(frozen=True, slots=True)
class PartitionOutcome:
    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    error_code: int
    base_offset: int
    error_message: str | None


def iter_response_partitions(payload: Any) -> Iterator[PartitionOutcome]:
    """Every partition's outcome in a decoded Produce response."""
    for topic in payload.responses or ():
        name = getattr(topic, "name", None)
        topic_id = getattr(topic, "topic_id", None)
        for partition in topic.partition_responses or ():
            yield PartitionOutcome(
                name,
                topic_id,
                partition.index,
                int(partition.error_code),
                partition.base_offset,
                getattr(partition, "error_message", None),
            )


#: The capture ids of the response layout program.
_OUTCOME_TOPIC, _OUTCOME_PARTITION, _OUTCOME_ERROR = 0, 1, 2
_OUTCOME_BASE_OFFSET, _OUTCOME_MESSAGE = 3, 4
_OUTCOME_CAPTURED = {
    "responses.name": _OUTCOME_TOPIC,
    "responses.topic_id": _OUTCOME_TOPIC,
    "responses.partition_responses.index": _OUTCOME_PARTITION,
    "responses.partition_responses.error_code": _OUTCOME_ERROR,
    "responses.partition_responses.base_offset": _OUTCOME_BASE_OFFSET,
    "responses.partition_responses.error_message": _OUTCOME_MESSAGE,
}


@cache
def _outcome_program(api_version: int) -> Program:
    return program(response_schema(ApiKey.PRODUCE, api_version), _OUTCOME_CAPTURED)


def locate_response_partitions(
    body: bytes | memoryview, api_version: int
) -> list[PartitionOutcome] | None:
    """Every partition's outcome in a Produce response, as `iter_response_partitions` gives
    them from kio's decode, read by the guard's walk instead (a sampled request's answer is
    read after it was sent: the decode was most of that). Error codes kio does not know are
    given as they are. None when the walk cannot finish, leaves bytes over or finds text that
    is not UTF-8: kio's decode then says what is wrong."""
    view = memoryview(body)
    captures = walk_response(_outcome_program(api_version), view, ApiKey.PRODUCE, api_version)
    if captures is None:
        return None
    outcomes: list[PartitionOutcome] = []
    topic: str | None = None
    topic_id: uuid.UUID | None = None
    fields: list[Any] = []
    try:
        for kind, start, value, end in captures:
            if kind == _OUTCOME_PARTITION:
                if fields:
                    outcomes.append(_outcome(topic, topic_id, fields))
                fields = [int.from_bytes(view[start:end], "big", signed=True), 0, -1, None]
            elif kind == _OUTCOME_ERROR:
                fields[1] = int.from_bytes(view[start:end], "big", signed=True)
            elif kind == _OUTCOME_BASE_OFFSET:
                fields[2] = int.from_bytes(view[start:end], "big", signed=True)
            elif kind == _OUTCOME_MESSAGE:
                fields[3] = None if value < 0 else captured_text(view, value, end)
            else:
                if fields:
                    outcomes.append(_outcome(topic, topic_id, fields))
                    fields = []
                if api_version >= TOPIC_IDS_FROM:
                    topic, topic_id = None, captured_uuid(bytes(view[start:end]))
                elif value < 0:
                    return None  # a null topic name: kio's decode reports it
                else:
                    topic, topic_id = captured_text(view, value, end), None
    except UnicodeDecodeError:
        return None
    if fields:
        outcomes.append(_outcome(topic, topic_id, fields))
    return outcomes


def _outcome(topic: str | None, topic_id: uuid.UUID | None, fields: list[Any]) -> PartitionOutcome:
    partition, error_code, base_offset, error_message = fields
    return PartitionOutcome(topic, topic_id, partition, error_code, base_offset, error_message)
