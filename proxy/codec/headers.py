"""Kafka request and response headers.

Request header v1: api_key int16, api_version int16, correlation_id int32, client_id int16-length
nullable string. v2 (flexible requests) adds tagged fields; client_id keeps its int16 length.
Response header v0: correlation_id int32; v1 (flexible responses, but never ApiVersions) adds
tagged fields. Header v0 requests (no client_id) are gone from Kafka 4 and not accepted here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .apis import request_is_flexible, response_is_flexible
from .errors import ProtocolError
from .varint import read_uvarint

_REQUEST_PREFIX = struct.Struct(">hhi")
#: The routing prefix and the client id's length.
_REQUEST_START = struct.Struct(">hhih")
_INT32 = struct.Struct(">i")

#: Bytes of a request frame's body needed to route it: api key, version, correlation id.
REQUEST_PEEK_SIZE = _REQUEST_PREFIX.size
#: Bytes of a response frame's body needed to pair it with its request.
RESPONSE_PEEK_SIZE = _INT32.size


class RequestHeader(NamedTuple):
    """A parsed request header (a named tuple: built for every held request, it is 3x cheaper
    to make than a frozen dataclass)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    #: Size of the header in bytes; the payload starts here. None when the API is unknown.
    size: int | None


def peek_request(body: bytes | memoryview) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) from the first bytes of a request body."""
    if len(body) < REQUEST_PEEK_SIZE:
        raise ProtocolError(f"request of {len(body)} bytes is shorter than a request header")
    return _REQUEST_PREFIX.unpack_from(body, 0)


def peek_correlation_id(body: bytes | memoryview) -> int:
    """The correlation id at the start of a response body."""
    if len(body) < RESPONSE_PEEK_SIZE:
        raise ProtocolError(f"response of {len(body)} bytes has no correlation id")
    return _INT32.unpack_from(body, 0)[0]


def skip_tagged_fields(body: bytes | memoryview, offset: int) -> int:
    """Offset just past a tagged-field section starting at `offset`."""
    if offset < len(body) and body[offset] == 0:
        return offset + 1  # no tagged fields: nearly every header
    count, offset = read_uvarint(body, offset)
    for _ in range(count):
        _tag, offset = read_uvarint(body, offset)
        size, offset = read_uvarint(body, offset)
        offset += size
        if offset > len(body):
            raise ProtocolError("tagged field runs past the end of the frame")
    return offset


def parse_request_header(body: bytes | memoryview) -> RequestHeader:
    """Decode a request header; `size` is None for APIs kio does not know."""
    if len(body) < _REQUEST_START.size:
        peek_request(body)  # raises for a body shorter than the routing prefix
        raise ProtocolError("request header ends before its client id")
    api_key, api_version, correlation_id, length = _REQUEST_START.unpack_from(body, 0)
    offset = _REQUEST_START.size
    client_id: str | None = None
    if length >= 0:
        if offset + length > len(body):
            raise ProtocolError("client id runs past the end of the frame")
        try:
            client_id = str(body[offset : offset + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("client id is not valid UTF-8") from exc
        offset += length
    elif length != -1:
        raise ProtocolError(f"client id has a negative length {length}")
    flexible = request_is_flexible(api_key, api_version)
    size: int | None
    if flexible is None:
        size = None
    elif flexible:
        size = skip_tagged_fields(body, offset)
    else:
        size = offset
    return RequestHeader(api_key, api_version, correlation_id, client_id, size)


def response_header_size(body: bytes | memoryview, api_key: int, api_version: int) -> int:
    """Size of the response header, which depends on the request it answers."""
    if response_is_flexible(api_key, api_version):
        return skip_tagged_fields(body, RESPONSE_PEEK_SIZE)
    return RESPONSE_PEEK_SIZE
