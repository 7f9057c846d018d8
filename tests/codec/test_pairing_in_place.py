"""Large frames read in place: the relay reads the rest of a held request or response straight
into the frame (`request_buffer`, `request_filled`, `response_buffer`, `response_filled`) instead
of feeding bytes the core would join.

Both twins must give the owner what feeding the same bytes gives (the same frames, verdicts and
forwarded bytes, the same counts), refuse misuse with the same messages, and hand over the very
buffer the bytes were read into, so no copy is made of it.
"""

from __future__ import annotations

import gc
import random
import sys
from functools import partial
from typing import Any

import pytest

from proxy.codec import native
from proxy.codec.pairing import PairingCorePython
from proxy.exchange import READ_IN_PLACE_FROM, READ_IN_PLACE_UP_TO

from ..proxy.messages import large_fetch_frame, large_produce_frame
from .test_pairing import ERRORS, FRAME, LANE_VERSIONS, POLICIES, _request

MAX_FRAME = 1 << 26
#: What the exchange asks for: at least 64 KiB still to come, frames of up to 16 MiB.
BOUNDS = (READ_IN_PLACE_FROM, READ_IN_PLACE_UP_TO)


def _cores(policy: str) -> list[Any]:
    """The Python twin, and the compiled one when built."""
    cores = [PairingCorePython(POLICIES[policy], MAX_FRAME, ERRORS)]
    if native.compiled is not None:
        cores.append(native.compiled.PairingCore(POLICIES[policy], MAX_FRAME, ERRORS))
    return cores


def _observed(results: list[tuple[list[Any], int]]) -> list[Any]:
    """What the owner sees: forwarded bytes (runs merged) and held items with their frame as
    bytes, whatever the reads."""
    seen: list[Any] = []
    for items, held in results:
        assert held == sum(1 for item in items if type(item) is tuple)
        for item in items:
            if type(item) is tuple:
                seen.append(tuple(bytes(x) if i == FRAME else x for i, x in enumerate(item)))
            elif seen and type(seen[-1]) is bytes:
                seen[-1] += bytes(item)
            else:
                seen.append(bytes(item))
    return seen


def _read(core: Any, side: str, stream: bytes, rng: random.Random, in_place: bool) -> list[Any]:
    """The `side` ("request" or "response") stream as a socket delivers it, in reads of up to
    100 KiB; with `in_place`, every read the core offers a buffer for goes into it, as the
    relay's BufferedProtocol does."""
    feed = core.from_client if side == "request" else core.from_server
    reserve, filled = getattr(core, f"{side}_buffer"), getattr(core, f"{side}_filled")
    results: list[tuple[list[Any], int]] = []
    pos = 0
    while pos < len(stream):
        size = min(rng.randrange(1, 100_000), len(stream) - pos)
        view = reserve(*BOUNDS) if in_place else None
        if view is None:
            results.append(feed(stream[pos : pos + size]))
        else:
            size = min(size, len(view))
            view[:size] = stream[pos : pos + size]
            results.append(filled(size))
        pos += size
    return _observed(results)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(12))
def test_responses_read_in_place_come_out_as_when_fed(policy: str, seed: int) -> None:
    """Large and small responses, with and without node endpoints, back to back."""
    rng = random.Random(seed)
    responses = [
        large_fetch_frame(
            n, rng.choice([10, 5_000, 70_000, 300_000, 1_200_000]), endpoints=rng.random() < 0.3
        )
        for n in range(1, 7)
    ]
    stream = b"".join(responses)
    answers = []
    for in_place in (False, True):
        for core in _cores(policy):
            for n in range(1, 7):
                core.from_client(_request(1, 16, n))
            answers.append(
                (_read(core, "response", stream, random.Random(seed), in_place), core.in_flight)
            )
    assert all(answer == answers[0] for answer in answers)
    frames = [item[FRAME] if type(item) is tuple else item for item in answers[0][0]]
    assert b"".join(frames) == stream
    assert answers[0][1] == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_the_frame_handed_over_is_the_buffer_it_was_read_into(policy: str) -> None:
    response = large_fetch_frame(1, 500_000, endpoints=True)  # handed over under both policies
    for core in _cores(policy):
        core.from_client(_request(1, 16, 1))
        assert core.from_server(response[:1000]) == ([], 0)
        view = core.response_buffer(*BOUNDS)
        assert view is not None and len(view) == len(response) - 1000
        assert core.response_buffer(*BOUNDS).obj is view.obj, "the same frame"
        view[:] = response[1000:]
        ((*_, frame, walked),), held = core.response_filled(len(view))
        assert frame is view.obj and type(frame) is bytearray
        assert held == 1 and walked is False and frame == response


