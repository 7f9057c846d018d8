"""Compression codecs: read what real clients write, write what Kafka reads, refuse bombs."""

from __future__ import annotations

import contextlib
import gzip
import struct
import types
import warnings

import aiokafka.codec
import cramjam
import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.codec.compression import (
    XERIAL_MAGIC,
    Codec,
    CompressionError,
    compress,
    decompress,
    is_xerial,
)

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its JSON schemas with a deprecated importlib API at import time,
    # and the warning is attributed to importlib, so pyproject's kafka.* filter misses it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka.codec

ALL_CODECS = list(Codec)
COMPRESSED_CODECS = [codec for codec in Codec if codec != Codec.NONE]
BODY = b"".join(b"record-%05d:" % i + b"payload " * 20 for i in range(400))  # ~68 KiB


@pytest.fixture(scope="module", autouse=True)
def kafka_python_snappy():
    """kafka-python wants python-snappy (which wraps cramjam); give it the same raw functions."""
    original = kafka.codec.snappy
    if original is None:
        kafka.codec.snappy = types.SimpleNamespace(
            compress=lambda data: bytes(cramjam.snappy.compress_raw(data)),
            decompress=lambda data: bytes(cramjam.snappy.decompress_raw(data)),
        )
    yield
    kafka.codec.snappy = original


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("size", [0, 1, 1000, len(BODY)])
def test_round_trip(codec: Codec, size: int) -> None:
    data = BODY[:size]
    assert decompress(codec, compress(codec, data)) == data


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
def test_accepts_memoryview_input(codec: Codec) -> None:
    compressed = compress(codec, memoryview(BODY)[10:])
    assert decompress(codec, memoryview(b"??" + compressed)[2:]) == BODY[10:]


KAFKA_PYTHON_ENCODERS = {
    Codec.GZIP: kafka.codec.gzip_encode,
    Codec.SNAPPY: kafka.codec.snappy_encode,
    Codec.LZ4: kafka.codec.lz4_encode,
    Codec.ZSTD: kafka.codec.zstd_encode,
}
AIOKAFKA_ENCODERS = {
    Codec.GZIP: aiokafka.codec.gzip_encode,
    Codec.SNAPPY: aiokafka.codec.snappy_encode,
    Codec.LZ4: aiokafka.codec.lz4_encode,
    Codec.ZSTD: aiokafka.codec.zstd_encode,
}


@pytest.mark.parametrize("codec", COMPRESSED_CODECS, ids=lambda c: c.name)
def test_reads_kafka_python_and_aiokafka_output(codec: Codec) -> None:
    assert decompress(codec, KAFKA_PYTHON_ENCODERS[codec](BODY)) == BODY
    assert decompress(codec, AIOKAFKA_ENCODERS[codec](BODY)) == BODY


@pytest.mark.parametrize("codec", COMPRESSED_CODECS, ids=lambda c: c.name)
def test_output_is_read_by_kafka_python_and_aiokafka(codec: Codec) -> None:
    decoders = {
        Codec.GZIP: (kafka.codec.gzip_decode, aiokafka.codec.gzip_decode),
        Codec.SNAPPY: (kafka.codec.snappy_decode, aiokafka.codec.snappy_decode),
        Codec.LZ4: (kafka.codec.lz4_decode, aiokafka.codec.lz4_decode),
        Codec.ZSTD: (kafka.codec.zstd_decode, aiokafka.codec.zstd_decode),
    }[codec]
    compressed = compress(codec, BODY)
    for decode in decoders:
        assert decode(compressed) == BODY


def test_snappy_reads_both_framings() -> None:
    xerial = kafka.codec.snappy_encode(BODY, xerial_compatible=True)
    raw = kafka.codec.snappy_encode(BODY, xerial_compatible=False)
    assert is_xerial(xerial)
    assert not is_xerial(raw)
    assert decompress(Codec.SNAPPY, xerial) == BODY
    assert decompress(Codec.SNAPPY, raw) == BODY


def test_snappy_keeps_the_framing_of_the_original() -> None:
    """librdkafka writes raw snappy, Java xerial: re-encode each the way it came."""
    raw_original = bytes(cramjam.snappy.compress_raw(b"abc"))
    xerial_original = kafka.codec.snappy_encode(b"abc", xerial_compatible=True)
    assert not is_xerial(compress(Codec.SNAPPY, BODY, like=raw_original))
    assert is_xerial(compress(Codec.SNAPPY, BODY, like=xerial_original))
    assert is_xerial(compress(Codec.SNAPPY, BODY))  # Java's framing when nothing to copy


