"""The schema walk in front of kio (proxy/codec/guard.py), on real frames and on made-up ones.

The walk has two jobs: refuse arrays that announce more elements than the frame can hold (before
kio reserves memory for them), and say which tagged fields a response carries at its top level,
so a Produce or Fetch response without broker addresses is forwarded without being decoded.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from collections.abc import Callable

import pytest
from kio.schema.produce.v11 import response as produce11
from kio.static.primitive import i32

from proxy.codec import guard, native
from proxy.codec.apis import ApiKey, request_schema, response_schema
from proxy.codec.errors import ProtocolError
from proxy.codec.guard import check_array_counts, top_level_tags
from proxy.codec.headers import parse_request_header, response_header_size
from proxy.codec.messages import response_top_level_tags
from proxy.codec.produce import _CAPTURED

from ..proxy.messages import fetch_response, response_frame
from .test_captured_frames import DECODABLE, CapturedFrame, _params

ZERO = datetime.timedelta(0)


def _schema_and_offset(frame: CapturedFrame) -> tuple[type, int]:
    if frame.is_request:
        header = parse_request_header(frame.body)
        assert header.size is not None
        return request_schema(frame.api_key, frame.api_version), header.size
    offset = response_header_size(frame.body, frame.api_key, frame.api_version)
    return response_schema(frame.api_key, frame.api_version), offset


@pytest.mark.parametrize("frame", _params(DECODABLE))
def test_the_walk_crosses_every_captured_message_to_its_last_byte(frame: CapturedFrame) -> None:
    schema, offset = _schema_and_offset(frame)
    tags = top_level_tags(schema, frame.body, offset)
    assert tags is not None, "the walk stopped early or left bytes over"
    expected = {
        tag for tag, value in _top_level_tagged_values(frame, schema, offset) if value is not None
    }
    assert set(tags) == expected


def _top_level_tagged_values(
    frame: CapturedFrame, schema: type, offset: int
) -> list[tuple[int, object]]:
    """(tag, value if present on the wire) for the message's own tagged fields, read by kio."""
    import dataclasses

    from kio.serial import _introspect as introspect
    from kio.serial import entity_reader

    value, _ = entity_reader(schema)(frame.body.toreadonly(), offset)
    found = []
    for field in dataclasses.fields(schema):
        tag = introspect.get_field_tag(field)
        if tag is None:
            continue
        item = getattr(value, field.name)
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        found.append((int(tag), None if item == default else item))
    return found


def _body(payload: object) -> memoryview:
    return memoryview(response_frame(payload, 9))[4:]


def test_a_fetch_response_with_node_endpoints_says_so() -> None:
    assert response_top_level_tags(ApiKey.FETCH, 16, _body(fetch_response(endpoints=True))) == (0,)


def test_a_fetch_response_without_node_endpoints_has_no_top_level_tags() -> None:
    assert response_top_level_tags(ApiKey.FETCH, 16, _body(fetch_response(endpoints=False))) == ()


def test_a_produce_response_with_node_endpoints_says_so() -> None:
    response = produce11.ProduceResponse(
        responses=(),
        throttle_time=ZERO,
        node_endpoints=(produce11.NodeEndpoint(node_id=i32(5), host="b5", port=i32(9092)),),
    )
    assert response_top_level_tags(ApiKey.PRODUCE, 11, _body(response)) == (0,)


def test_a_cut_short_or_padded_response_cannot_be_judged_without_decoding() -> None:
    body = bytes(_body(fetch_response(endpoints=True)))
    assert response_top_level_tags(ApiKey.FETCH, 16, body[:-3]) is None
    assert response_top_level_tags(ApiKey.FETCH, 16, body + b"\x00") is None
    assert response_top_level_tags(ApiKey.FETCH, 16, body[:5]) is None


def test_an_array_announcing_more_elements_than_bytes_left_is_refused() -> None:
    body = bytearray(_body(fetch_response(endpoints=False)))
    # Header (correlation id + empty tags) 5 bytes, throttle 4, error 2, session 4: the topics
    # array count follows, a varint of count + 1.
    assert body[15] == 2
    body[15:16] = b"\xff\xff\xff\xff\x07"
    schema = response_schema(ApiKey.FETCH, 16)
    with pytest.raises(ProtocolError, match="announces"):
        check_array_counts(schema, memoryview(bytes(body)), 5)
    with pytest.raises(ProtocolError, match="announces"):
        top_level_tags(schema, memoryview(bytes(body)), 5)


# --- the compiled walk against the Python walk --------------------------------------------------


def _outcome(run: Callable[[], object]) -> object:
    try:
        return run()
    except ProtocolError as exc:
        return ("refused", str(exc))


