"""Produce requests and responses: the parts the proxy reads and the records it may replace."""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError
from .varint import read_uvarint, write_uvarint

_INT16 = struct.Struct(">h")
FLEXIBLE_FROM = 9


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


@dataclass(frozen=True, slots=True)
class PartitionRecords:
    topic_index: int
    partition_index: int
    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    records: bytes | None


def iter_request_partitions(payload: Any) -> Iterator[PartitionRecords]:
    """Every partition's records in a decoded Produce request."""
    for t_index, topic in enumerate(payload.topic_data or ()):
        name = getattr(topic, "name", None)
        topic_id = getattr(topic, "topic_id", None)
        for p_index, partition in enumerate(topic.partition_data or ()):
            yield PartitionRecords(
                t_index, p_index, name, topic_id, partition.index, partition.records
            )


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


#: Bytes of a partition's records searched for before the rest is compared.
_SEARCH_PREFIX = 64


def _length_prefix(api_version: int, size: int) -> bytes:
    if api_version >= FLEXIBLE_FROM:
        return write_uvarint(size + 1)
    return size.to_bytes(4, "big", signed=True)


def _find_copy(data: bytes, records: bytes, start: int) -> int:
    """Where `records` (a copy of a slice of `data`) starts, from `start` on; -1 if nowhere.

    Searching for a short prefix and comparing the rest is far cheaper than searching for a
    16 KiB needle, which makes `bytes.find` prepare a table of the whole needle first.
    """
    if not records:
        return -1
    head = records[:_SEARCH_PREFIX]
    at = data.find(head, start)
    while at >= 0:
        if data.startswith(records, at):
            return at
        at = data.find(head, at + 1)
    return -1


def splice_records(
    body: bytes | memoryview,
    header_size: int,
    api_version: int,
    payload: Any,
    replacements: Mapping[tuple[int, int], bytes],
) -> bytes | None:
    """The request body with some partitions' records replaced and every other byte as it was.

    Each partition's records appear in the frame in wire order, right after their length
    prefix, so they are found by searching forward from the previous one and checked against
    that prefix. Returns None if the layout is not what was expected (the caller re-encodes).
    """
    data = bytes(body)
    pieces: list[bytes] = []
    copied, search_from = 0, header_size
    for located in iter_request_partitions(payload):
        records = located.records
        if records is None:
            continue
        start = _find_copy(data, records, search_from)
        prefix = _length_prefix(api_version, len(records))
        if start < 0 or data[start - len(prefix) : start] != prefix:
            return None
        end = start + len(records)
        new = replacements.get((located.topic_index, located.partition_index))
        if new is not None:
            pieces += (
                data[copied : start - len(prefix)],
                _length_prefix(api_version, len(new)),
                new,
            )
            copied = end
        search_from = end
    pieces.append(data[copied:])
    return b"".join(pieces)


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
