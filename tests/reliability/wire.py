"""Raw Kafka frames for clients that misbehave on purpose (half frames, slow or vanishing readers).

Requests are encoded with kio, the codec the proxy itself uses; responses are read as frames and
only their correlation id is looked at.
"""

from __future__ import annotations

import datetime
import socket
import struct
from typing import Any

from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.request_header.v2.header import RequestHeader
from kio.schema.types import TopicName
from kio.static.primitive import i16, i32, i32Timedelta, i64

from proxy.codec.framing import frame
from proxy.codec.messages import encode


def _request(payload: Any, correlation_id: int, client_id: str = "reliability") -> bytes:
    header = RequestHeader(
        request_api_key=i16(payload.__api_key__),
        request_api_version=i16(payload.__version__),
        correlation_id=i32(correlation_id),
        client_id=client_id,
    )
    return frame(encode(header) + encode(payload))


def api_versions_v0(correlation_id: int) -> bytes:
    body = struct.pack(">hhih", 18, 0, correlation_id, 11) + b"reliability"
    return struct.pack(">i", len(body)) + body


def metadata_v12(correlation_id: int) -> bytes:
    """Metadata for all topics (the request every client sends after ApiVersions)."""
    return _request(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
        ),
        correlation_id,
    )


def fetch_v12(
    correlation_id: int, topic: str, offset: int, max_bytes: int, partition: int = 0
) -> bytes:
    """A consumer's Fetch (topic by name, sessionless) of one partition from `offset`."""
    return _request(
        FetchRequest(
            max_wait=i32Timedelta.parse(datetime.timedelta(milliseconds=100)),
            min_bytes=i32(1),
            max_bytes=i32(max_bytes),
            topics=(
                FetchTopic(
                    topic=TopicName(topic),
                    partitions=(
                        FetchPartition(
                            partition=i32(partition),
                            fetch_offset=i64(offset),
                            partition_max_bytes=i32(max_bytes),
                        ),
                    ),
                ),
            ),
            forgotten_topics_data=(),
        ),
        correlation_id,
    )


def produce_head(correlation_id: int, claimed_size: int = 100_000) -> bytes:
    """The first bytes of a Produce v9 frame that claims `claimed_size` bytes (never completed)."""
    header = struct.pack(">hhih", 0, 9, correlation_id, 11) + b"reliability" + b"\x00"
    body = header + b"\x00" * 64  # transactional id, acks, timeout... all cut off later
    return struct.pack(">i", claimed_size) + body


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> bytes:
    """One response frame's body (without the size prefix)."""
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    return recv_exactly(sock, size)


def correlation_id(body: bytes) -> int:
    return int(struct.unpack(">i", body[:4])[0])


def round_trip(sock: socket.socket, request: bytes, expected_id: int) -> bytes:
    sock.sendall(request)
    body = read_frame(sock)
    if correlation_id(body) != expected_id:
        raise AssertionError(f"response {correlation_id(body)} for request {expected_id}")
    return body
