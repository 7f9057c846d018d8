"""Splitting both directions of a connection into frames and pairing responses with requests.

The per-frame work every relayed byte pays, with no I/O: find the frames, remember each request
(api key, version, correlation id, when it came) until its response, count requests, bytes and
latency per API, and hand the owner only the frames it asked to see. Everything else comes out
as slices of the buffers fed in, never copied.

What the owner asks to see is a `HoldPolicy`: per API key, the versions of requests and of
responses to hand over whole. Produce requests it does not want are still read here for their
acks (an acks=0 request gets no response, so it must not wait for one); one in a version outside
`produce_acks`, or that this module cannot read for sure, is handed over, and the owner's full
parse decides.

With a *produce lane* set (`set_produce_lane`: tracing's `inject_request_roots`), Produce
requests of the lane's versions are handed to it instead, once their acks are read: a request
it rebuilds with no sampled record goes out at once, and only the others reach the owner, with
the lane's result so the owner builds their spans without drawing again.

With a *fetch lane* set (`set_fetch_lane`: tracing's `skim_fetch_frame`), a Fetch response the
owner would be handed with a clean walk is given to the lane first: one it takes (no record to
read) goes out at once, and the owner only finds the lane's result in `fetch_skims`.

`_speedups.c` has the compiled twin (`PairingCore`); `pairing_core` picks it when built. Both
raise the same errors with the same messages and produce the same pieces for the same reads.
"""

from __future__ import annotations

import bisect
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import native
from .errors import FrameTooLarge, ProtocolError
from .framing import SIZE_PREFIX, Forward, FrameScanner, Held
from .guard import Program, walk
from .headers import REQUEST_PEEK_SIZE, RESPONSE_PEEK_SIZE, peek_correlation_id, peek_request
from .produce import plain_header_size, produce_acks

PRODUCE = 0
FETCH = 1
#: Produce requests use header v2 (flexible) from this version on.
PRODUCE_FLEXIBLE_FROM = 9
#: Produce requests carry a transactional id (before acks) from this version on.
PRODUCE_TRANSACTIONAL_ID_FROM = 3
#: Where API keys Kafka does not define are counted (the owner labels it "other").
OTHER_API = -1
#: A policy names API keys below this (the compiled twin keeps a table of them).
API_SLOTS = 256

VersionRange = tuple[int, int]


@dataclass(frozen=True)
class HoldPolicy:
    """Which frames the owner wants to see whole; everything else is forwarded as it came."""

    #: API key -> versions of requests to hand over.
    requests: dict[int, VersionRange] = field(default_factory=dict)
    #: API key -> versions of responses to hand over (whatever their request's state).
    responses: dict[int, VersionRange] = field(default_factory=dict)
    #: (API key, version) -> (the guard's program for the response, whether a response that
    #: walks to its end with no tagged fields of its own is forwarded here). Such tagged fields
    #: are where Produce and Fetch responses carry broker addresses (KIP-951 node endpoints).
    #: A response with a program is walked before it goes on: one the owner takes anyway
    #: (attached state, or named in `responses`) is handed over with the walk's verdict, so the
    #: owner can forward it at once; with forwarding on, any other is forwarded when clean and
    #: handed over when not.
    response_walks: dict[tuple[int, int], tuple[Program, bool]] = field(default_factory=dict)
    #: Produce versions whose acks this module reads when the owner does not take the request.
    produce_acks: VersionRange = (0, -1)
    #: API keys Kafka defines; the others are counted together under OTHER_API.
    known_api_keys: frozenset[int] = frozenset()
    #: Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied.
    latency_buckets: tuple[float, ...] = ()


