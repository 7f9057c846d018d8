"""A walk over untrusted messages along kio's schemas, without decoding them.

kio's reader reserves memory for an array from the element count on the wire before reading any
element, so a request announcing four billion elements makes it ask for tens of GiB and abort the
whole process. This walk follows the same schema and rejects any array whose count is larger
than the bytes left in the frame (every element takes at least one byte), which no honest client
ever sends. On the way it tells where the message ends, which top-level tagged fields it carries,
and, when asked, where chosen fields lie, so the proxy can find what it needs without a decode.

Each schema is compiled once into a *program* of nested tuples (the layout comes from kio's
dataclasses, generated from Kafka's JSON specs). The compiled twin (`_schema_walk.c`, built with
the package) interprets it; `walk_python` is the reference and the fallback without a compiler.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any

from kio.serial import _introspect as introspect

from . import native
from .errors import ProtocolError
from .headers import response_header_size

_FIXED_SIZES = {
    "int8": 1, "uint8": 1, "bool": 1, "int16": 2, "uint16": 2, "error_code": 2, "int32": 4,
    "uint32": 4, "timedelta_i32": 4, "int64": 8, "uint64": 8, "float64": 8,
    "timedelta_i64": 8, "datetime_i64": 8, "uuid": 16,
}  # fmt: skip

# The steps of a program (see _schema_walk.c, which interprets the same tuples):
#   (FIXED, size)                    fixed-size fields: skip `size` bytes
#   (SIZED, flexible, width)         a string or bytes: its length (varint of length + 1 when
#                                    flexible, else a signed int of `width` bytes; -1 is null),
#                                    then the bytes
#   (ARRAY, flexible, element)       a count (varint of count + 1, or int32), then the elements
#   (ENTITY, program)                an embedded entity
#   (NULLABLE, program)              int8 -1 for null, else the entity
#   (CAPTURE, id, step)              the step, and (id, start, value start, end) of what it
#                                    crossed recorded; a string's or bytes' value starts after
#                                    its length (-1: null), any other value at the start
FIXED, SIZED, ARRAY, ENTITY, NULLABLE, CAPTURE = range(6)
Step = tuple[Any, ...]
#: (flexible, steps over the untagged fields, ((tag, step), ...) for the tagged ones).
Program = tuple[int, tuple[Step, ...], tuple[tuple[int, Step], ...]]
#: Where a walked message ends, and its own tags; None when the walk could not finish.
Walked = tuple[int, list[int]] | None
#: (capture id, start, value start, end) of each captured field crossed, in wire order.
Captures = list[tuple[int, int, int, int]]


class _Incomplete(Exception):
    """The walk cannot go on; kio will raise its own ordinary error for this input."""


# -- programs -----------------------------------------------------------------------------------


def _field_step(field: dataclasses.Field[object], flexible: bool, path: str, capture: Any) -> Step:
    kind = introspect.classify_field(field)
    one: Step
    if isinstance(kind, introspect.EntityField | introspect.EntityTupleField):
        nullable = isinstance(kind, introspect.EntityField) and introspect.is_optional(field)
        one = (NULLABLE if nullable else ENTITY, _program(kind.type_, capture, path + "."))
    else:
        kafka_type = introspect.get_schema_field_type(field)
        fixed = _FIXED_SIZES.get(kafka_type)
        if fixed is not None:
            one = (FIXED, fixed)
        else:
            one = (SIZED, int(flexible), 2 if kafka_type == "string" else 4)
    return (ARRAY, int(flexible), one) if kind.is_array else one


def _merged(steps: list[Step]) -> tuple[Step, ...]:
    """Runs of fixed-size fields become one skip."""
    merged: list[Step] = []
    run = 0
    for step in steps:
        if step[0] == FIXED:
            run += step[1]
            continue
        if run:
            merged.append((FIXED, run))
            run = 0
        merged.append(step)
    if run:
        merged.append((FIXED, run))
    return tuple(merged)


@cache
def _program(entity: type, capture: tuple[tuple[str, int], ...] = (), path: str = "") -> Program:
    """The walk over a kio entity. `capture` names fields by their dotted path from the message
    (`topic_data.partition_data.records`) with the id to record them under."""
    wanted = dict(capture)
    flexible = bool(entity.__flexible__)
    plain: list[Step] = []
    tagged: list[tuple[int, Step]] = []
    for field in dataclasses.fields(entity):
        field_path = path + field.name
        step = _field_step(field, flexible, field_path, capture)
        if field_path in wanted:
            step = (CAPTURE, wanted[field_path], step)
        tag = introspect.get_field_tag(field)
        if tag is None:
            plain.append(step)
        else:
            tagged.append((int(tag), step))
    return int(flexible), _merged(plain), tuple(tagged)


def program(schema: type, capture: Mapping[str, int] | None = None) -> Program:
    """The (cached) program walking `schema`, recording the fields named in `capture`."""
    if not capture:
        return _program(schema)
    return _program(schema, tuple(sorted(capture.items())))


# -- the Python walk ----------------------------------------------------------------------------


def _uvarint(data: memoryview, pos: int) -> tuple[int, int]:
    byte = data[pos]  # past the end: IndexError, which the walk treats as incomplete
    if byte < 0x80:  # most varints here are counts and lengths below 128
        return byte, pos + 1
    value = byte & 0x7F
    for count in range(1, 5):
        byte = data[pos + count]
        value |= (byte & 0x7F) << (7 * count)
        if not byte & 0x80:
            return value, pos + count + 1
    raise _Incomplete


def _int(data: memoryview, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise _Incomplete
    return int.from_bytes(data[pos : pos + size], "big", signed=True)


def _length(data: memoryview, pos: int, flexible: int, width: int) -> tuple[int, int]:
    """A length or count: varint of value + 1 when flexible, else a signed int; -1 is null."""
    if flexible:
        value, pos = _uvarint(data, pos)
        return value - 1, pos
    return _int(data, pos, width), pos + width


def _step(step: Step, data: memoryview, pos: int, captures: Captures | None) -> int:
    kind = step[0]
    if kind == FIXED:
        pos += step[1]
    elif kind == SIZED:
        length, pos = _length(data, pos, step[1], step[2])
        if length > 0:
            pos += length
        elif length < -1:
            raise _Incomplete  # kio refuses it with its own error
    elif kind == ARRAY:
        count, pos = _length(data, pos, step[1], 4)
        if count < -1:
            raise _Incomplete
        if count > len(data) - pos:
            raise ProtocolError(
                f"an array announces {count} elements with {len(data) - pos} bytes left"
            )
        element = step[2]
        for _ in range(count):
            pos = _step(element, data, pos, captures)
    elif kind == ENTITY:
        pos = _walk_program(step[1], data, pos, None, captures)
    elif kind == NULLABLE:
        if _int(data, pos, 1) != -1:
            return _walk_program(step[1], data, pos + 1, None, captures)
        pos += 1
    else:
        inner = step[2]
        end = _step(inner, data, pos, captures)
        if captures is not None:
            value_start = pos
            if inner[0] == SIZED:
                length, value_start = _length(data, pos, inner[1], inner[2])
                value_start = -1 if length < 0 else value_start
            captures.append((step[1], pos, value_start, end))
        pos = end
    if pos > len(data):
        raise _Incomplete
    return pos


def _walk_program(
    program: Program, data: memoryview, pos: int, tags: list[int] | None, captures: Captures | None
) -> int:
    flexible, plain, tagged = program
    for step in plain:
        pos = _step(step, data, pos, captures)
    if not flexible:
        return pos
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        tag, pos = _uvarint(data, pos)
        _size, pos = _uvarint(data, pos)
        step = next((step for known, step in tagged if known == tag), None)
        if step is None:
            raise _Incomplete
        pos = _step(step, data, pos, captures)
        if tags is not None:
            tags.append(tag)
    return pos


def walk_python(
    program: Program, body: bytes | memoryview, offset: int, captures: Captures | None = None
) -> Walked:
    """Walk the message at `offset`: (where it ends, its own tags), or None when the walk cannot
    finish; captured fields are appended to `captures`. The reference for the compiled walk."""
    if not 0 <= offset <= len(body):
        return None
    tags: list[int] = []
    try:
        return _walk_program(program, memoryview(body), offset, tags, captures), tags
    except (_Incomplete, IndexError):
        return None


#: The walk the proxy runs: the compiled twin when the extension is built.
walk = native.twin("walk_schema", walk_python, error=ProtocolError)


def walk_response(
    program: Program, body: memoryview, api_key: int, api_version: int
) -> Captures | None:
    """The captures of a whole response body (after its header), or None when the header or
    the walk cannot be read, or the walk leaves bytes over: kio's decode then says why."""
    captures: Captures = []
    try:
        header_size = response_header_size(body, api_key, api_version)
        walked = walk(program, body, header_size, captures)
    except ProtocolError:
        return None
    if walked is None or walked[0] != len(body):
        return None
    return captures


