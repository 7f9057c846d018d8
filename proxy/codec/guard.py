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
from functools import cache

from kio.serial import _introspect as introspect

from .errors import ProtocolError

_FIXED_SIZES = {
    "int8": 1, "uint8": 1, "bool": 1, "int16": 2, "uint16": 2, "error_code": 2, "int32": 4,
    "uint32": 4, "timedelta_i32": 4, "int64": 8, "uint64": 8, "float64": 8,
    "timedelta_i64": 8, "datetime_i64": 8, "uuid": 16,
}  # fmt: skip


class _Incomplete(Exception):
    """The walk cannot go on; kio will raise its own ordinary error for this input."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    kafka_type: str | None  # None for a nested entity
    entity: type | None
    nullable_entity: bool
    is_array: bool


@cache
def _fields(entity: type) -> tuple[tuple[_Field, ...], dict[int, _Field]]:
    """(untagged fields in order, tag -> tagged field) of a kio entity."""
    plain: list[_Field] = []
    tagged: dict[int, _Field] = {}
    for field in dataclasses.fields(entity):
        kind = introspect.classify_field(field)
        nested = isinstance(kind, introspect.EntityField | introspect.EntityTupleField)
        described = _Field(
            kafka_type=None if nested else introspect.get_schema_field_type(field),
            entity=kind.type_ if nested else None,
            nullable_entity=isinstance(kind, introspect.EntityField)
            and introspect.is_optional(field),
            is_array=kind.is_array,
        )
        tag = introspect.get_field_tag(field)
        if tag is None:
            plain.append(described)
        else:
            tagged[int(tag)] = described
    return tuple(plain), tagged


def _uvarint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for count in range(5):
        if pos + count >= len(data):
            raise _Incomplete
        byte = data[pos + count]
        value |= (byte & 0x7F) << (7 * count)
        if not byte & 0x80:
            return value, pos + count + 1
    raise _Incomplete


def _int(data: memoryview, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise _Incomplete
    return int.from_bytes(data[pos : pos + size], "big", signed=True)


def _skip_primitive(kafka_type: str, flexible: bool, data: memoryview, pos: int) -> int:
    fixed = _FIXED_SIZES.get(kafka_type)
    if fixed is not None:
        length = fixed
    elif flexible:
        length, pos = _uvarint(data, pos)
        length = max(length - 1, 0)
    elif kafka_type == "string":
        length, pos = max(_int(data, pos, 2), 0), pos + 2
    else:
        length, pos = max(_int(data, pos, 4), 0), pos + 4
    if pos + length > len(data):
        raise _Incomplete
    return pos + length


def _walk_field(field: _Field, flexible: bool, data: memoryview, pos: int) -> int:
    if not field.is_array:
        return _walk_one(field, flexible, data, pos)
    if flexible:
        count, pos = _uvarint(data, pos)
        count -= 1
    else:
        count, pos = _int(data, pos, 4), pos + 4
    if count > len(data) - pos:
        raise ProtocolError(
            f"an array announces {count} elements with {len(data) - pos} bytes left"
        )
    for _ in range(max(count, 0)):
        pos = _walk_one(field, flexible, data, pos)
    return pos


def _walk_one(field: _Field, flexible: bool, data: memoryview, pos: int) -> int:
    if field.entity is None:
        assert field.kafka_type is not None
        return _skip_primitive(field.kafka_type, flexible, data, pos)
    if field.nullable_entity:
        if _int(data, pos, 1) == -1:
            return pos + 1
        pos += 1
    return _walk_entity(field.entity, data, pos)


def _walk_entity(entity: type, data: memoryview, pos: int) -> int:
    flexible = bool(entity.__flexible__)
    plain, tagged = _fields(entity)
    for field in plain:
        pos = _walk_field(field, flexible, data, pos)
    if flexible:
        count, pos = _uvarint(data, pos)
        for _ in range(count):
            tag, pos = _uvarint(data, pos)
            _size, pos = _uvarint(data, pos)
            if tag not in tagged:
                raise _Incomplete
            pos = _walk_field(tagged[tag], flexible, data, pos)
    return pos


def check_array_counts(schema: type, body: memoryview, offset: int) -> None:
    """Raise ProtocolError if any array in the message announces more elements than can fit."""
    # Truncated or odd input stops the walk: kio's reader then reports it without over-allocating.
    with contextlib.suppress(_Incomplete):
        _walk_entity(schema, body, offset)
