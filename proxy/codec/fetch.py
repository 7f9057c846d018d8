"""Fetch responses: each partition's records and aborted transactions, read-only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FetchedRecords:
    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    error_code: int
    high_watermark: int
    records: bytes
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