@pytest.mark.parametrize("side", ["request", "response"])
def test_a_released_core_lets_go_of_the_frame_it_was_reading_in_place(side: str) -> None:
    """A closed connection's core drops a frame half read in place (up to 16 MiB) at once,
    instead of keeping it until the cyclic collector frees the core, and offers nothing more."""
    if side == "request":
        stream = large_produce_frame(1, 500_000)
    else:
        stream = large_fetch_frame(1, 500_000, endpoints=True)
    for core in _cores("tracing on"):
        if side == "response":
            core.from_client(_request(1, 16, 1))
        feed = core.from_client if side == "request" else core.from_server
        reserve = getattr(core, f"{side}_buffer")
        feed(stream[:1000])
        view = reserve(*BOUNDS)
        assert view is not None
        frame = view.obj
        del view
        kept = sys.getrefcount(frame)
        core.release()
        assert sys.getrefcount(frame) == kept - 1, type(core).__name__
        assert reserve(*BOUNDS) is None


def test_nothing_is_offered_outside_a_large_held_response() -> None:
    small, large = large_fetch_frame(1, 1_000), large_fetch_frame(2, 200_000)
    for core in _cores("tracing on"):
        assert core.response_buffer(*BOUNDS) is None, "nothing outstanding"
        core.from_client(_request(1, 16, 1))
        core.from_client(_request(1, 16, 2))
        core.from_server(small[:100])
        assert core.response_buffer(*BOUNDS) is None, "too little to come"
        core.from_server(small[100:] + large[: len(large) - READ_IN_PLACE_FROM + 1])
        assert core.response_buffer(*BOUNDS) is None, "one byte short of the bound"
        assert core.response_buffer(READ_IN_PLACE_FROM - 1, READ_IN_PLACE_UP_TO) is not None
        items, held = core.from_server(large[len(large) - READ_IN_PLACE_FROM + 1 :])
        assert held == 1 and bytes(items[0][FRAME]) == large, "fed bytes go into the frame"
        assert core.response_buffer(0, READ_IN_PLACE_UP_TO) is None, "whole: nothing to read into"


def test_frames_larger_than_the_bound_are_joined_as_before() -> None:
    """Reading in place sets the frame's whole size aside at once: a peer that announces a
    frame above the bound (and may send little of it) only gets what it sends kept."""
    at_bound = large_fetch_frame(1, READ_IN_PLACE_UP_TO - 200)
    above = large_fetch_frame(2, READ_IN_PLACE_UP_TO + 1)
    assert len(at_bound) <= READ_IN_PLACE_UP_TO < len(above)
    for core in _cores("tracing on"):
        core.from_client(_request(1, 16, 1))
        core.from_client(_request(1, 16, 2))
        core.from_server(at_bound[:100])
        view = core.response_buffer(*BOUNDS)
        assert view is not None and len(view) == len(at_bound) - 100
        view[:] = at_bound[100:]
        assert core.response_filled(len(view))[1] == 1
        core.from_server(above[:100])
        assert core.response_buffer(*BOUNDS) is None
        items, held = core.from_server(above[100:])
        assert held == 1 and type(items[0][FRAME]) is bytes and items[0][FRAME] == above


def test_bytes_fed_after_a_read_in_place_finish_the_frame_and_go_on() -> None:
    """The relay may feed the rest as bytes (a read it did not offer the frame for): the
    bytes past the frame's end are the next responses, cut as usual."""
    large, small = large_fetch_frame(1, 300_000), large_fetch_frame(2, 10)
    for core in _cores("tracing on"):
        core.from_client(_request(1, 16, 1))
        core.from_client(_request(1, 16, 2))
        core.from_server(large[:50_000])
        view = core.response_buffer(*BOUNDS)
        view[:100_000] = large[50_000:150_000]
        assert core.response_filled(100_000) == ([], 0)
        assert core.response_filled(0) == ([], 0)
        items, held = core.from_server(large[150_000:] + small)
        assert held == 2
        assert [bytes(item[FRAME]) for item in items] == [large, small]
        assert core.in_flight == 0


