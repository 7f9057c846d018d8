"""Splitting a Kafka byte stream into frames without copying the frames nobody inspects.

A Kafka connection carries frames: a signed int32 size, then that many bytes. The scanner looks at
the first few bytes of each frame (enough to identify it) and asks its owner whether the frame must
be held whole for inspection. Frames that are not held come out as `Forward` slices of the very
buffer that was fed in, so passthrough traffic is written on without a copy; consecutive forwarded
frames come out as one slice. Sizes above the configured maximum, and sizes too small to hold the
identifying bytes, raise `FrameTooLarge` / `ProtocolError` before anything of that frame is emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import FrameTooLarge, ProtocolError

SIZE_PREFIX = 4


# Both are named tuples: one is made for every read, and a tuple is several times cheaper to
# make than a frozen dataclass.


class Forward(NamedTuple):
    """Bytes to pass on unchanged (whole frames or parts of one)."""

    data: bytes | memoryview


class Held(NamedTuple):
    """One whole frame, held because its owner wants to inspect it."""

    token: Any
    #: The whole frame, size prefix included, so an unchanged frame is forwarded as it is (the
    #: bytearray it was read into, for a frame read in place).
    frame: bytes | bytearray | memoryview

    @property
    def body(self) -> memoryview:
        """The frame without its size prefix."""
        return memoryview(self.frame)[SIZE_PREFIX:]


#: Called with a frame's first bytes and its size; returns None to forward the frame untouched or
#: a token (kept with the `Held` event) to hold it whole.
Classifier = Callable[[memoryview, int], Any]


class FrameScanner:
    """Incremental frame splitter for one direction of one connection."""

    def __init__(self, *, peek_size: int, max_frame_size: int, classify: Classifier) -> None:
        self._peek_size = peek_size
        self._max_frame_size = max_frame_size
        self._classify = classify
        self._forward_remaining = 0
        self._head = bytearray()
        #: Pieces of a frame being held (slices of the buffers fed in), joined once it is whole.
        self._held: list[bytes | memoryview] | None = None
        #: Or the one buffer it is read into in place (`reserve`), of the frame's size.
        self._assembly: bytearray | None = None
        self._held_size = 0
        self._held_remaining = 0
        self._held_token: Any = None

    def release(self) -> None:
        """The connection ended: drop what is kept of a frame (a held or half read one)."""
        self._forward_remaining = 0
        self._head = bytearray()
        self._held = self._assembly = self._held_token = None
        self._held_size = self._held_remaining = 0

    @property
    def buffered(self) -> int:
        """Bytes kept back between calls (a partial header or a partial held frame)."""
        holding = self._held is not None or self._assembly is not None
        return len(self._head) + (self._held_size if holding else 0)

    @property
    def at_frame_boundary(self) -> bool:
        return (
            not self._forward_remaining
            and not self._head
            and self._held is None
            and self._assembly is None
        )

    def _frame_size(self, prefix: bytes | memoryview) -> int:
        size = int.from_bytes(prefix[:SIZE_PREFIX], "big", signed=True)
        if size < 0 or size > self._max_frame_size:
            raise FrameTooLarge(
                f"frame size {size} is outside 0..{self._max_frame_size} (the maximum frame size)"
            )
        if size < self._peek_size:
            raise ProtocolError(f"frame of {size} bytes is too short to be a Kafka message")
        return size

    def feed(self, data: bytes) -> list[Forward | Held]:
        """Consume received bytes; returns what to forward and which frames were held, in order."""
        end = len(data)
        size = end - SIZE_PREFIX
        if (
            self._peek_size <= size <= self._max_frame_size
            and not self._forward_remaining
            and not self._head
            and self._held is None
            and self._assembly is None
            and int.from_bytes(data[:SIZE_PREFIX], "big", signed=True) == size
        ):
            # One whole frame in one read, the usual case for requests and small responses.
            token = self._classify(
                memoryview(data)[SIZE_PREFIX : SIZE_PREFIX + self._peek_size], size
            )
            return [Forward(data) if token is None else Held(token, data)]
        out: list[Forward | Held] = []
        view = memoryview(data)
        pos = 0
        run_start = -1  # start of the forwarded run inside `data` not yet emitted

        def flush_run(upto: int) -> None:
            nonlocal run_start
            if run_start >= 0 and upto > run_start:
                out.append(Forward(view[run_start:upto]))
            run_start = -1

        while pos < end:
            if self._forward_remaining:
                take = min(self._forward_remaining, end - pos)
                if run_start < 0:
                    run_start = pos
                pos += take
                self._forward_remaining -= take
                continue
            if self._assembly is not None:
                take = min(self._held_remaining, end - pos)
                self._assembly[self._held_size : self._held_size + take] = view[pos : pos + take]
                pos += take
                out += self.filled(take)
                continue
            if self._held is not None:
                take = min(self._held_remaining, end - pos)
                self._held.append(_kept(view[pos : pos + take]))
                self._held_size += take
                pos += take
                self._held_remaining -= take
                if not self._held_remaining:
                    # One copy of the whole frame, made once it is complete.
                    out.append(Held(self._held_token, b"".join(self._held)))
                    self._held = None
                    self._held_token = None
                continue
            if not self._head and end - pos >= SIZE_PREFIX + self._peek_size:
                # Fast path: the whole identifying prefix is in this buffer.
                size = self._frame_size(view[pos : pos + SIZE_PREFIX])
                start = pos + SIZE_PREFIX
                token = self._classify(view[start : start + self._peek_size], size)
                if token is None:
                    if run_start < 0:
                        run_start = pos
                    self._forward_remaining = SIZE_PREFIX + size
                    continue
                flush_run(pos)
                if end - start >= size:
                    out.append(Held(token, view[pos : start + size]))
                    pos = start + size
                else:
                    self._held = [_kept(view[pos:end])]
                    self._held_size = end - pos
                    self._held_remaining = size - (end - start)
                    self._held_token = token
                    pos = end
                continue
            # Slow path: the identifying prefix straddles buffers; keep it back until complete.
            flush_run(pos)
            need = SIZE_PREFIX + self._peek_size - len(self._head)
            take = min(need, end - pos)
            self._head += view[pos : pos + take]
            pos += take
            if len(self._head) >= SIZE_PREFIX:
                size = self._frame_size(self._head)  # reject a bad size as soon as it is known
            if len(self._head) < SIZE_PREFIX + self._peek_size:
                continue
            head = bytes(self._head)
            self._head.clear()
            token = self._classify(memoryview(head)[SIZE_PREFIX:], size)
            if token is None:
                out.append(Forward(head))
                self._forward_remaining = SIZE_PREFIX + size - len(head)
            else:
                self._held = [head]
                self._held_size = len(head)
                self._held_remaining = size - self._peek_size
                self._held_token = token
                if not self._held_remaining:
                    out.append(Held(token, head))
                    self._held = None
        flush_run(pos)
        return out

    def reserve(self, min_size: int, max_size: int) -> memoryview | None:
        """Where the rest of the frame being held may be read into in place, when at least
        `min_size` of its bytes are still to come and the frame is no larger than `max_size`
        (else None: feed them).

        A large held frame then needs no copy of its own: the owner reads the socket straight
        into the frame (`asyncio.BufferedProtocol`), says how much came with `filled`, and gets
        the frame, once whole, as the bytearray it was read into. The pieces already received
        are copied into it once, here. The frame's whole size is allocated at once, before its
        bytes came: `max_size` keeps a peer that announces a large frame and sends little from
        making the proxy reserve more than that.
        """
        if self._assembly is None:
            if (
                self._held is None
                or self._held_remaining < min_size
                or self._held_size + self._held_remaining > max_size
            ):
                return None
            self._assembly = bytearray(self._held_size + self._held_remaining)
            pos = 0
            for piece in self._held:  # each piece copied once, with no joined copy in between
                self._assembly[pos : pos + len(piece)] = piece
                pos += len(piece)
            self._held = None
        return memoryview(self._assembly)[self._held_size :]

    def filled(self, nbytes: int) -> list[Forward | Held]:
        """`nbytes` were read into the view `reserve` gave: the frame, once whole."""
        if self._assembly is None:
            raise ValueError("no frame is being read in place")
        if not 0 <= nbytes <= self._held_remaining:
            raise ValueError(
                f"{nbytes} bytes cannot have been read into the {self._held_remaining} reserved"
            )
        self._held_size += nbytes
        self._held_remaining -= nbytes
        if self._held_remaining:
            return []
        whole = Held(self._held_token, self._assembly)
        self._assembly = None
        self._held_token = None
        return [whole]


def _kept(piece: memoryview) -> bytes | memoryview:
    """A piece to keep past this call: a slice of an immutable buffer as it is (no copy), a copy
    of a mutable one, which its owner may reuse."""
    return piece if piece.readonly else bytes(piece)


def frame(body: bytes | memoryview) -> bytes:
    """Prefix a frame body with its size."""
    return len(body).to_bytes(SIZE_PREFIX, "big") + bytes(body)
