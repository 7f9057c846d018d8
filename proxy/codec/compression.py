"""Record-batch body compression exactly as Kafka clients write it, with a cap on output size.

Owns the five codecs of the record-batch ``attributes`` field. Everything is sans-I/O: bytes in,
bytes out. What each client writes, and so what we must read and write back:

- gzip (1): one RFC 1952 member (Java ``GZIPOutputStream``, librdkafka zlib). Concatenated
  members are legal gzip and are read too.
- snappy (2): Java and kafka-python write xerial framing (16-byte header, then blocks of
  ``int32 BE length + raw snappy`` over 32 KiB of input each); librdkafka writes one raw snappy
  block. Both are read; re-encoding keeps the framing of the original (``like``), since a consumer
  that reads one framing is not guaranteed to read the other.
- lz4 (3): one LZ4 frame with independent blocks (KIP-57). Java's reader stops after the first
  frame and rejects linked blocks and blocks over the declared maximum, so we write exactly what
  Java writes: one frame, 64 KiB independent blocks, no content size, no checksums.
- zstd (4): one frame; Java's zstd-jni streams and omits the content size, so decoding must not
  depend on it.

Decompression refuses to produce more than ``max_size`` bytes (a decompression bomb in a produce
request must not take the proxy down) and refuses trailing data it would otherwise drop silently.
Library choices were measured on a 160 KiB body: cramjam for snappy (the only one with raw and
``_into`` APIs), python-lz4 (its decompressor can be bounded, cramjam's cannot), zstandard
(bounded, and ~15% faster than cramjam), zlib for gzip (bounded; cramjam is not faster).
"""

from __future__ import annotations

import struct
import zlib
from enum import IntEnum
from typing import Final, TypeAlias

import cramjam
import lz4.frame
import zstandard

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "Codec",
    "CompressionError",
    "compress",
    "decompress",
]

DEFAULT_MAX_DECOMPRESSED_SIZE: Final = 64 * 1024 * 1024

Buffer: TypeAlias = bytes | bytearray | memoryview


