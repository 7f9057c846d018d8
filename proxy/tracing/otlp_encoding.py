"""A fast OTLP/protobuf encoder for finished spans: `ExportTraceServiceRequest` bytes.

Why it exists: the stock encoder (`opentelemetry.exporter.otlp.proto.common.trace_encoder`)
builds a tree of protobuf message objects per span (KeyValue, AnyValue, Span, Status...) and
then serialises the tree, about 68 µs per span here; at 100% sampling that is the proxy's largest
CPU cost. The proxy's spans are flat and repetitive (the same messaging.system, destination,
server address on every span), so this module writes the protobuf wire format directly, caches
the encoded bytes of repeated attribute entries, resources and scopes, and joins bytes.

The output follows the stock encoder's semantics (grouping by resource then scope in first-seen
order, span flags, an empty `Status` for unset statuses, no link trace_state, attributes that
fail to encode are logged and skipped) and serialises fields in field-number order with proto3
defaults omitted, as upb does, so the bytes are normally identical to
`encode_spans(spans).SerializePartialToString()`.

The proxy's own spans mostly skip the SDK's objects altogether: with this encoder's exporter,
the consumer and the producer write them in wire form from the pieces below (`span_head`,
`attribute_fields`, `int_attribute`...) and queue them as `EncodedSpans`, which are joined as
they are; their tests check the bytes equal what this encoder writes for the same spans made
as `ReadableSpan`s.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

_logger = logging.getLogger(__name__)

#: Most encoded attribute entries cached (split evenly over str, int and bool values).
ENTRY_CACHE_LIMIT = 4096
#: Most resources / scopes whose encoding is kept (per identity); emptied when full.
HEADER_CACHE_LIMIT = 64
#: Most span names (and attribute keys) whose encoded field is kept; emptied when full.
NAME_CACHE_LIMIT = 1024

_M64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_BYTE = [bytes((n,)) for n in range(256)]

# Wire-format pieces: a tag byte is (field number << 3) | wire type (0 varint, 1 fixed64,
# 2 length-delimited, 5 fixed32).
_IDS = struct.Struct(">HQQHQ")  # trace_id (1) tag+len and two halves, span_id (2) tag+len, id
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7), end_time_unix_nano (8)
_FIXED64 = struct.Struct("<BQ")
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4)
_SPAN_ID_TAGGED = struct.Struct(">HQ")  # Span.parent_span_id (4) tag+len, span id
_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_SPAN_FLAGS = {  # Span.flags (16, fixed32) by whether the parent is remote
    remote: b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
_SPAN_FLAGS_LOCAL, _SPAN_FLAGS_REMOTE = _SPAN_FLAGS[False], _SPAN_FLAGS[True]
_LINK_FLAGS = {  # Link.flags (6, fixed32) by whether the linked context is remote
    remote: b"\x35" + struct.pack("<I", _HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
# A bare Span.links (13) field: tag and length (33), trace_id, span_id, then flags (6), whose
# little-endian fixed32 bytes are written as a big-endian word (0x100 -> 00 01 00 00).
_BARE_LINK = struct.Struct(">HHQQHQBI")
_BARE_LINK_FLAGS_LOCAL = int.from_bytes(struct.pack("<I", _HAS_IS_REMOTE), "big")
_BARE_LINK_FLAGS_REMOTE = int.from_bytes(struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE), "big")
_UNSET_STATUS = b"\x7a\x00"  # Span.status (15): present but empty
_EMPTY_SCOPE = b"\x0a\x00"  # ScopeSpans.scope (1) for spans without a scope
_NOTHING = object()
_KIND_FIELDS = {id(kind): bytes((0x30, kind.value + 1)) for kind in SpanKind}

_Fields = tuple[Any, ...]  # a span's fields in `_FAST_NAMES` order

# Encoded entries by (key, value) item, one dict per exact value type so that equal values of
# different types (1, True) never meet; float is left out (0.0 == -0.0, nan != nan).
_entry_caches: dict[type, dict[tuple[Any, Any], bytes]] = {str: {}, int: {}, bool: {}}
_TYPE_CACHE_LIMIT = ENTRY_CACHE_LIMIT // len(_entry_caches)
_resource_cache: dict[int, tuple[Resource, bytes, bytes]] = {}
_scope_cache: dict[int, tuple[InstrumentationScope, bytes, bytes]] = {}
_name_cache: dict[str, bytes] = {}
_key_fields: dict[Any, bytes] = {}
_unset_seen: list[Status | None] = [None]  # the last unset status seen, kept alive for `is`


class EncodedSpans(NamedTuple):
    """Spans already in wire form: `count` `ScopeSpans.spans` fields (tag, length, `Span`
    body) of one resource and scope, as the consumer writes a fetched partition's receive spans
    (`receive.receive_spans`) and the producer a partition's send spans. The encoder adds them
    to their group as they are."""

    resource: Resource
    scope: InstrumentationScope | None
    fields: bytes
    count: int


class SpanTemplate(NamedTuple):
    """What the receive spans of one topic partition share, in wire form, around what each
    span has of its own: `Span` fields (ids, parent span id, times, per-span attributes) are
    written between these by `receive.receive_spans`."""

    #: Span.name (5) and Span.kind (6).
    head: bytes
    #: The shared Span.attributes (9) fields, each with its tag.
    common: bytes
    #: KeyValue.key (1) fields of the per-span int, int and str attributes.
    offset_key: bytes
    age_key: bytes
    message_key_key: bytes
    #: The whole Span.attributes (9) field of the redelivered mark (true).
    redelivered: bytes
    #: Span.status (15), unset, and Span.flags (16) for a remote parent.
    tail: bytes


def span_template(
    name: str,
    kind: SpanKind,
    common: Mapping[str, str | int | bool],
    offset_key: str,
    age_key: str,
    message_key_key: str,
    redelivered_key: str,
) -> SpanTemplate:
    """The template of spans with a remote parent, an unset status and the attributes `common`
    then offset (int), age (int), redelivered (true, when marked) and message key (str, when
    shown), in that order: what `encode_export_request` writes for such a `ReadableSpan`."""
    return SpanTemplate(
        head=span_head(name, kind),
        common=attribute_fields(common),
        offset_key=key_field(offset_key),
        age_key=key_field(age_key),
        message_key_key=key_field(message_key_key),
        redelivered=attribute_fields({redelivered_key: True}),
        tail=span_tail(None, remote_parent=True),
    )


# -- spans in wire form, piece by piece (for spans written without SDK objects) -----------------


def span_head(name: str, kind: SpanKind) -> bytes:
    """Span.name (5) and Span.kind (6)."""
    return _name_field(name) + (_KIND_FIELDS.get(id(kind)) or _kind_field(kind))


def attribute_fields(attributes: Mapping[str, str | int | bool]) -> bytes:
    """Span.attributes (9) fields, each with its tag (entries the encoder skips are skipped)."""
    return b"".join(b"\x4a" + entry for entry in _entries(attributes))


def key_field(key: str) -> bytes:
    """KeyValue.key (1) of an attribute key (text: the proxy's own keys)."""
    field = _key_fields.get(key)
    if field is None:
        field = _key_field(key)
        if field is None:
            raise ValueError(f"attribute key {key!r} is not text")
    return field


def span_tail(error: str | None, *, remote_parent: bool) -> bytes:
    """Span.status (15), unset or an error with this description, and Span.flags (16)."""
    status = _status(Status(StatusCode.ERROR, error)) if error else _UNSET_STATUS
    return status + (_SPAN_FLAGS_REMOTE if remote_parent else _SPAN_FLAGS_LOCAL)


def span_ids(trace_id: int, span_id: int) -> bytes:
    """Span.trace_id (1) and Span.span_id (2)."""
    return _IDS.pack(0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, span_id)


def parent_span_id(span_id: int) -> bytes:
    """Span.parent_span_id (4)."""
    return _SPAN_ID_TAGGED.pack(0x2208, span_id)


def span_times(start_ns: int, end_ns: int) -> bytes:
    """Span.start_time_unix_nano (7) and end_time_unix_nano (8), both above zero."""
    return _TIMES.pack(0x39, start_ns, 0x41, end_ns)


def int_attribute(key: bytes, value: int) -> bytes:
    """A Span.attributes (9) field: KeyValue(`key`, a `key_field`; AnyValue.int_value (3)), the
    value within int64."""
    any_value = b"\x18" + _varint(value & _M64)
    body = key + b"\x12" + _varint(len(any_value)) + any_value
    return b"\x4a" + _varint(len(body)) + body


def str_attribute(key: bytes, value: bytes) -> bytes:
    """A Span.attributes (9) field: KeyValue(`key`, a `key_field`; AnyValue.string_value (1)),
    the value UTF-8."""
    any_value = b"\x0a" + _varint(len(value)) + value
    body = key + b"\x12" + _varint(len(any_value)) + any_value
    return b"\x4a" + _varint(len(body)) + body


def span_field(body: bytes) -> bytes:
    """ScopeSpans.spans (2) of a Span body: what `EncodedSpans.fields` joins."""
    return b"\x12" + _varint(len(body)) + body


def encode_export_request(spans: Sequence[ReadableSpan | EncodedSpans]) -> bytes:
    """ExportTraceServiceRequest bytes (OTLP protobuf) for these finished SDK spans (and spans
    already encoded)."""
    return b"".join(
        _len_field(b"\x0a", _resource_spans(resource, scopes))
        for resource, scopes in _group(spans).items()
    )


def cache_sizes() -> dict[str, int]:
    """How full each cache is (bounded by ENTRY_, NAME_ and HEADER_CACHE_LIMIT)."""
    return {
        "entries": sum(len(cache) for cache in _entry_caches.values()),
        "keys": len(_key_fields),
        "names": len(_name_cache),
        "resources": len(_resource_cache),
        "scopes": len(_scope_cache),
    }


# -- grouping ------------------------------------------------------------------------------------

_Groups = dict[Resource, dict[InstrumentationScope | None, list[bytes]]]
_Seen = dict[tuple[int, int], tuple[Resource, InstrumentationScope | None, list[bytes]]]


def _group(spans: Sequence[ReadableSpan | EncodedSpans]) -> _Groups:
    """Encoded spans by resource, then scope, first-seen order (equal objects share a group).

    Resource hashing serialises its attributes to JSON, so objects are first matched by identity
    within the batch; the identity table keeps them alive so ids cannot be reused meanwhile.
    """
    groups: _Groups = {}
    seen: _Seen = {}
    last_resource: object = _NOTHING
    last_scope: object = _NOTHING
    bucket: list[bytes] = []
    for span in spans:
        if type(span) is EncodedSpans:
            bucket = _bucket(groups, seen, span.resource, span.scope or None)
            last_resource = _NOTHING  # the next span looks its group up again
            bucket.append(span.fields)
            continue
        fast = type(span) is _FAST_SPAN
        fields = _fast_fields(span) if fast else _public_fields(span)
        resource, scope = fields[0], fields[1] or None
        if resource is not last_resource or scope is not last_scope:
            bucket = _bucket(groups, seen, resource, scope)
            last_resource, last_scope = resource, scope
        body = _span(span, fields, fast)
        size = len(body)  # ScopeSpans.spans (2): tag, length, body
        if 0x80 <= size < 0x4000:  # the usual span: a two-byte length
            bucket.append(bytes((0x12, size & 0x7F | 0x80, size >> 7)))
        else:
            bucket.append(b"\x12" + _varint(size))
        bucket.append(body)
    return groups


def _bucket(
    groups: _Groups, seen: _Seen, resource: Resource, scope: InstrumentationScope | None
) -> list[bytes]:
    """The span list for this resource and scope, created on first sight."""
    identity = (id(resource), id(scope))
    known = seen.get(identity)
    if known is not None:
        return known[2]
    bucket = groups.setdefault(resource, {}).setdefault(scope, [])
    seen[identity] = (resource, scope, bucket)
    return bucket


def _resource_spans(
    resource: Resource, scopes: dict[InstrumentationScope | None, list[bytes]]
) -> bytes:
    """ResourceSpans body: resource, scope_spans (2), schema_url."""
    head, tail = _resource_parts(resource)
    parts = [head]
    for scope, spans in scopes.items():
        scope_head, scope_tail = _scope_parts(scope)
        parts.append(_len_field(b"\x12", b"".join([scope_head, *spans, scope_tail])))
    parts.append(tail)
    return b"".join(parts)


def _resource_parts(resource: Resource) -> tuple[bytes, bytes]:
    """(ResourceSpans.resource field, ResourceSpans.schema_url field), cached per object."""
    cached = _resource_cache.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1], cached[2]
    head = _len_field(b"\x0a", _repeated(b"\x0a", _entries(resource.attributes)))
    tail = _string_field(b"\x1a", resource.schema_url)
    if len(_resource_cache) >= HEADER_CACHE_LIMIT:
        _resource_cache.clear()
    _resource_cache[id(resource)] = (resource, head, tail)
    return head, tail


