"""FrameScanner: frames split anywhere come out whole, in order, and uncopied when passed on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.codec.errors import FrameTooLarge, ProtocolError
from proxy.codec.framing import Forward, FrameScanner, Held, frame


def _frames(bodies: list[bytes]) -> bytes:
    return b"".join(frame(b) for b in bodies)


def _scanner(hold_marker: int | None = None, max_size: int = 1 << 20) -> FrameScanner:
    def classify(peek: memoryview, size: int) -> object:
        return "held" if hold_marker is not None and peek[0] == hold_marker else None

    return FrameScanner(peek_size=4, max_frame_size=max_size, classify=classify)


def _replay(scanner: FrameScanner, stream: bytes, cuts: list[int]) -> tuple[bytes, list[bytes]]:
    forwarded, held = bytearray(), []
    positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(positions):
        for piece in scanner.feed(stream[start:end]):
            if isinstance(piece, Held):
                held.append(bytes(piece.frame))
                forwarded += piece.frame
            else:
                forwarded += piece.data
    return bytes(forwarded), held


def test_passthrough_of_a_whole_buffer_is_one_uncopied_slice() -> None:
    stream = _frames([b"\x01\x02\x03\x04abc", b"\x05\x06\x07\x08", b"\x09\x00\x00\x01xyz"])
    pieces = _scanner().feed(stream)
    assert len(pieces) == 1 and isinstance(pieces[0], Forward)
    assert isinstance(pieces[0].data, memoryview) and pieces[0].data.obj is stream


def test_held_frame_comes_out_whole_between_forwarded_ones() -> None:
    bodies = [b"\x01aaaaa", b"\x07held-body", b"\x02bbb"]
    pieces = _scanner(hold_marker=7).feed(_frames(bodies))
    assert [type(p) for p in pieces] == [Forward, Held, Forward]
    held = pieces[1]
    assert isinstance(held, Held) and bytes(held.body) == b"\x07held-body"
    assert bytes(held.frame) == frame(b"\x07held-body")


@given(
    bodies=st.lists(st.binary(min_size=4, max_size=40), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_forwards_the_exact_stream_and_holds_exact_frames(
    bodies: list[bytes], cuts: list[int]
) -> None:
    bodies = [bytes([i % 2]) + b[1:] for i, b in enumerate(bodies)]
    stream = _frames(bodies)
    forwarded, held = _replay(_scanner(hold_marker=1), stream, cuts)
    assert forwarded == stream
    assert held == [frame(b) for b in bodies if b[0] == 1]


def test_negative_size_is_rejected() -> None:
    with pytest.raises(FrameTooLarge):
        _scanner().feed(b"\xff\xff\xff\xf0" + b"\x00" * 8)


def test_size_above_maximum_is_rejected_before_anything_is_forwarded() -> None:
    scanner = _scanner(max_size=100)
    with pytest.raises(FrameTooLarge):
        scanner.feed((101).to_bytes(4, "big") + b"\x00" * 8)


def test_frame_too_short_for_a_header_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        _scanner().feed((2).to_bytes(4, "big") + b"\x00\x00")


def test_partial_prefix_is_kept_back_until_complete() -> None:
    scanner = _scanner()
    stream = frame(b"\x01\x02\x03\x04rest")
    assert scanner.feed(stream[:3]) == []
    assert scanner.buffered == 3
    forwarded = b"".join(bytes(p.data) for p in scanner.feed(stream[3:]) if isinstance(p, Forward))
    assert forwarded == stream
    assert scanner.at_frame_boundary


def test_a_held_frame_keeps_its_bytes_when_the_reader_reuses_its_buffer() -> None:
    scanner = _scanner(hold_marker=0x01)
    stream = _frames([b"\x01\x02\x03\x04" + bytes(range(200))])
    buffer = bytearray(stream[:100])
    assert scanner.feed(buffer) == []
    buffer[:] = b"\xee" * 100  # a reader that fills the same buffer again
    (held,) = scanner.feed(stream[100:])
    assert isinstance(held, Held) and bytes(held.frame) == stream


def test_a_frame_held_across_many_reads_is_joined_once_and_exactly() -> None:
    scanner = _scanner(hold_marker=0x01)
    body = b"\x01\x02\x03\x04" + bytes(range(256)) * 1024
    stream = frame(body)
    out = []
    for start in range(0, len(stream), 4096):
        out += scanner.feed(stream[start : start + 4096])
    (held,) = out
    assert isinstance(held, Held) and held.frame == stream and isinstance(held.frame, bytes)
