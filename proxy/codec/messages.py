"""Decoding and encoding message payloads with kio's generated schemas.

Readers and writers are built once per (API, version) and cached. A payload is decoded only when
the proxy has a reason to look inside it, and re-encoded only when something in it changed.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

from kio.serial import entity_reader, entity_writer

from .apis import request_schema, response_schema
from .errors import ProtocolError
from .guard import check_array_counts, top_level_tags
from .headers import response_header_size


@cache
def _reader(schema: type) -> Any:
    return entity_reader(schema)


@cache
def _writer(schema: type) -> Any:
    return entity_writer(schema)


def _decode(schema: type, body: bytes | memoryview, offset: int, walked: bool = False) -> Any:
    view = memoryview(body)
    if not view.readonly:
        view = view.toreadonly()  # kio accepts read-only buffers only; this does not copy
    if not walked:
        check_array_counts(schema, view, offset)
    body = view
    try:
        value, size = _reader(schema)(body, offset)
    except Exception as exc:  # kio raises a range of errors on bad input
        raise ProtocolError(
            f"cannot decode {schema.__name__} v{schema.__version__}: {exc}"
        ) from exc
    if offset + size != len(body):
        raise ProtocolError(
            f"{schema.__name__} v{schema.__version__} has {len(body) - offset - size} "
            "trailing bytes"
        )
    return value


def encode(payload: Any) -> bytes:
    """Serialise a kio payload object (request or response body, no header)."""
    buffer = io.BytesIO()
    _writer(type(payload))(buffer, payload)
    return buffer.getvalue()


def decode_request(
    api_key: int, api_version: int, body: bytes | memoryview, header_size: int
) -> Any:
    """Decode a request payload that starts at `header_size` in the frame body."""
    return _decode(_schema(request_schema, api_key, api_version), body, header_size)


def _schema(lookup: Any, api_key: int, api_version: int) -> type:
    try:
        return lookup(api_key, api_version)
    except KeyError:
        raise ProtocolError(f"API {api_key} v{api_version} has no schema to decode it") from None


def decode_response(
    api_key: int, api_version: int, body: bytes | memoryview, *, walked: bool = False
) -> tuple[int, Any]:
    """Decode a response frame body; returns (header size, payload). `walked`: the body already
    passed `response_top_level_tags` (not None), which checked its array counts."""
    schema = _schema(response_schema, api_key, api_version)
    header_size = response_header_size(body, api_key, api_version)
    return header_size, _decode(schema, body, header_size, walked)


def response_top_level_tags(
    api_key: int, api_version: int, body: bytes | memoryview
) -> tuple[int, ...] | None:
    """The tags of a response's own tagged fields, without decoding it (see `top_level_tags`);
    None when only a full decode can tell."""
    schema = _schema(response_schema, api_key, api_version)
    try:
        header_size = response_header_size(body, api_key, api_version)
    except ProtocolError:
        return None
    return top_level_tags(schema, body, header_size)


def replace_payload(body: bytes | memoryview, header_size: int, payload: Any) -> bytes:
    """A new frame body: the original header bytes followed by a re-encoded payload."""
    return bytes(body[:header_size]) + encode(payload)