def _scope_parts(scope: InstrumentationScope | None) -> tuple[bytes, bytes]:
    """(ScopeSpans.scope field, ScopeSpans.schema_url field), cached per object."""
    if scope is None:
        return _EMPTY_SCOPE, b""
    cached = _scope_cache.get(id(scope))
    if cached is not None and cached[0] is scope:
        return cached[1], cached[2]
    body = b"".join(
        (
            _string_field(b"\x0a", scope.name),
            _string_field(b"\x12", scope.version),
            _repeated(b"\x1a", _entries(scope.attributes)),
        )
    )
    head, tail = _len_field(b"\x0a", body), _string_field(b"\x1a", scope.schema_url)
    if len(_scope_cache) >= HEADER_CACHE_LIMIT:
        _scope_cache.clear()
    _scope_cache[id(scope)] = (scope, head, tail)
    return head, tail


# -- reading spans -------------------------------------------------------------------------------

# The SDK's properties cost a Python call each (`attributes`, `events` and `links` also copy,
# `dropped_*` run ABC isinstance checks), a large share of the budget. For exactly
# `ReadableSpan`, whose fields are plain instance attributes, read those instead; the import-time
# probe below turns this off if an SDK release renames them.
_FAST_NAMES = (
    "_resource",
    "_instrumentation_scope",
    "_context",
    "_parent",
    "_name",
    "_kind",
    "_start_time",
    "_end_time",
    "_attributes",
    "_events",
    "_links",
    "_status",
)
_fast_fields = attrgetter(*_FAST_NAMES)
_dropped_counts = attrgetter("dropped_attributes", "dropped_events", "dropped_links")
_UNBOUNDED = frozenset({dict, tuple, list, type(None)})  # containers that drop nothing
_NO_DROPS = (0, 0, 0)