@lru_cache(maxsize=1024)
def captured_uuid(raw: bytes) -> uuid.UUID | None:
    """A captured uuid field's value as kio reads it (all zeros: None). Cached: the same few
    topic ids come in every Produce request and Fetch response."""
    return uuid.UUID(bytes=raw) if any(raw) else None


def captured_text(body: memoryview, value_start: int, end: int) -> str | None:
    """A captured string field's value (None: null); UnicodeDecodeError for bytes that are not
    UTF-8, which kio's decode refuses."""
    return None if value_start < 0 else str(body[value_start:end], "utf-8")


def check_array_counts(schema: type, body: bytes | memoryview, offset: int) -> None:
    """Raise ProtocolError if any array in the message announces more elements than can fit."""
    # Truncated or odd input stops the walk: kio's reader then reports it without over-allocating.
    walk(program(schema), body, offset)


def top_level_tags(schema: type, body: bytes | memoryview, offset: int) -> tuple[int, ...] | None:
    """The tags of the message's own tagged fields, checking array counts on the way.

    Produce and Fetch responses carry broker addresses (KIP-951 node endpoints) only there, so an
    empty answer lets the proxy forward such a response without decoding it first. None: the
    walk could not finish or left bytes over, so only a full decode can judge the message.
    """
    walked = walk(program(schema), body, offset)
    if walked is None or walked[0] != len(body):
        return None
    return tuple(walked[1])