#: A request the owner asked to see: (seq, api key, version, correlation id, frame, what the
#: produce lane made of it or None); `seq` names it in `attach` and `forget`. A plain tuple:
#: forwarded pieces are never tuples.
HeldRequest = tuple[int, int, int, int, "bytes | memoryview", Any]
#: The produce lane: (frame, version) -> None (declined) or (frame to send, records passed on
#: unsampled, transactional id, partitions with sampled records); see tracing/roots.py.
ProduceLane = Callable[["bytes | memoryview", int], Any]
#: The fetch lane: (frame, version) -> None (hand the response over) or what the owner keeps of
#: it, the response then going out as it came; see tracing/skim.py's `skim_fetch_frame`.
FetchLane = Callable[["bytes | memoryview", int], Any]
#: How a request frame is taken once whole: handed over, read for its acks, or given to the lane.
TAKE_HOLD, TAKE_ACKS, TAKE_LANE = range(3)
#: A response the owner asked to see: (api key, version, correlation id, attached state or None,
#: frame, the walk's verdict: True when it has no tagged fields of its own, False when it has or
#: the walk could not tell, None when it was not walked).
HeldResponse = tuple[int, int, int, Any, "bytes | memoryview", "bool | None"]

#: Per API (or OTHER_API) since the last `take_stats`: requests, request bytes, response bytes,
#: latency count per bucket (+Inf last), latency sum in seconds.
ApiStats = tuple[int, int, int, list[int], float]


class _Pending:
    __slots__ = ("api_key", "api_version", "correlation_id", "expects", "received_at", "state")

    def __init__(self, correlation_id: int, api_key: int, api_version: int, at: float) -> None:
        self.correlation_id = correlation_id
        self.api_key = api_key
        self.api_version = api_version
        self.received_at = at
        self.expects = True
        self.state: Any = None


class _Counts:
    __slots__ = ("latency", "latency_sum", "request_bytes", "requests", "response_bytes")

    def __init__(self, buckets: int) -> None:
        self.requests = self.request_bytes = self.response_bytes = 0
        self.latency = [0] * buckets
        self.latency_sum = 0.0


_INT16 = struct.Struct(">h")


