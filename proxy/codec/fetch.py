"""Fetch responses: each partition's records and aborted transactions, read-only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from .apis import ApiKey, response_schema
from .guard import Program, captured_text, captured_uuid, program, walk_response


@dataclass(frozen=True, slots=True)
class FetchedRecords:
    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    error_code: int
    high_watermark: int
    records: bytes | memoryview
    aborted_transactions: tuple[tuple[int, int], ...]


def iter_fetched_partitions(payload: Any) -> Iterator[FetchedRecords]:
    """Partitions of a decoded Fetch response that returned records."""
    for topic in payload.responses or ():
        name = getattr(topic, "topic", None)
        topic_id = getattr(topic, "topic_id", None)
        for partition in topic.partitions or ():
            if not partition.records:
                continue
            aborted = tuple(
                (a.producer_id, a.first_offset) for a in (partition.aborted_transactions or ())
            )
            yield FetchedRecords(
                name,
                topic_id,
                partition.partition_index,
                int(partition.error_code),
                partition.high_watermark,
                partition.records,
                aborted,
            )


#: The capture ids of the layout program (the fetch skim, `tracing.skim`, reads them too).
(
    CAPTURED_TOPIC,
    CAPTURED_PARTITION,
    CAPTURED_ERROR,
    CAPTURED_HIGH_WATERMARK,
    CAPTURED_ABORTED_PRODUCER,
    CAPTURED_ABORTED_OFFSET,
    CAPTURED_RECORDS,
) = range(7)
_CAPTURED = {
    "responses.topic": CAPTURED_TOPIC,
    "responses.topic_id": CAPTURED_TOPIC,
    "responses.partitions.partition_index": CAPTURED_PARTITION,
    "responses.partitions.error_code": CAPTURED_ERROR,
    "responses.partitions.high_watermark": CAPTURED_HIGH_WATERMARK,
    "responses.partitions.aborted_transactions.producer_id": CAPTURED_ABORTED_PRODUCER,
    "responses.partitions.aborted_transactions.first_offset": CAPTURED_ABORTED_OFFSET,
    "responses.partitions.records": CAPTURED_RECORDS,
}
#: Fetch responses name topics by id from this version on (KIP-516).
TOPIC_IDS_FROM = 13


@cache
def layout_program(api_version: int) -> Program:
    """The walk's program for a Fetch response of this version, with the layout's captures."""
    return program(response_schema(ApiKey.FETCH, api_version), _CAPTURED)


def locate_fetched_partitions(
    body: bytes | memoryview, api_version: int
) -> list[FetchedRecords] | None:
    """The partitions of a Fetch response that returned records, as `iter_fetched_partitions`
    gives them, found by the guard's walk along kio's schema instead of a decode: the records
    are views of `body`, not copies. None when the walk cannot finish or leaves bytes over."""
    view = memoryview(body)
    captures = walk_response(layout_program(api_version), view, ApiKey.FETCH, api_version)
    if captures is None:
        return None
    found: list[FetchedRecords] = []
    topic: str | None = None
    topic_id: uuid.UUID | None = None
    partition = error_code = high_watermark = producer_id = 0
    aborted: list[tuple[int, int]] = []
    for kind, start, value, end in captures:
        if kind == CAPTURED_RECORDS:
            if value >= 0 and end > value:
                found.append(
                    FetchedRecords(
                        topic,
                        topic_id,
                        partition,
                        error_code,
                        high_watermark,
                        view[value:end],
                        tuple(aborted),
                    )
                )
        elif kind == CAPTURED_PARTITION:
            partition = int.from_bytes(view[start:end], "big", signed=True)
            aborted = []
        elif kind == CAPTURED_ERROR:
            error_code = int.from_bytes(view[start:end], "big", signed=True)
        elif kind == CAPTURED_HIGH_WATERMARK:
            high_watermark = int.from_bytes(view[start:end], "big", signed=True)
        elif kind == CAPTURED_ABORTED_PRODUCER:
            producer_id = int.from_bytes(view[start:end], "big", signed=True)
        elif kind == CAPTURED_ABORTED_OFFSET:
            aborted.append((producer_id, int.from_bytes(view[start:end], "big", signed=True)))
        elif api_version >= TOPIC_IDS_FROM:
            topic, topic_id = None, captured_uuid(bytes(view[start:end]))
        elif value < 0:
            return None  # a null topic name: kio's decode reports it
        else:
            try:
                topic, topic_id = captured_text(view, value, end), None
            except UnicodeDecodeError:
                return None
    return found
