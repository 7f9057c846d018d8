"""Building request/response frames with kio, for playbook tests of the exchange."""

from __future__ import annotations

import dataclasses
import datetime
import struct
import uuid
from importlib import import_module
from typing import Any

from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.schema.response_header.v1.header import ResponseHeader as ResponseHeaderV1
from kio.static.primitive import i16, i32, i64

from proxy.codec.apis import ApiKey
from proxy.codec.framing import frame
from proxy.codec.messages import encode


def request_frame(payload: Any, correlation_id: int, client_id: str | None = "test") -> bytes:
    header_type = RequestHeaderV2 if payload.__flexible__ else RequestHeaderV1
    header = header_type(
        request_api_key=i16(payload.__api_key__),
        request_api_version=i16(payload.__version__),
        correlation_id=i32(correlation_id),
        client_id=client_id,
    )
    return frame(encode(header) + encode(payload))


def response_frame(payload: Any, correlation_id: int) -> bytes:
    flexible = payload.__flexible__ and payload.__api_key__ != ApiKey.API_VERSIONS
    header_type = ResponseHeaderV1 if flexible else ResponseHeaderV0
    return frame(encode(header_type(correlation_id=i32(correlation_id))) + encode(payload))


def fetch_response(version: int = 16, *, endpoints: bool = False, error: int = 0) -> Any:
    """A Fetch response for one partition (topic id 42, partition 3) whose records are opaque
    bytes; with ``endpoints``, it names broker 7 at 10.0.0.7:9092 in its node endpoints."""
    module = import_module(f"kio.schema.fetch.v{version}.response")
    partition = module.PartitionData(
        partition_index=i32(3),
        error_code=ErrorCode(error),
        high_watermark=i64(10),
        last_stable_offset=i64(10),
        log_start_offset=i64(0),
        aborted_transactions=None,
        records=b"batches, not parsed by these tests",
    )
    return module.FetchResponse(
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        session_id=i32(0),
        responses=(
            module.FetchableTopicResponse(topic_id=uuid.UUID(int=42), partitions=(partition,)),
        ),
        node_endpoints=(
            (module.NodeEndpoint(node_id=i32(7), host="10.0.0.7", port=i32(9092), rack=None),)
            if endpoints
            else ()
        ),
    )


def large_fetch_frame(
    correlation_id: int, size: int, *, endpoints: bool = False, version: int = 16
) -> bytes:
    """A `fetch_response` frame whose one partition holds `size` opaque record bytes."""
    response = fetch_response(version, endpoints=endpoints)
    topic = response.responses[0]
    partition = dataclasses.replace(topic.partitions[0], records=b"r" * size)
    topic = dataclasses.replace(topic, partitions=(partition,))
    return response_frame(dataclasses.replace(response, responses=(topic,)), correlation_id)


def large_produce_frame(correlation_id: int, size: int, acks: int = 1, version: int = 9) -> bytes:
    """A Produce request frame the pairing core reads: header, transactional id "tx", acks, then
    `size` opaque bytes (no partitions a parser would accept)."""
    header = struct.pack(">hhih", 0, version, correlation_id, 3) + b"app"
    if version >= 9:
        header += b"\x00" + b"\x03tx"  # no tagged header fields; compact string "tx"
    else:
        header += struct.pack(">h", 2) + b"tx"
    return frame(header + struct.pack(">h", acks) + b"p" * size)