class PairingCorePython:
    """Frames and request/response pairing of one connection (the reference twin)."""

    def __init__(
        self,
        policy: HoldPolicy,
        max_frame_size: int,
        errors: tuple[type[Exception], type[Exception]] = (ProtocolError, FrameTooLarge),
    ) -> None:
        _check_api_keys(policy)
        self._policy = policy
        self._hold_requests = dict(policy.requests)
        self._hold_responses = dict(policy.responses)
        self._walks = dict(policy.response_walks)
        self._buckets = policy.latency_buckets
        self._pending: deque[_Pending] = deque()
        self._first_seq = 0  # seq of self._pending[0]
        self._expecting = 0
        self._counts: dict[int, _Counts] = {}
        self._lane: ProduceLane | None = None
        self._lane_versions: VersionRange = (1, 0)
        self._lane_rewritten = self._lane_records = 0
        self._fetch_lane: FetchLane | None = None
        self._fetch_lane_versions: VersionRange = (1, 0)
        self._fetch_lane_max_size = 0
        #: What the fetch lane made of the responses it forwarded, oldest first, as (where the
        #: response is in what its feed gave out, the lane's result); the owner empties it.
        self.fetch_skims: list[tuple[int, Any]] = []
        self._requests = FrameScanner(
            peek_size=REQUEST_PEEK_SIZE, max_frame_size=max_frame_size, classify=self._request
        )
        self._responses = FrameScanner(
            peek_size=RESPONSE_PEEK_SIZE, max_frame_size=max_frame_size, classify=self._response
        )

    @property
    def in_flight(self) -> int:
        """Requests that will get a response and have not yet."""
        return self._expecting

    def hold_requests(self, api_key: int, versions: VersionRange | None) -> None:
        """Change which requests of one API are handed over (None: none of them)."""
        if versions is None:
            self._hold_requests.pop(api_key, None)
        else:
            self._hold_requests[api_key] = versions

    def set_produce_lane(self, lane: ProduceLane | None, versions: VersionRange) -> None:
        """Run Produce requests of these versions through `lane` (None: no lane)."""
        self._lane = lane
        self._lane_versions = versions

    def set_fetch_lane(self, lane: FetchLane | None, versions: VersionRange, max_size: int) -> None:
        """Run Fetch responses of these versions, up to `max_size` bytes after their size
        prefix, through `lane` (None: no lane) when they would be handed over with a clean walk
        and no attached state: one the lane takes goes out as it came, and its result is
        appended to `fetch_skims` instead (with where it is in what the feed gives out, so the
        owner keeps the responses' order)."""
        self._fetch_lane = lane
        self._fetch_lane_versions = versions
        self._fetch_lane_max_size = max_size

    def take_lane_counts(self) -> tuple[int, int]:
        """Requests the lane rebuilt, and records it passed on unsampled, since the last call."""
        taken = (self._lane_rewritten, self._lane_records)
        self._lane_rewritten = self._lane_records = 0
        return taken

    def release(self) -> None:
        """The connection ended: drop any frame being held or read in place."""
        self._requests.release()
        self._responses.release()

    def attach(self, seq: int, state: Any) -> None:
        """Keep `state` with a handed-over request; its response is handed over with it."""
        self._pending[seq - self._first_seq].state = state

    def forget(self, seq: int) -> None:
        """A handed-over request gets no response (acks=0)."""
        pending = self._pending[seq - self._first_seq]
        if pending.expects:
            pending.expects = False
            self._expecting -= 1

    def take_stats(self) -> list[tuple[int, ApiStats]]:
        """The counts since the last call, per API key (OTHER_API for unknown keys)."""
        taken = [
            (key, (c.requests, c.request_bytes, c.response_bytes, c.latency, c.latency_sum))
            for key, c in self._counts.items()
        ]
        self._counts = {}
        return taken

    def _count(self, api_key: int) -> _Counts:
        slot = api_key if api_key in self._policy.known_api_keys else OTHER_API
        counts = self._counts.get(slot)
        if counts is None:
            counts = self._counts[slot] = _Counts(len(self._buckets) + 1)
        return counts

    # -- requests --------------------------------------------------------------------------

    def from_client(self, data: bytes) -> tuple[list[Any], int]:
        """What to forward (bytes or views) and held requests (`HeldRequest`), in stream
        order, and how many of the items are held requests."""
        return self._requests_out(self._requests.feed(data))

    def request_buffer(self, min_size: int, max_size: int) -> memoryview | None:
        """Where the rest of a request being held may be read into in place, when at least
        `min_size` of its bytes are still to come and it is no larger than `max_size`; None
        otherwise (`FrameScanner.reserve`)."""
        return self._requests.reserve(min_size, max_size)

    def request_filled(self, nbytes: int) -> tuple[list[Any], int]:
        """`nbytes` were read into the request buffer: `from_client`'s answer for them."""
        return self._requests_out(self._requests.filled(nbytes))

    def _requests_out(self, pieces: list[Forward | Held]) -> tuple[list[Any], int]:
        out: list[Any] = []
        held = 0
        for piece in pieces:
            if type(piece) is Forward:
                out.append(piece.data)
                continue
            seq, take = piece.token
            if seq < self._first_seq:
                raise ProtocolError("a response arrived before its request was sent whole")
            pending = self._pending[seq - self._first_seq]
            lane_result = None
            if take != TAKE_HOLD:
                acks = read_produce_acks(memoryview(piece.frame)[4:], pending.api_version)
                if acks is not None and take == TAKE_LANE:
                    sent, lane_result = self._take_by_lane(seq, acks, piece.frame)
                    if sent is not None:
                        out.append(sent)
                        continue
                elif acks is not None:
                    if acks == 0:
                        self.forget(seq)
                    out.append(piece.frame)
                    continue
            out.append(
                (
                    seq,
                    pending.api_key,
                    pending.api_version,
                    pending.correlation_id,
                    piece.frame,
                    lane_result,
                )
            )
            held += 1
        return out, held

    def _take_by_lane(
        self, seq: int, acks: int, frame: bytes | memoryview
    ) -> tuple[bytes | memoryview | None, Any]:
        """(the frame to send, None) when the lane rebuilt the request with no sampled record;
        else (None, what the owner gets with the request: the lane's result, or None when the
        lane declined)."""
        if self._lane is None:  # removed while the frame came in: the owner judges it
            return None, None
        pending = self._pending[seq - self._first_seq]
        result = self._lane(frame, pending.api_version)
        if result is None:
            return None, None
        if (
            type(result) is not tuple
            or len(result) != 4
            or type(result[0]) not in (bytes, bytearray, memoryview)
            or type(result[3]) is not list
            or type(result[1]) is not int
            or not 0 <= result[1] < 1 << 63
        ):
            raise TypeError(
                "the produce lane must return None or (frame, records >= 0, transactional id, list)"
            )
        sent, records, _, sampled = result
        if sampled:
            return None, result
        if acks == 0:
            self.forget(seq)
        self._lane_records += records
        self._lane_rewritten += sent is not frame
        return sent, None

    def _request(self, peek: memoryview, size: int) -> Any:
        api_key, api_version, correlation_id = peek_request(peek)
        seq = self._first_seq + len(self._pending)
        self._pending.append(_Pending(correlation_id, api_key, api_version, time.monotonic()))
        self._expecting += 1
        counts = self._count(api_key)
        counts.requests += 1
        counts.request_bytes += size + 4
        if api_key == PRODUCE and self._lane is not None:
            low, high = self._lane_versions
            if low <= api_version <= high:
                return (seq, TAKE_LANE)
        versions = self._hold_requests.get(api_key)
        if versions is not None and versions[0] <= api_version <= versions[1]:
            return (seq, TAKE_HOLD)
        if api_key == PRODUCE:
            # Read here for its acks, or handed over in a version this module cannot read.
            low, high = self._policy.produce_acks
            return (seq, TAKE_ACKS if low <= api_version <= high else TAKE_HOLD)
        return None

    # -- responses -------------------------------------------------------------------------

    def from_server(self, data: bytes) -> tuple[list[Any], int]:
        """What to forward and held responses (`HeldResponse`), in stream order, and how many
        of the items are held responses."""
        return self._responses_out(self._responses.feed(data))

    def response_buffer(self, min_size: int, max_size: int) -> memoryview | None:
        """Where the rest of a response being held may be read into in place, when at least
        `min_size` of its bytes are still to come and it is no larger than `max_size`; None
        otherwise (`FrameScanner.reserve`)."""
        return self._responses.reserve(min_size, max_size)

    def response_filled(self, nbytes: int) -> tuple[list[Any], int]:
        """`nbytes` were read into the response buffer: `from_server`'s answer for them."""
        return self._responses_out(self._responses.filled(nbytes))

    def _responses_out(self, pieces: list[Forward | Held]) -> tuple[list[Any], int]:
        out: list[Any] = []
        held = 0
        for piece in pieces:
            if type(piece) is Forward:
                out.append(piece.data)
                continue
            key, version, correlation_id, state, program, handed_over = piece.token
            untagged = None if program is None else _untagged(program, piece.frame)
            if untagged and not handed_over:
                out.append(piece.frame)
                continue
            if untagged and state is None and self._fetch_lane_takes(key, version, piece, len(out)):
                out.append(piece.frame)
                continue
            out.append((key, version, correlation_id, state, piece.frame, untagged))
            held += 1
        return out, held

    def _fetch_lane_takes(self, key: int, version: int, piece: Held, position: int) -> bool:
        """Whether the fetch lane took this response, to go out at `position` (its result kept
        in `fetch_skims`)."""
        if self._fetch_lane is None or key != FETCH:
            return False
        low, high = self._fetch_lane_versions
        if not low <= version <= high or len(piece.frame) - SIZE_PREFIX > self._fetch_lane_max_size:
            return False
        result = self._fetch_lane(piece.frame, version)
        if result is None:
            return False
        self.fetch_skims.append((position, result))
        return True

    def _response(self, peek: memoryview, size: int) -> Any:
        correlation_id = peek_correlation_id(peek)
        pending = self._pending
        while pending and not pending[0].expects:
            pending.popleft()
            self._first_seq += 1
        if not pending:
            raise ProtocolError(f"response {correlation_id} arrived with no request outstanding")
        entry = pending.popleft()
        self._first_seq += 1
        self._expecting -= 1
        if entry.correlation_id != correlation_id:
            raise ProtocolError(
                f"response {correlation_id} does not answer the oldest request "
                f"{entry.correlation_id} (api key {entry.api_key})"
            )
        latency = time.monotonic() - entry.received_at
        counts = self._count(entry.api_key)
        counts.latency[bisect.bisect_left(self._buckets, latency)] += 1
        counts.latency_sum += latency
        counts.response_bytes += size + 4
        key, version = entry.api_key, entry.api_version
        versions = self._hold_responses.get(key)
        handed_over = entry.state is not None or (
            versions is not None and versions[0] <= version <= versions[1]
        )
        program, forwarding = self._walks.get((key, version), (None, False))
        if handed_over or (program is not None and forwarding):
            return (key, version, entry.correlation_id, entry.state, program, handed_over)
        return None