def test_misuse_is_refused_alike() -> None:
    response = large_fetch_frame(1, 200_000)
    messages = []
    for core in _cores("tracing on"):
        answers = []
        with pytest.raises(ValueError) as refused:
            core.response_filled(10)
        answers.append(str(refused.value))
        core.from_client(_request(1, 16, 1))
        core.from_server(response[:10])
        view = core.response_buffer(*BOUNDS)
        for nbytes in (len(view) + 1, -1):
            with pytest.raises(ValueError) as refused:
                core.response_filled(nbytes)
            answers.append(str(refused.value))
        messages.append(answers)
    assert messages[0] == [
        "no frame is being read in place",
        f"{len(response) - 9} bytes cannot have been read into the {len(response) - 10} reserved",
        f"-1 bytes cannot have been read into the {len(response) - 10} reserved",
    ]
    assert all(answers == messages[0] for answers in messages)


@pytest.mark.skipif(native.compiled is None, reason="extension not built")
def test_a_connection_closed_mid_frame_lets_its_buffer_go() -> None:
    """The compiled core keeps the frame being read while it lives, and no longer."""
    assert native.compiled is not None
    core = native.compiled.PairingCore(POLICIES["tracing on"], MAX_FRAME, ERRORS)
    core.from_client(_request(1, 16, 1))
    core.from_server(large_fetch_frame(1, 200_000)[:10])
    view = core.response_buffer(*BOUNDS)
    frame = view.obj
    view.release()
    held_by_core = sys.getrefcount(frame)
    del core, view
    gc.collect()
    assert sys.getrefcount(frame) == held_by_core - 1 == 2, "only this test holds it now"


# -- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(8))
def test_requests_read_in_place_come_out_as_when_fed(policy: str, seed: int) -> None:
    """Large and small Produce requests with every acks, and other requests, back to back:
    the same pieces and held requests, the same requests waiting for a response."""
    rng = random.Random(seed)
    requests = []
    for n in range(1, 9):
        if rng.random() < 0.7:
            size = rng.choice([10, 5_000, 70_000, 300_000, 1_200_000])
            requests.append(large_produce_frame(n, size, acks=rng.choice([0, 1, -1])))
        else:
            requests.append(_request(3, 12, n, b"m" * 40))
    stream = b"".join(requests)
    answers = []
    for in_place in (False, True):
        for core in _cores(policy):
            seen = _read(core, "request", stream, random.Random(seed), in_place)
            answers.append(([s[:FRAME] if type(s) is tuple else s for s in seen], core.in_flight))
    assert all(answer == answers[0] for answer in answers)


def _lane(answer: str, given: list[Any], frame: Any, version: int) -> Any:
    """A produce lane that notes the frame it was given and answers as `answer` says."""
    given.append(frame)
    if answer == "declined":
        return None
    return (b"rebuilt" if answer == "rebuilt" else frame), 5, None, []


@pytest.mark.parametrize("answer", ["rebuilt", "the frame as it came", "declined"])
def test_the_lane_gets_the_frame_read_in_place(answer: str) -> None:
    """The lane reads the bytearray the request was read into, and may send it on as it is."""
    request = large_produce_frame(1, 400_000, version=11)
    for core in _cores("tracing on"):
        given: list[Any] = []
        core.set_produce_lane(partial(_lane, answer, given), LANE_VERSIONS)
        core.from_client(request[:1000])
        view = core.request_buffer(*BOUNDS)
        view[:] = request[1000:]
        items, held = core.request_filled(len(view))
        (frame,) = given
        assert frame is view.obj and frame == request
        if answer == "declined":
            assert held == 1 and items[0][FRAME] is frame
        else:
            assert held == 0 and items == [b"rebuilt" if answer == "rebuilt" else frame]
        assert core.in_flight == 1, "acks=1: its response is awaited"


def test_request_misuse_is_refused_alike() -> None:
    request = large_produce_frame(1, 200_000)
    messages = []
    for core in _cores("tracing on"):
        with pytest.raises(ValueError) as refused:
            core.request_filled(1)
        answers = [str(refused.value)]
        core.from_client(request[:1000])
        view = core.request_buffer(*BOUNDS)
        with pytest.raises(ValueError) as refused:
            core.request_filled(len(view) + 1)
        answers.append(str(refused.value))
        assert core.response_buffer(0, READ_IN_PLACE_UP_TO) is None, "nothing held that way"
        messages.append(answers)
    assert messages[0][0] == "no frame is being read in place"
    assert all(answers == messages[0] for answers in messages)