def _both_walks(schema: type, body: bytes, offset: int) -> tuple[object, object]:
    """Each walk's result and captures. Every top-level field is captured (so every kind of step
    is captured somewhere), and in Produce requests the fields the proxy locates records by."""
    capture = {field.name: n for n, field in enumerate(dataclasses.fields(schema))}
    if schema.__name__ == "ProduceRequest":
        capture.update({path: 100 + n for path, n in _CAPTURED.items()})
    program = guard.program(schema, capture)

    def run(walk: Callable[..., guard.Walked]) -> tuple[object, guard.Captures]:
        captures: guard.Captures = []
        return _outcome(lambda: walk(program, body, offset, captures)), captures

    python, compiled = run(guard.walk_python), run(guard.walk)
    if python[0] is None or (isinstance(python[0], tuple) and python[0][0] == "refused"):
        # Captures made before the walk stopped are not used by anyone: compare results only.
        return python[0], compiled[0]
    return python, compiled


def test_the_proxy_runs_the_compiled_walk() -> None:
    assert native.compiled is not None
    assert guard.walk is not guard.walk_python


@pytest.mark.parametrize("frame", _params(DECODABLE))
def test_both_walks_agree_on_every_captured_message_and_its_damaged_copies(
    frame: CapturedFrame,
) -> None:
    schema, offset = _schema_and_offset(frame)
    body = bytes(frame.body)
    python, compiled = _both_walks(schema, body, offset)
    assert python == compiled
    (end, _tags), captures = python  # type: ignore[misc]
    assert end == len(body)
    assert captures or not dataclasses.fields(schema)
    rng = random.Random(frame.id)
    damaged = [body[:cut] for cut in range(offset, len(body), max(1, len(body) // 40))]
    for _ in range(60):
        copy = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(offset, len(body)) if len(body) > offset else offset
            if position < len(copy):
                copy[position] = rng.choice((0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        damaged.append(bytes(copy))
    damaged.append(body + b"\x00\x01")
    for variant in damaged:
        python, compiled = _both_walks(schema, variant, offset)
        assert python == compiled, variant.hex()


def test_both_walks_refuse_the_same_lying_array_count() -> None:
    body = bytearray(_body(fetch_response(endpoints=False)))
    body[15:16] = b"\xff\xff\xff\xff\x07"
    python, compiled = _both_walks(response_schema(ApiKey.FETCH, 16), bytes(body), 5)
    assert python == compiled
    left = len(body) - 20  # after the 15 bytes before the count and the count's 5
    assert python == ("refused", f"an array announces {2**31 - 2} elements with {left} bytes left")


def test_both_walks_stop_at_lengths_and_counts_kio_refuses() -> None:
    # A non-flexible string (int16 length), then an array (int32 count) of int8.
    strings = (0, ((1, 0, 2),), ())
    arrays = (0, ((2, 0, (0, 1)),), ())
    for program, body in (
        (strings, b"\xff\xfe"),  # length -2
        (arrays, b"\xff\xff\xff\xfe"),  # count -2
    ):
        assert guard.walk_python(program, body, 0) is None
        assert guard.walk(program, body, 0) is None
    # -1 is null, which both accept.
    assert guard.walk_python(strings, b"\xff\xff", 0) == guard.walk(strings, b"\xff\xff", 0)
    assert guard.walk_python(strings, b"\xff\xff", 0) == (2, [])


def test_both_walks_answer_none_for_an_offset_outside_the_body() -> None:
    program = guard.program(response_schema(ApiKey.FETCH, 16))
    body = bytes(_body(fetch_response()))
    for offset in (-1, -len(body), len(body) + 1):
        assert guard.walk_python(program, body, offset) is None
        assert guard.walk(program, body, offset) is None


def test_the_compiled_walk_refuses_a_malformed_program_without_crashing() -> None:
    assert native.compiled is not None
    for program in ((1, 2, 3), (0, ((9, 1),), ()), (0, ((0,),), ()), ("x", (), ())):
        with pytest.raises(SystemError):
            native.compiled.walk_schema(program, b"\x00\x00\x00\x02\x01\x01", 0)


@pytest.mark.skipif(native.compiled is None, reason="extension not built")
def test_the_compiled_walk_stops_at_a_program_nested_deeper_than_the_stack_allows() -> None:
    assert native.compiled is not None
    program: tuple[object, ...] = (0, (), ())
    for _ in range(300_000):
        program = (0, ((3, program),), ())
    with pytest.raises(RecursionError):
        native.compiled.walk_schema(program, b"\x00" * 16, 0)
