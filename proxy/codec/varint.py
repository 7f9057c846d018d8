"""Unsigned protocol varints (the zig-zag record varints live with the record codec)."""

from __future__ import annotations

from .errors import ProtocolError


def read_uvarint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    """Decode an unsigned varint at `offset`; returns (value, offset after it)."""
    value = 0
    shift = 0
    end = len(data)
    while True:
        if offset >= end:
            raise ProtocolError("varint runs past the end of the frame")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 28:
            raise ProtocolError("varint is longer than 5 bytes")


def write_uvarint(value: int) -> bytes:
    """Encode an unsigned varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
