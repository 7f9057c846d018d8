"""Fetch responses read by the schema walk (`locate_fetched_partitions`) against kio's decode, on
made-up responses with what the captures lack: several topics and partitions, aborted
transactions, partitions without records, topic names (before v13) and topic ids."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from importlib import import_module
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.static.primitive import i32, i64

from proxy.codec.apis import ApiKey
from proxy.codec.fetch import iter_fetched_partitions, locate_fetched_partitions
from proxy.codec.messages import decode_response

from ..proxy.messages import response_frame


def _response(version: int) -> Any:
    module = import_module(f"kio.schema.fetch.v{version}.response")
    fields = {f.name for f in dataclasses.fields(module.PartitionData)}

    def partition(index: int, records: bytes | None, aborted: int) -> Any:
        values: dict[str, Any] = {
            "partition_index": i32(index),
            "error_code": ErrorCode.none if index % 2 else ErrorCode.offset_out_of_range,
            "high_watermark": i64(1000 + index),
            "last_stable_offset": i64(900 + index),
            "log_start_offset": i64(0),
            "aborted_transactions": tuple(
                module.AbortedTransaction(producer_id=i64(7 + n), first_offset=i64(50 * n))
                for n in range(aborted)
            ),
            "records": records,
        }
        return module.PartitionData(**{k: v for k, v in values.items() if k in fields})

    def topic(n: int) -> Any:
        partitions = (
            partition(0, b"first records" * n, 2),
            partition(1, None, 0),
            partition(2, b"", 1),
            partition(5, b"\x00\xff" * 300, 0),
        )
        name = {"topic_id": uuid.UUID(int=n)} if version >= 13 else {"topic": f"topic-{n}"}
        return module.FetchableTopicResponse(**name, partitions=partitions)

    top: dict[str, Any] = {
        "throttle_time": datetime.timedelta(0),
        "error_code": ErrorCode.none,
        "session_id": i32(0),
        "responses": (topic(1), topic(2)),
        "node_endpoints": (),
    }
    top_fields = {f.name for f in dataclasses.fields(module.FetchResponse)}
    return module.FetchResponse(**{k: v for k, v in top.items() if k in top_fields})


@pytest.mark.parametrize("version", [4, 11, 12, 13, 16, 17])
def test_the_walk_reads_what_kio_decodes(version: int) -> None:
    body = memoryview(response_frame(_response(version), 9))[4:]
    located = locate_fetched_partitions(body, version)
    assert located is not None
    expected = list(iter_fetched_partitions(decode_response(ApiKey.FETCH, version, body)[1]))
    assert [dataclasses.replace(p, records=bytes(p.records)) for p in located] == expected
    # Two topics, two partitions each with records; the aborted transactions where they exist.
    assert [(p.partition, len(p.aborted_transactions)) for p in located] == [(0, 2), (5, 0)] * 2


@pytest.mark.parametrize("version", [4, 16])
def test_a_response_cut_short_or_padded_is_left_to_kio(version: int) -> None:
    body = bytes(memoryview(response_frame(_response(version), 9))[4:])
    for damaged in (body[:-1], body[: len(body) // 2], body + b"\x00"):
        assert locate_fetched_partitions(damaged, version) is None
