"""W3C `traceparent` written and read directly: the common case, kept cheap.

Format: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. Parsing is strict and total: any
value that is not a valid traceparent (wrong length, non-hex, all-zero ids, version ff) gives None,
never an exception, because headers come from arbitrary producers.
"""

from __future__ import annotations

import random
import re

from ..codec import native

TRACEPARENT = "traceparent"
_PATTERN = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MAX_LENGTH = 512  # future versions may append fields; anything longer is junk


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}".encode()


def parse_traceparent(value: bytes | None) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a valid traceparent header value, else None."""
    if value is None or len(value) > _MAX_LENGTH:
        return None
    match = _PATTERN.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == b"ff" or (version == b"00" and match.end() != len(value.strip())):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & 1)


#: Length of a version-00 value: "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex flags.
VALUE_LENGTH = 55
#: A `traceparent` record header up to its value, in wire form: zig-zag varint 11, the key,
#: zig-zag varint 55 (VALUE_LENGTH).
WIRE_PREFIX = b"\x16traceparent\x6e"
#: The header key as records hold it (the prefix less its two length varints).
WIRE_KEY = WIRE_PREFIX[1:-1]
#: Lower-case hex digits with the sampled bit (01) set: the last character of a sampled value.
SAMPLED_FLAG_CHARS = frozenset(b"13579bdf")
_WIRE_START = WIRE_PREFIX + b"00-"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def new_root_traceparents(
    count: int, threshold: bytes | None
) -> tuple[list[bytes], list[tuple[int, int, int]]]:
    """``count`` new root contexts as whole traceparent record headers (wire form), and
    (index, trace id, span id) of the sampled ones.

    The hot path of producing at low sampling ratios: ids come from one random draw per batch
    (24 bytes a context), sampling compares the low 16 hex digits of the trace id with
    ``threshold`` (see `Sampler.root_hex_threshold`; None samples all), and only sampled ids
    become integers. The compiled twin (`_speedups.c`) does the formatting when built.
    """
    drawn = random.randbytes(24 * count)
    if native.compiled is not None:
        made = native.compiled.root_traceparents(drawn, threshold)
        if made is not None:  # None: an all-zero id, which the Python twin draws again
            return made
    return root_traceparents_python(drawn, threshold)


def root_traceparents_python(
    drawn: bytes, threshold: bytes | None
) -> tuple[list[bytes], list[tuple[int, int, int]]]:
    """`new_root_traceparents` from the random bytes already drawn."""
    digits = drawn.hex().encode()
    headers: list[bytes] = []
    sampled: list[tuple[int, int, int]] = []
    for index in range(len(drawn) // 24):
        at = 48 * index
        trace_hex = digits[at : at + 32]
        span_hex = digits[at + 32 : at + 48]
        if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:  # invalid ids: draw again
            trace_hex = b"%032x" % (random.getrandbits(128) | 1)
            span_hex = b"%016x" % (random.getrandbits(64) | 1)
        if threshold is None or trace_hex[16:] < threshold:
            sampled.append((index, int(trace_hex, 16), int(span_hex, 16)))
            headers.append(b"".join((_WIRE_START, trace_hex, b"-", span_hex, b"-01")))
        else:
            headers.append(b"".join((_WIRE_START, trace_hex, b"-", span_hex, b"-00")))
    return headers, sampled