def _public_fields(span: ReadableSpan) -> _Fields:
    """A span's fields through its public API, in `_FAST_NAMES` order."""
    return (
        span.resource,
        span.instrumentation_scope,
        span.get_span_context(),
        span.parent,
        span.name,
        span.kind,
        span.start_time,
        span.end_time,
        span.attributes,
        span.events,
        span.links,
        span.status,
    )


def _fast_span_works() -> bool:
    """Whether `ReadableSpan` still keeps its fields where `_fast_fields` reads them."""
    context = SpanContext(0x1234, 0x56, True, TraceFlags(1))
    probe = ReadableSpan(
        "probe", context, context, Resource({}), {"a": 1}, start_time=7, end_time=9
    )
    try:
        fast = _fast_fields(probe)
    except AttributeError:
        return False
    public = _public_fields(probe)
    return (
        fast[:8] == public[:8]
        and fast[11] is public[11]
        and dict(fast[8]) == dict(public[8])
        and tuple(fast[9]) == public[9]
        and tuple(fast[10]) == public[10]
    )


def _tuple_context_works() -> bool:
    """Whether `SpanContext` is still (trace_id, span_id, is_remote, flags, state, is_valid)."""
    state = TraceState([("k", "v")])
    context = SpanContext(0x1234, 0x56, True, TraceFlags(1), state)
    expected = (0x1234, 0x56, True, 1, state, True)
    return isinstance(context, tuple) and len(context) == 6 and tuple(context) == expected