def test_xerial_output_has_java_header_and_32k_blocks() -> None:
    out = compress(Codec.SNAPPY, BODY)
    assert out[:16] == XERIAL_MAGIC + struct.pack(">ii", 1, 1)
    position, blocks = 16, 0
    while position < len(out):
        (length,) = struct.unpack_from(">i", out, position)
        position += 4 + length
        blocks += 1
    assert position == len(out)
    assert blocks == -(-len(BODY) // (32 * 1024))


def test_lz4_output_is_one_frame_of_independent_64k_blocks() -> None:
    """Java's reader needs independent blocks and reads one frame only."""
    out = compress(Codec.LZ4, BODY)
    info = lz4.frame.get_frame_info(out)
    assert info["block_linked"] is False
    assert info["block_size_id"] == lz4.frame.BLOCKSIZE_MAX64KB
    assert info["content_checksum"] is False
    decompressor = lz4.frame.LZ4FrameDecompressor()
    assert decompressor.decompress(out) == BODY
    assert decompressor.eof and not decompressor.unused_data


def test_zstd_frame_without_content_size_is_read() -> None:
    """Java's zstd-jni and librdkafka stream, so their frames carry no content size."""
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(BODY)
    assert zstandard.frame_content_size(streamed) == -1
    assert decompress(Codec.ZSTD, streamed) == BODY


def test_zstd_large_frame_without_content_size_needs_several_attempts() -> None:
    large = BODY * 40  # ~2.7 MiB, above the first output guess
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(large)
    assert decompress(Codec.ZSTD, streamed) == large


def test_gzip_reads_concatenated_members() -> None:
    assert decompress(Codec.GZIP, gzip.compress(b"abc") + gzip.compress(b"def")) == b"abcdef"


BOMB = bytes(2 * 1024 * 1024)
CAP = 1024 * 1024


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
def test_output_above_cap_is_refused(codec: Codec) -> None:
    with pytest.raises(CompressionError, match=r"exceeds|larger than"):
        decompress(codec, compress(codec, BOMB), max_size=CAP)


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.name)
def test_output_exactly_at_cap_is_accepted(codec: Codec) -> None:
    assert decompress(codec, compress(codec, BOMB[:CAP]), max_size=CAP) == BOMB[:CAP]


def test_bombs_without_declared_sizes_are_refused() -> None:
    zstd_streamed = zstandard.ZstdCompressor(write_content_size=False).compress(BOMB)
    lz4_sizeless = lz4.frame.compress(BOMB, store_size=False, block_linked=False)
    for codec, data in [(Codec.ZSTD, zstd_streamed), (Codec.LZ4, lz4_sizeless)]:
        with pytest.raises(CompressionError):
            decompress(codec, data, max_size=CAP)


def test_snappy_preamble_is_checked_before_allocating() -> None:
    lying = b"\xff\xff\xff\xff\x0f" + b"\x00" * 10  # claims 4 GiB
    with pytest.raises(CompressionError, match="exceeds"):
        decompress(Codec.SNAPPY, lying)


@pytest.mark.parametrize("codec", COMPRESSED_CODECS, ids=lambda c: c.name)
def test_truncated_input_is_an_error(codec: Codec) -> None:
    compressed = compress(codec, BODY)
    for cut in (1, len(compressed) // 2, len(compressed) - 1):
        with pytest.raises(CompressionError):
            decompress(codec, compressed[:cut])


@pytest.mark.parametrize("codec", [Codec.LZ4, Codec.ZSTD], ids=lambda c: c.name)
def test_trailing_data_is_an_error(codec: Codec) -> None:
    """Java's lz4 reader ignores it: re-encoding it would change what consumers see."""
    with pytest.raises(CompressionError, match=r"trailing|unused data"):
        decompress(codec, compress(codec, BODY) + b"junk")


def test_unknown_codec_is_an_error() -> None:
    with pytest.raises(CompressionError, match="unknown"):
        decompress(5, b"abc")
    with pytest.raises(CompressionError, match="unknown"):
        compress(7, b"abc")


@settings(max_examples=150, deadline=None)
@given(codec=st.sampled_from(COMPRESSED_CODECS), data=st.binary(max_size=300))
def test_garbage_raises_only_compression_error(codec: Codec, data: bytes) -> None:
    with contextlib.suppress(CompressionError):
        decompress(codec, data, max_size=CAP)


@settings(max_examples=100, deadline=None)
@given(
    codec=st.sampled_from(COMPRESSED_CODECS),
    data=st.binary(max_size=2000),
    position=st.integers(min_value=0),
    byte=st.integers(min_value=0, max_value=255),
)
def test_corrupted_output_raises_only_compression_error(
    codec: Codec, data: bytes, position: int, byte: int
) -> None:
    compressed = bytearray(compress(codec, data))
    compressed[position % len(compressed)] = byte
    with contextlib.suppress(CompressionError):
        decompress(codec, bytes(compressed), max_size=CAP)


@settings(max_examples=100, deadline=None)
@given(codec=st.sampled_from(ALL_CODECS), data=st.binary(max_size=5000))
def test_round_trip_property(codec: Codec, data: bytes) -> None:
    assert decompress(codec, compress(codec, data)) == data
