"""Produce responses read by the schema walk (`locate_response_partitions`) against kio's decode.

A sampled request's answer is read after it was sent, for its send spans: offsets, errors and
their messages. The walk must give what kio's decode gives, for every version, with several
topics and partitions, error messages (from v8), tagged fields (current leaders, node endpoints)
and topic ids (v13); a response it cannot read to its end must be left to kio.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from importlib import import_module
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.static.primitive import i32, i64

from proxy.codec.api_versions import decodable_ranges
from proxy.codec.apis import ApiKey
from proxy.codec.messages import decode_response
from proxy.codec.produce import iter_response_partitions, locate_response_partitions

from ..proxy.messages import response_frame

LOW, HIGH = decodable_ranges()[ApiKey.PRODUCE]
VERSIONS = list(range(LOW, HIGH + 1))


def _response(version: int, *, tagged: bool = False) -> Any:
    module = import_module(f"kio.schema.produce.v{version}.response")
    partition_fields = {f.name for f in dataclasses.fields(module.PartitionProduceResponse)}

    def partition(index: int, error: ErrorCode, message: str | None) -> Any:
        values: dict[str, Any] = {
            "index": i32(index),
            "error_code": error,
            "base_offset": i64(-1 if error else 4000 + index),
            "log_append_time": datetime.datetime.fromtimestamp(0, datetime.UTC)
            if version >= 2
            else None,
            "log_start_offset": i64(0),
            "record_errors": (
                module.BatchIndexAndErrorMessage(
                    batch_index=i32(0), batch_index_error_message="bad record"
                ),
            )
            if error and "record_errors" in partition_fields
            else (),
            "error_message": message,
        }
        if tagged and "current_leader" in partition_fields:
            values["current_leader"] = module.LeaderIdAndEpoch(
                leader_id=i32(7), leader_epoch=i32(3)
            )
        return module.PartitionProduceResponse(
            **{k: v for k, v in values.items() if k in partition_fields}
        )

    def topic(n: int) -> Any:
        partitions = (
            partition(0, ErrorCode.none, None),
            partition(3, ErrorCode.not_leader_or_follower, "moved to 7"),
            partition(5, ErrorCode.invalid_record, None),
        )
        name = {"topic_id": uuid.UUID(int=n)} if version >= 13 else {"name": f"topic-{n}"}
        return module.TopicProduceResponse(**name, partition_responses=partitions)

    top: dict[str, Any] = {
        "responses": (topic(1), topic(2)),
        "throttle_time": datetime.timedelta(0),
        "node_endpoints": (
            module.NodeEndpoint(node_id=i32(7), host="10.0.0.7", port=i32(9092), rack=None),
        )
        if tagged and hasattr(module, "NodeEndpoint")
        else (),
    }
    fields = {f.name for f in dataclasses.fields(module.ProduceResponse)}
    return module.ProduceResponse(**{k: v for k, v in top.items() if k in fields})


@pytest.mark.parametrize("tagged", [False, True], ids=["plain", "tagged"])
@pytest.mark.parametrize("version", VERSIONS)
def test_the_walk_reads_what_kio_decodes(version: int, tagged: bool) -> None:
    body = memoryview(response_frame(_response(version, tagged=tagged), 9))[4:]
    located = locate_response_partitions(body, version)
    expected = list(iter_response_partitions(decode_response(ApiKey.PRODUCE, version, body)[1]))
    assert located == expected
    assert [(p.partition, p.error_code) for p in located] == [(0, 0), (3, 6), (5, 87)] * 2
    if version >= 8:
        assert [p.error_message for p in located][:2] == [None, "moved to 7"]


@pytest.mark.parametrize("version", [LOW, 8, HIGH])
def test_a_response_cut_short_or_padded_is_left_to_kio(version: int) -> None:
    body = bytes(memoryview(response_frame(_response(version), 9))[4:])
    for damaged in (body[:-1], body[: len(body) // 2], body + b"\x00"):
        assert locate_response_partitions(damaged, version) is None


def test_an_error_code_kio_does_not_know_is_given_as_it_is() -> None:
    """kio's decode refuses the whole response; the walk still says which partition failed."""
    body = bytearray(memoryview(response_frame(_response(HIGH), 9))[4:])
    known = ErrorCode.not_leader_or_follower.value.to_bytes(2, "big")
    at = body.index(b"\x00\x00\x00\x03" + known) + 4  # partition 3's error code
    body[at : at + 2] = (999).to_bytes(2, "big")
    located = locate_response_partitions(bytes(body), HIGH)
    assert located is not None and located[1].error_code == 999