def _check_api_keys(policy: HoldPolicy) -> None:
    """API keys the policy names must fit the compiled twin's tables (Kafka's are below 100)."""
    keys = [*policy.requests, *policy.responses, *(key for key, _ in policy.response_walks)]
    for key in (*keys, *policy.known_api_keys):
        if not 0 <= key < API_SLOTS:
            raise ValueError(f"api key {key} is outside 0..{API_SLOTS - 1}")


def _untagged(program: Program, frame: bytes | memoryview) -> bool:
    """Whether a response walks to its end without tagged fields of its own; anything unusual
    (tagged header fields, a walk that fails or stops short) says no, and the owner's own walk
    and decode judge it. A flexible response (as its program says) has a header of v1."""
    body = memoryview(frame)[4:]
    offset = 4
    if program[0]:
        if len(body) < 5 or body[4] != 0:
            return False
        offset = 5
    try:
        walked = walk(program, body, offset)
    except ProtocolError:
        return False
    return walked is not None and walked[0] == len(body) and not walked[1]


def read_produce_acks(body: memoryview, api_version: int) -> int | None:
    """The acks of a Produce request body (header included), or None when anything about it
    is unusual (a client id that is not plain ASCII, tagged header fields, a cut body): the
    owner's full parse then judges it, with its own error messages."""
    offset = plain_header_size(body, api_version)
    if offset is None:
        return None  # a client id that is not plain ASCII, or tagged header fields
    if api_version >= PRODUCE_FLEXIBLE_FROM and offset < len(body) and body[offset] & 0x80:
        return None  # a transactional id of 127 bytes or more: left to the full parse
    if api_version < PRODUCE_TRANSACTIONAL_ID_FROM:  # acks come first
        return int(_INT16.unpack_from(body, offset)[0]) if offset + 2 <= len(body) else None
    try:
        return produce_acks(body, offset, api_version)  # after the transactional id
    except ProtocolError:
        return None  # cut short


def pairing_core(
    policy: HoldPolicy,
    max_frame_size: int,
    errors: tuple[type[Exception], type[Exception]] = (ProtocolError, FrameTooLarge),
) -> Any:
    """The compiled `PairingCore` when the extension is built, else the Python twin."""
    if native.compiled is not None:
        return native.compiled.PairingCore(policy, max_frame_size, errors)
    return PairingCorePython(policy, max_frame_size, errors)
