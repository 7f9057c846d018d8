"""Produce requests read by the schema walk (`locate_request_partitions`) where kio's decode
refuses them: the walk must not accept what kio refuses, so those requests still go to kio (and
close the connection with its error) instead of reaching the broker and the tracer."""

from __future__ import annotations

import datetime
from importlib import import_module

import pytest
from kio.static.primitive import i16, i32

from proxy.codec.errors import ProtocolError
from proxy.codec.headers import parse_request_header
from proxy.codec.messages import decode_request
from proxy.codec.produce import locate_request_partitions

from ..proxy.messages import request_frame

TOPIC = "topic-name"
RECORDS = b"opaque record bytes"


def _body(version: int) -> bytearray:
    module = import_module(f"kio.schema.produce.v{version}.request")
    request = module.ProduceRequest(
        transactional_id=None,
        acks=i16(-1),
        timeout=datetime.timedelta(seconds=1),
        topic_data=(
            module.TopicProduceData(
                name=TOPIC,
                partition_data=(module.PartitionProduceData(index=i32(0), records=RECORDS),),
            ),
        ),
    )
    return bytearray(request_frame(request, 1)[4:])


def _both(body: bytearray, version: int) -> tuple[object, str]:
    header = parse_request_header(body)
    assert header.size is not None
    located = locate_request_partitions(bytes(body), header.size, version)
    try:
        decode_request(0, version, bytes(body), header.size)
    except ProtocolError as exc:
        return located, f"refused: {exc}"
    return located, "decoded"


@pytest.mark.parametrize("version", [5, 8])
def test_lengths_below_minus_one_are_left_to_kio(version: int) -> None:
    body = _body(version)
    at = body.index(TOPIC.encode()) - 2  # the int16 length of the topic name
    for field, width, value in (("topic", 2, -2), ("records", 4, -7)):
        damaged = bytearray(body)
        if field == "records":
            at = damaged.index(RECORDS) - 4
        damaged[at : at + width] = value.to_bytes(width, "big", signed=True)
        located, kio = _both(damaged, version)
        assert kio.startswith("refused"), kio
        assert located is None


@pytest.mark.parametrize("version", [5, 9, 12])
def test_a_null_topic_name_is_left_to_kio(version: int) -> None:
    body = _body(version)
    at = body.index(TOPIC.encode())
    if version >= 9:  # compact string: varint of length + 1, 0 for null
        damaged = body[: at - 1] + b"\x00" + body[at + len(TOPIC) :]
    else:
        damaged = body[: at - 2] + b"\xff\xff" + body[at + len(TOPIC) :]
    located, kio = _both(damaged, version)
    assert kio.startswith("refused"), kio
    assert located is None


@pytest.mark.parametrize("version", [5, 9, 12])
def test_the_undamaged_request_is_located(version: int) -> None:
    located, kio = _both(_body(version), version)
    assert kio == "decoded"
    assert located is not None
    (partition,) = located.partitions
    assert (partition.topic, bytes(partition.records)) == (TOPIC, RECORDS)