# -- spans ---------------------------------------------------------------------------------------


def _span(span: ReadableSpan, fields: _Fields, fast: bool) -> bytes:
    """Span body, fields in number order."""
    _, _, context, parent, name, kind, start, end, attributes, events, links, status = fields
    if type(context) is _TUPLE_CONTEXT:
        trace_id, span_id, _, _, trace_state, _ = context
    else:
        trace_id, span_id, trace_state = context.trace_id, context.span_id, context.trace_state
    parts = [_IDS.pack(0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, span_id)]
    if trace_state is not DEFAULT_TRACE_STATE and trace_state:
        parts.append(_len_field(b"\x1a", _trace_state(trace_state)))
    if parent is None:
        flags = _SPAN_FLAGS_LOCAL
    elif type(parent) is _TUPLE_CONTEXT:
        parts.append(_SPAN_ID_TAGGED.pack(0x2208, parent[1]))
        flags = _SPAN_FLAGS_REMOTE if parent[2] else _SPAN_FLAGS_LOCAL
    else:
        parent_id, flags = _parent(parent)
        parts.append(parent_id)
    parts.append(_name_cache.get(name) or _name_field(name))
    parts.append(_KIND_FIELDS.get(id(kind)) or _kind_field(kind))
    parts.append(_TIMES.pack(0x39, start, 0x41, end) if start and end else _times(start, end))
    entries = _entries(attributes)
    if entries:
        parts.append(b"\x4a" + b"\x4a".join(entries))
    dropped_attributes, dropped_events, dropped_links = (
        _NO_DROPS  # plain containers in a fast-read span drop nothing
        if fast
        and type(attributes) in _UNBOUNDED
        and type(events) in _UNBOUNDED
        and type(links) in _UNBOUNDED
        else _dropped_counts(span)
    )
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    if events:
        parts.extend([_len_field(b"\x5a", _event(event)) for event in events])
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    if links:
        parts.extend(_links(links))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    if status is not None:
        parts.append(_UNSET_STATUS if status is _unset_seen[0] else _status(status))
    parts.append(flags)
    return b"".join(parts)


