"""A pre-check of untrusted messages before kio's native reader sees them.

kio's reader reserves memory for an array from the element count on the wire before reading any
element, so a request announcing four billion elements makes it ask for tens of GiB and abort the
whole process. This walk follows the same schema in Python and rejects any array whose count is
larger than the bytes left in the frame (every element takes at least one byte), which no honest
client ever sends. It only measures; decoding stays kio's job.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from functools import cache, partial

from kio.serial import _introspect as introspect

from .errors import ProtocolError

_FIXED_SIZES = {
    "int8": 1, "uint8": 1, "bool": 1, "int16": 2, "uint16": 2, "error_code": 2, "int32": 4,
    "uint32": 4, "timedelta_i32": 4, "int64": 8, "uint64": 8, "float64": 8,
    "timedelta_i64": 8, "datetime_i64": 8, "uuid": 16,
}  # fmt: skip


class _Incomplete(Exception):
    """The walk cannot go on; kio will raise its own ordinary error for this input."""


#: A compiled walk over one part of a message: (data, position) -> position after it.
_Step = Callable[[memoryview, int], int]


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


def _skip_fixed(size: int) -> _Step:
    def skip(data: memoryview, pos: int) -> int:
        pos += size
        if pos > len(data):
            raise _Incomplete
        return pos

    return skip


# The two steps below read a length the same way (a varint of length + 1 when flexible, else a
# signed integer, -1 for null). It is written out in each, not shared: they run for every
# string and array of every decoded message, and a call more measured ~8% of the walk.


def _skip_sized(flexible: bool, width: int) -> _Step:
    """A string or bytes field: its length, then that many bytes."""

    def skip(data: memoryview, pos: int) -> int:
        if flexible:
            length, pos = _uvarint(data, pos)
            length -= 1
        else:
            length, pos = _int(data, pos, width), pos + width
        if length > 0:
            pos += length
            if pos > len(data):
                raise _Incomplete
        return pos

    return skip


def _array(element: _Step, flexible: bool) -> _Step:
    def walk(data: memoryview, pos: int) -> int:
        if flexible:
            count, pos = _uvarint(data, pos)
            count -= 1
        else:
            count, pos = _int(data, pos, 4), pos + 4
        if count > len(data) - pos:
            raise ProtocolError(
                f"an array announces {count} elements with {len(data) - pos} bytes left"
            )
        for _ in range(count):
            pos = element(data, pos)
        return pos

    return walk


def _nullable(entity: _Step) -> _Step:
    def walk(data: memoryview, pos: int) -> int:
        if _int(data, pos, 1) == -1:
            return pos + 1
        return entity(data, pos + 1)

    return walk


def _field_step(field: dataclasses.Field[object], flexible: bool) -> tuple[int | None, _Step]:
    """The step over one field, with its size when that is fixed (a single primitive)."""
    kind = introspect.classify_field(field)
    fixed = None
    if isinstance(kind, introspect.EntityField | introspect.EntityTupleField):
        one = _entity_step(kind.type_)
        if isinstance(kind, introspect.EntityField) and introspect.is_optional(field):
            one = _nullable(one)
    else:
        kafka_type = introspect.get_schema_field_type(field)
        fixed = _FIXED_SIZES.get(kafka_type)
        if fixed is not None:
            one = _skip_fixed(fixed)
        else:
            one = _skip_sized(flexible, 2 if kafka_type == "string" else 4)
    if kind.is_array:
        return None, _array(one, flexible)
    return fixed, one


def _merged(steps: list[tuple[int | None, _Step]]) -> tuple[_Step, ...]:
    """Runs of fixed-size fields become one skip."""
    merged: list[_Step] = []
    run = 0
    for fixed, step in steps:
        if fixed is not None:
            run += fixed
            continue
        if run:
            merged.append(_skip_fixed(run))
            run = 0
        merged.append(step)
    if run:
        merged.append(_skip_fixed(run))
    return tuple(merged)


@cache
def _entity_parts(entity: type) -> tuple[tuple[_Step, ...], dict[int, _Step], bool]:
    """(steps over the untagged fields in order, tag -> step, flexible) of a kio entity."""
    flexible = bool(entity.__flexible__)
    plain: list[tuple[int | None, _Step]] = []
    tagged: dict[int, _Step] = {}
    for field in dataclasses.fields(entity):
        fixed, step = _field_step(field, flexible)
        tag = introspect.get_field_tag(field)
        if tag is None:
            plain.append((fixed, step))
        else:
            tagged[int(tag)] = step
    return _merged(plain), tagged, flexible


def _walk_tags(tagged: dict[int, _Step], data: memoryview, pos: int, tags: list[int] | None) -> int:
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        tag, pos = _uvarint(data, pos)
        _size, pos = _uvarint(data, pos)
        step = tagged.get(tag)
        if step is None:
            raise _Incomplete
        pos = step(data, pos)
        if tags is not None:
            tags.append(tag)
    return pos


@cache
def _entity_step(entity: type) -> _Step:
    # Its parts are looked up when walking, not now: nested entities compile on first use.
    return partial(_walk_entity, entity)


def _walk_entity(entity: type, data: memoryview, pos: int, tags: list[int] | None = None) -> int:
    """Walk one entity; the tags of its own tagged fields are appended to `tags` if given."""
    plain, tagged, flexible = _entity_parts(entity)
    for step in plain:
        pos = step(data, pos)
    return _walk_tags(tagged, data, pos, tags) if flexible else pos


def check_array_counts(schema: type, body: memoryview, offset: int) -> None:
    """Raise ProtocolError if any array in the message announces more elements than can fit."""
    # Truncated or odd input stops the walk: kio's reader then reports it without over-allocating.
    with contextlib.suppress(_Incomplete, IndexError):
        _walk_entity(schema, body, offset)


def top_level_tags(schema: type, body: memoryview, offset: int) -> tuple[int, ...] | None:
    """The tags of the message's own tagged fields, checking array counts on the way.

    Produce and Fetch responses carry broker addresses (KIP-951 node endpoints) only there, so an
    empty answer lets the proxy forward such a response without decoding it first. None: the
    walk could not finish or left bytes over, so only a full decode can judge the message.
    """
    tags: list[int] = []
    try:
        end = _walk_entity(schema, body, offset, tags)
    except (_Incomplete, IndexError):
        return None
    return tuple(tags) if end == len(body) else None
