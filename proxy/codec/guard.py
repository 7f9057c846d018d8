"""A pre-check of untrusted messages before kio's native reader sees them.

kio's reader reserves memory for an array from the element count on the wire before reading any
element, so a request announcing four billion elements makes it ask for tens of GiB and abort the
whole process. This walk follows the same schema and rejects any array whose count is larger
than the bytes left in the frame (every element takes at least one byte), which no honest client
ever sends. It only measures; decoding stays kio's job. It runs compiled (`_schema_walk.c`, from
a description of each schema made here) when the extension is built, else in Python; both give
the same results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache, partial
from typing import Any

from kio.serial import _introspect as introspect

from . import native
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


# A schema is described once per entity as nested tuples of steps, which both walks follow: the
# compiled twin (`_schema_walk.c`) interprets them, the Python walk turns them into closures.
FIXED, SIZED, ARRAY, ENTITY, NULLABLE = range(5)
#: (FIXED, size) | (SIZED, flexible, width) | (ARRAY, flexible, element) | (ENTITY, entity) |
#: (NULLABLE, entity); in a program for the compiled walk, the entity is its program.
WalkStep = tuple[Any, ...]
#: (flexible, steps over the untagged fields, ((tag, step), ...)).
Description = tuple[int, tuple[WalkStep, ...], tuple[tuple[int, WalkStep], ...]]


def _field_description(field: dataclasses.Field[object], flexible: bool) -> WalkStep:
    kind = introspect.classify_field(field)
    one: WalkStep
    if isinstance(kind, introspect.EntityField | introspect.EntityTupleField):
        nullable = isinstance(kind, introspect.EntityField) and introspect.is_optional(field)
        one = (NULLABLE if nullable else ENTITY, kind.type_)
    else:
        kafka_type = introspect.get_schema_field_type(field)
        fixed = _FIXED_SIZES.get(kafka_type)
        if fixed is not None:
            one = (FIXED, fixed)
        else:
            one = (SIZED, int(flexible), 2 if kafka_type == "string" else 4)
    return (ARRAY, int(flexible), one) if kind.is_array else one


def _merged(steps: list[WalkStep]) -> tuple[WalkStep, ...]:
    """Runs of fixed-size fields become one skip."""
    merged: list[WalkStep] = []
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
def _describe(entity: type) -> Description:
    """The walk over a kio entity: its untagged fields in order, then its tagged ones."""
    flexible = bool(entity.__flexible__)
    plain: list[WalkStep] = []
    tagged: list[tuple[int, WalkStep]] = []
    for field in dataclasses.fields(entity):
        step = _field_description(field, flexible)
        tag = introspect.get_field_tag(field)
        if tag is None:
            plain.append(step)
        else:
            tagged.append((int(tag), step))
    return int(flexible), _merged(plain), tuple(tagged)


# -- the compiled walk: programs ---------------------------------------------------------------


def _program_step(step: WalkStep) -> WalkStep:
    if step[0] in (ENTITY, NULLABLE):
        return (step[0], _program(step[1]))
    if step[0] == ARRAY:
        return (ARRAY, step[1], _program_step(step[2]))
    return step


@cache
def _program(entity: type) -> Description:
    """The description of `entity` with every nested entity replaced by its own program."""
    flexible, plain, tagged = _describe(entity)
    return (
        flexible,
        tuple(_program_step(step) for step in plain),
        tuple((tag, _program_step(step)) for tag, step in tagged),
    )


# -- the Python walk: closures -----------------------------------------------------------------


@cache
def _closure(step: WalkStep) -> _Step:
    kind = step[0]
    if kind == FIXED:
        return _skip_fixed(step[1])
    if kind == SIZED:
        return _skip_sized(bool(step[1]), step[2])
    if kind == ARRAY:
        return _array(_closure(step[2]), bool(step[1]))
    # Nested entities are looked up when walking, not now: they compile on first use.
    walk = partial(_walk_entity, step[1])
    return _nullable(walk) if kind == NULLABLE else walk


@cache
def _entity_parts(entity: type) -> tuple[tuple[_Step, ...], dict[int, _Step], bool]:
    """(steps over the untagged fields in order, tag -> step, flexible) of a kio entity."""
    flexible, plain, tagged = _describe(entity)
    return (
        tuple(_closure(step) for step in plain),
        {tag: _closure(step) for tag, step in tagged},
        bool(flexible),
    )


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


def _walk_entity(entity: type, data: memoryview, pos: int, tags: list[int] | None = None) -> int:
    """Walk one entity; the tags of its own tagged fields are appended to `tags` if given."""
    plain, tagged, flexible = _entity_parts(entity)
    for step in plain:
        pos = step(data, pos)
    return _walk_tags(tagged, data, pos, tags) if flexible else pos


#: Where a walked message ends, and its own tags; None: the walk could not finish.
Walked = tuple[int, list[int]] | None


def walk_python(schema: type, body: bytes | memoryview, offset: int) -> Walked:
    """Walk the message at `offset`: (where it ends, its own tags), or None when the walk cannot
    finish. The reference for the compiled walk."""
    tags: list[int] = []
    try:
        return _walk_entity(schema, memoryview(body), offset, tags), tags
    except (_Incomplete, IndexError):
        return None


def _walk_compiled(schema: type, body: bytes | memoryview, offset: int) -> Walked:
    assert native.compiled is not None
    try:
        return native.compiled.walk_schema(_program(schema), body, offset)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


#: The walk the proxy runs: the compiled one when the extension is built.
walk = _walk_compiled if native.compiled is not None else walk_python


def check_array_counts(schema: type, body: memoryview, offset: int) -> None:
    """Raise ProtocolError if any array in the message announces more elements than can fit."""
    # Truncated or odd input stops the walk: kio's reader then reports it without over-allocating.
    walk(schema, body, offset)


def top_level_tags(schema: type, body: memoryview, offset: int) -> tuple[int, ...] | None:
    """The tags of the message's own tagged fields, checking array counts on the way.

    Produce and Fetch responses carry broker addresses (KIP-951 node endpoints) only there, so an
    empty answer lets the proxy forward such a response without decoding it first. None: the
    walk could not finish or left bytes over, so only a full decode can judge the message.
    """
    walked = walk(schema, body, offset)
    if walked is None or walked[0] != len(body):
        return None
    return tuple(walked[1])