class Codec(IntEnum):
    """Values of the record-batch ``attributes`` bits 0-2."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


class CompressionError(ValueError):
    """The peer sent a body we cannot (or must not) decompress: corrupt, truncated, too large."""


# Levels match what Kafka's own producers use by default, except lz4: Java 3.8+ defaults to
# level 9 (HC, ~10x slower here) while librdkafka uses the fast compressor, and a proxy sits in
# every produce's latency path.
GZIP_LEVEL: Final = 6
LZ4_LEVEL: Final = 0
ZSTD_LEVEL: Final = 3

XERIAL_MAGIC: Final = b"\x82SNAPPY\x00"
_XERIAL_HEADER: Final = XERIAL_MAGIC + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK_SIZE: Final = 32 * 1024
_XERIAL_BLOCK_LENGTH = struct.Struct(">i")

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_MIN_OUTPUT_GUESS: Final = 1024 * 1024


def decompress(codec: int, data: Buffer, *, max_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE) -> bytes:
    """Return the decompressed body; raise CompressionError for bad or oversized input."""
    if codec == Codec.NONE:
        if len(data) > max_size:
            raise CompressionError(f"uncompressed body of {len(data)} bytes exceeds {max_size}")
        return bytes(data)
    try:
        if codec == Codec.GZIP:
            return _gzip_decompress(data, max_size)
        if codec == Codec.SNAPPY:
            return _snappy_decompress(data, max_size)
        if codec == Codec.LZ4:
            return _lz4_decompress(data, max_size)
        if codec == Codec.ZSTD:
            return _zstd_decompress(data, max_size)
    except CompressionError:
        raise
    except (zlib.error, cramjam.DecompressionError, RuntimeError, zstandard.ZstdError) as exc:
        # python-lz4 reports corrupt frames as RuntimeError.
        raise CompressionError(f"corrupt {_codec_name(codec)} data: {exc}") from exc
    raise CompressionError(f"unknown compression codec {codec}")


def compress(
    codec: int, data: Buffer, *, like: Buffer | None = None, level: int | None = None
) -> bytes:
    """Compress a batch body the way Kafka clients do.

    ``like`` is the compressed body this one replaces: its snappy framing (xerial or raw) is kept.
    ``level`` overrides the codec's default level (ignored for snappy).
    """
    if codec == Codec.NONE:
        return bytes(data)
    if codec == Codec.GZIP:
        compressor = zlib.compressobj(
            GZIP_LEVEL if level is None else level, zlib.DEFLATED, _GZIP_WBITS
        )
        return compressor.compress(data) + compressor.flush()
    if codec == Codec.SNAPPY:
        if like is not None and not is_xerial(like):
            return bytes(cramjam.snappy.compress_raw(data))
        return _xerial_compress(data)
    if codec == Codec.LZ4:
        return lz4.frame.compress(
            data,
            compression_level=LZ4_LEVEL if level is None else level,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            content_checksum=False,
            block_checksum=False,
            store_size=False,
        )
    if codec == Codec.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL if level is None else level).compress(data)
    raise CompressionError(f"unknown compression codec {codec}")


def is_xerial(data: Buffer) -> bool:
    """True when a snappy body uses the xerial block framing (Java), not raw snappy."""
    return bytes(data[: len(XERIAL_MAGIC)]) == XERIAL_MAGIC


def _codec_name(codec: int) -> str:
    try:
        return Codec(codec).name.lower()
    except ValueError:
        return f"codec {codec}"


def _too_large(max_size: int) -> CompressionError:
    return CompressionError(f"decompressed body exceeds {max_size} bytes")


def _gzip_decompress(data: Buffer, max_size: int) -> bytes:
    chunks: list[bytes] = []
    produced = 0
    remaining: Buffer = data
    while True:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        # max_length bounds memory: zlib stops there and keeps the rest in unconsumed_tail.
        chunk = inflater.decompress(remaining, max_size - produced + 1)
        produced += len(chunk)
        if produced > max_size:
            raise _too_large(max_size)
        if not inflater.eof:
            raise CompressionError("truncated gzip data")
        chunks.append(chunk)
        remaining = inflater.unused_data
        if not remaining:
            return b"".join(chunks)


def _snappy_block_length(block: Buffer) -> int:
    """Read the uncompressed length that prefixes every raw snappy block, before allocating."""
    length = 0
    for index in range(min(len(block), 5)):
        byte = block[index]
        length |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return length
    raise CompressionError("bad snappy length preamble")


def _snappy_decompress(data: Buffer, max_size: int) -> bytes:
    view = memoryview(data)
    if not is_xerial(view):
        if _snappy_block_length(view) > max_size:
            raise _too_large(max_size)
        return bytes(cramjam.snappy.decompress_raw(view))
    if len(view) < len(_XERIAL_HEADER):
        raise CompressionError("truncated xerial snappy header")
    blocks: list[memoryview] = []
    expected = 0
    position = len(_XERIAL_HEADER)
    while position < len(view):
        if position + 4 > len(view):
            raise CompressionError("truncated xerial snappy block length")
        (block_length,) = _XERIAL_BLOCK_LENGTH.unpack_from(view, position)
        position += 4
        if block_length < 0 or position + block_length > len(view):
            raise CompressionError("xerial snappy block length beyond the data")
        block = view[position : position + block_length]
        position += block_length
        expected += _snappy_block_length(block)
        if expected > max_size:
            raise _too_large(max_size)
        blocks.append(block)
    output = bytearray(expected)
    written = 0
    for block in blocks:
        written += cramjam.snappy.decompress_raw_into(block, memoryview(output)[written:])
    if written != expected:
        raise CompressionError("snappy block shorter than its preamble")
    return bytes(output)


def _xerial_compress(data: Buffer) -> bytes:
    view = memoryview(data)
    parts = [_XERIAL_HEADER]
    for start in range(0, len(view), _XERIAL_BLOCK_SIZE):
        block = cramjam.snappy.compress_raw(view[start : start + _XERIAL_BLOCK_SIZE])
        parts.append(_XERIAL_BLOCK_LENGTH.pack(len(block)))
        parts.append(bytes(block))
    return b"".join(parts)


def _lz4_decompress(data: Buffer, max_size: int) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    # Asking for max_size at once would allocate it: grow from a realistic first guess instead.
    step = min(max_size + 1, max(_MIN_OUTPUT_GUESS, 8 * len(data)))
    chunks = [decompressor.decompress(data, max_length=step)]
    produced = len(chunks[0])
    while not decompressor.eof and produced <= max_size and not decompressor.needs_input:
        step = min(max_size + 1 - produced, max(produced, _MIN_OUTPUT_GUESS))
        chunk = decompressor.decompress(b"", max_length=step)
        produced += len(chunk)
        chunks.append(chunk)
    if produced > max_size:
        raise _too_large(max_size)
    if not decompressor.eof:
        raise CompressionError("truncated lz4 frame")
    if decompressor.unused_data:
        # Java reads one frame and ignores the rest; re-encoding would change what it sees.
        raise CompressionError("trailing data after lz4 frame")
    return b"".join(chunks)


def _zstd_decompress(data: Buffer, max_size: int) -> bytes:
    content_size = zstandard.frame_content_size(data)
    decompressor = zstandard.ZstdDecompressor()
    if content_size != -1:
        if content_size > max_size:
            raise _too_large(max_size)
        return decompressor.decompress(data, allow_extra_data=False)
    # No content size (Java): max_output_size is allocated up front, so start small and double.
    guess = min(max_size, max(_MIN_OUTPUT_GUESS, 16 * len(data)))
    while True:
        try:
            return decompressor.decompress(data, max_output_size=guess, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            if "did not decompress full frame" not in str(exc):
                raise
            if guess >= max_size:
                raise CompressionError(
                    f"zstd frame truncated or larger than {max_size} bytes"
                ) from exc
            guess = min(max_size, guess * 2)