def _parent(parent: SpanContext) -> tuple[bytes, bytes]:
    """(Span.parent_span_id field or b"", Span.flags field) for a parent context object."""
    parent_id = _SPAN_ID_TAGGED.pack(0x2208, parent.span_id) if parent else b""
    return parent_id, _SPAN_FLAGS[bool(parent and parent.is_remote)]


def _name_field(name: str) -> bytes:
    """Span.name (5), cached (span names repeat: one or two per topic)."""
    field = _name_cache.get(name)
    if field is None:
        field = _string_field(b"\x2a", name)
        if len(_name_cache) >= NAME_CACHE_LIMIT:
            _name_cache.clear()
        _name_cache[name] = field
    return field


def _kind_field(kind: SpanKind) -> bytes:
    """Span.kind (6) for a kind not in the table: the SDK value + 1, SpanKind only."""
    if not isinstance(kind, SpanKind):
        raise KeyError(kind)
    return bytes((0x30, kind.value + 1))


def _times(start: int | None, end: int | None) -> bytes:
    """start_time_unix_nano (7) and end_time_unix_nano (8), fixed64, omitted when zero."""
    if start and end:
        return _TIMES.pack(0x39, start, 0x41, end)
    if start:
        return _FIXED64.pack(0x39, start)
    if end:
        return _FIXED64.pack(0x41, end)
    return b""


def _trace_state(trace_state: TraceState) -> bytes:
    """The W3C tracestate header text, as the stock encoder writes it."""
    return ",".join(f"{key}={value}" for key, value in trace_state.items()).encode("utf-8")


def _event(event: Event) -> bytes:
    """Span.Event body: time_unix_nano, name, attributes, dropped_attributes_count."""
    timestamp = event.timestamp
    parts = [
        _FIXED64.pack(0x09, timestamp) if timestamp else b"",
        _string_field(b"\x12", event.name),
    ]
    attributes = _entries(event.attributes)
    if attributes:
        parts.append(_repeated(b"\x1a", attributes))
    _counted(parts, 0x20, event.dropped_attributes)
    return b"".join(parts)


def _links(links: Sequence[Link]) -> list[bytes]:
    """Span.links (13) fields. A consumer span can carry 128, so bare links (a SpanContext, no
    attributes) are packed in one call: tag, length, ids and flags."""
    fields = []
    for link in links:
        context = link.context
        attributes = link.attributes
        if type(context) is _TUPLE_CONTEXT and not attributes and type(attributes) in _UNBOUNDED:
            trace_id = context[0]
            flags = _BARE_LINK_FLAGS_REMOTE if context[2] else _BARE_LINK_FLAGS_LOCAL
            fields.append(
                _BARE_LINK.pack(
                    0x6A21, 0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, context[1], 0x35, flags
                )
            )
        else:
            fields.append(_link(link))
    return fields


def _link(link: Link) -> bytes:
    """One Span.links (13) field. Like the stock encoder, no trace_state is written."""
    context = link.context
    trace_id = context.trace_id
    parts = [_IDS.pack(0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, context.span_id)]
    parts.append(_repeated(b"\x22", _entries(link.attributes)))
    _counted(parts, 0x28, link.dropped_attributes)
    parts.append(_LINK_FLAGS[bool(context and context.is_remote)])
    return _len_field(b"\x6a", b"".join(parts))


def _status(status: Status) -> bytes:
    """The whole Span.status (15) field: message (2), code (3)."""
    code = status.status_code
    description = status.description
    if code is StatusCode.UNSET and not description:
        _unset_seen[0] = status
        return _UNSET_STATUS
    number = code.value
    body = _string_field(b"\x12", description) + (b"\x18" + _varint(number) if number else b"")
    return _len_field(b"\x7a", body)


# -- attributes ----------------------------------------------------------------------------------


