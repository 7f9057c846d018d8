"""W3C `traceparent` written and read directly: the common case, kept cheap.

Format: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. Parsing is strict and total: any
value that is not a valid traceparent (wrong length, non-hex, all-zero ids, version ff) gives None,
never an exception, because headers come from arbitrary producers.
"""

from __future__ import annotations

import re

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