def _entries(attributes: Mapping[Any, Any] | None) -> list[bytes]:
    """Length-prefixed KeyValue bodies (without tag); str/int/bool entries come from a cache."""
    if not attributes:
        return []
    entries = []
    caches = _entry_caches
    for item in attributes.items():
        cache = caches.get(type(item[1]))
        entry = None if cache is None else cache.get(item)
        if entry is None:
            entry = _entry(*item) if cache is None else _scalar_entry(cache, item)
            if entry is None:
                continue
        entries.append(entry)
    return entries


def _scalar_entry(cache: dict[tuple[Any, Any], bytes], item: tuple[Any, Any]) -> bytes | None:
    """Encode a (key, str/int/bool value) entry missing from its cache, and cache it."""
    key, value = item
    head = _key_fields.get(key)
    if head is None:
        head = _key_field(key)
        if head is None:
            return _entry(key, value)
    kind = type(value)
    if kind is str:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            return _entry(key, value)
        any_value = b"\x0a" + _varint(len(data)) + data
    elif kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            return _entry(key, value)
        any_value = b"\x18" + _varint(value & _M64)
    else:
        any_value = b"\x10\x01" if value else b"\x10\x00"
    size = len(any_value)
    body = b"".join((head, b"\x12", _BYTE[size] if size < 0x80 else _varint(size), any_value))
    size = len(body)
    entry = (_BYTE[size] if size < 0x80 else _varint(size)) + body
    if len(cache) >= _TYPE_CACHE_LIMIT:
        cache.clear()
    cache[item] = entry
    return entry


def _key_field(key: Any) -> bytes | None:
    """KeyValue.key (1) for an attribute key (cached), or None if it is not valid text."""
    try:
        data = _utf8(key)
    except (TypeError, UnicodeError):
        return None
    field = b"\x0a" + _varint(len(data)) + data if data else b""
    if len(_key_fields) >= NAME_CACHE_LIMIT:
        _key_fields.clear()
    _key_fields[key] = field
    return field


def _entry(key: Any, value: Any) -> bytes | None:
    """A length-prefixed KeyValue, or None (logged) when the stock encoder would skip it."""
    try:
        body = _key_value(_utf8(key), value)
    except Exception as error:
        _logger.exception("Failed to encode key %s: %s", key, error)
        return None
    return _varint(len(body)) + body


def _utf8(text: Any) -> bytes:
    """A key or other string field as UTF-8; protobuf also takes UTF-8 bytes for one."""
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, bytes):
        text.decode("utf-8")
        return text
    raise TypeError(f"Invalid string type {type(text)}")


def _key_value(key: bytes, value: Any) -> bytes:
    """KeyValue body: key (1) unless empty, value (2) always present."""
    any_value = _any_value(value)
    head = b"\x0a" + _varint(len(key)) + key if key else b""
    return head + b"\x12" + _varint(len(any_value)) + any_value


def _any_value(value: Any) -> bytes:
    """AnyValue body; type checks in the stock encoder's order (bool before int, str first)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len_field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _int64(value)
    if isinstance(value, float):
        return _DOUBLE.pack(0x21, value)
    if isinstance(value, bytes):
        return _len_field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _len_field(b"\x2a", b"".join(_len_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = (_key_value(str(k).encode("utf-8"), v) for k, v in value.items())
        return _len_field(b"\x32", b"".join(_len_field(b"\x0a", pair) for pair in pairs))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _int64(value: int) -> bytes:
    """An int64 varint: negatives as 10-byte two's complement; out of range is an error."""
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"Value out of range: {value}")
    return _varint(value & _M64)


# -- wire primitives -----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    """Unsigned base-128 varint."""
    if value < 0x80:
        return _BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _string_field(tag: bytes, text: str | bytes | None) -> bytes:
    """A string field, omitted when None or empty (proto3)."""
    if not text:
        return b""
    return _len_field(tag, _utf8(text))


def _repeated(tag: bytes, entries: list[bytes]) -> bytes:
    """A repeated message field from length-prefixed bodies."""
    if not entries:
        return b""
    return tag + tag.join(entries)


def _counted(parts: list[bytes], tag: int, count: int) -> None:
    """Append a uint32 count field unless zero."""
    if count:
        parts.append(_BYTE[tag] + _varint(count))


_FAST_SPAN: type | None = ReadableSpan if _fast_span_works() else None
_TUPLE_CONTEXT: type | None = SpanContext if _tuple_context_works() else None
