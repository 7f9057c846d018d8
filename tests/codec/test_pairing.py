"""The pairing core: both twins cut the same streams into the same pieces, pair the same
responses, count the same, and refuse the same input with the same messages."""

from __future__ import annotations

import datetime
import itertools
import random
import struct
import time
from collections.abc import Callable
from importlib import import_module
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.produce.v3 import request as produce3
from kio.schema.produce.v9 import request as produce9
from kio.schema.produce.v11 import request as produce11
from kio.schema.produce.v11 import response as produce_response11
from kio.static.primitive import i16, i32

from proxy.codec import native
from proxy.codec.errors import FrameTooLarge, ProtocolError
from proxy.codec.framing import frame
from proxy.codec.headers import parse_request_header
from proxy.codec.pairing import (
    OTHER_API,
    HoldPolicy,
    PairingCorePython,
    pairing_core,
    read_produce_acks,
)
from proxy.codec.produce import produce_acks
from proxy.exchange import hold_policy
from proxy.interceptors import Interceptors

from ..proxy.messages import fetch_response, large_fetch_frame, request_frame, response_frame

compiled = pytest.mark.skipif(native.compiled is None, reason="extension not built")
ERRORS = (ProtocolError, FrameTooLarge)
METADATA, API_VERSIONS, UNKNOWN = 3, 18, 200
#: Where the frame is in a held request or response.
FRAME = 4


class _Tracer:
    """Stands in for the tracing interceptors: the policy only asks which hooks exist."""

    def on_produce_request(self, ctx: object, partition: object) -> None: ...
    def on_produce_response(self, ctx: object, state: object, result: object) -> None: ...
    def on_fetch_response(self, ctx: object, fetched: object) -> None: ...


POLICIES = {
    "tracing off": hold_policy(Interceptors()),
    "tracing on": hold_policy(Interceptors([_Tracer()])),
}


def _twins(policy: HoldPolicy, max_frame_size: int = 1 << 16) -> tuple[Any, Any]:
    assert native.compiled is not None
    return native.compiled.PairingCore(policy, max_frame_size, ERRORS), PairingCorePython(
        policy, max_frame_size, ERRORS
    )


def _request(api_key: int, version: int, correlation_id: int, body: bytes = b"") -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"
    return frame(header + body)


def _produce(version: int, correlation_id: int, acks: int, client_id: bytes = b"app") -> bytes:
    """A Produce request's header, transactional id and acks, then opaque bytes."""
    header = struct.pack(">hhih", 0, version, correlation_id, len(client_id)) + client_id
    if version >= 9:
        header += b"\x00"  # no tagged header fields
        transactional = b"\x03tx"  # compact string "tx"
    else:
        transactional = struct.pack(">h", 2) + b"tx"
    return frame(header + transactional + struct.pack(">h", acks) + b"\x00" * 11)


def _response(correlation_id: int, body: bytes = b"\x00\x00") -> bytes:
    return frame(struct.pack(">i", correlation_id) + body)


def _normal(items: list[Any]) -> list[Any]:
    """Pieces as bytes, held items with their frame as bytes: what the owner can observe."""
    return [
        tuple(bytes(x) if i == FRAME else x for i, x in enumerate(item))
        if type(item) is tuple
        else bytes(item)
        for item in items
    ]


def _feed(core: Any, direction: str, data: bytes | bytearray) -> Any:
    try:
        items, held = getattr(core, direction)(data)
    except (ProtocolError, FrameTooLarge) as exc:
        return ("raised", type(exc).__name__, str(exc))
    assert held == sum(1 for item in items if type(item) is tuple)
    for item in items:
        if type(item) is tuple and direction == "from_client" and item[1] == 0:
            _owner_reads_acks(core, item)
    return _normal(items), core.in_flight


def _owner_reads_acks(core: Any, held: tuple[Any, ...]) -> None:
    """What the exchange does with a Produce request handed over to it."""
    body = memoryview(held[FRAME])[4:]
    header = parse_request_header(body)
    readable = header.size is not None and 3 <= held[2] <= 13
    if readable and produce_acks(body, header.size, held[2]) == 0:
        core.forget(held[0])


def _stats(core: Any) -> dict[int, Any]:
    """The counts taken; latencies by number only (each twin's run takes its own time)."""
    return {key: (r, rb, sb, sum(lat), s >= 0) for key, (r, rb, sb, lat, s) in core.take_stats()}


def _cut(stream: bytes, rng: random.Random, cuts: int) -> list[bytes]:
    points = sorted({rng.randrange(len(stream) + 1) for _ in range(cuts)} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def _conversation(rng: random.Random, count: int) -> tuple[bytes, bytes]:
    """Requests of several kinds (Produce with every acks, versions the core reads and ones it
    hands over, unknown API keys), and the responses of those that get one."""
    requests, responses = [], []
    for correlation_id in range(1, count + 1):
        kind = rng.randrange(6)
        if kind == 0:
            version = rng.choice([3, 7, 9, 11, 13])
            acks = rng.choice([0, 1, -1])
            client = rng.choice([b"app", b"", b"caf\xc3\xa9"])
            requests.append(_produce(version, correlation_id, acks, client))
            if acks != 0:
                responses.append(_response(correlation_id, b"\x00" * rng.randrange(2, 40)))
            continue
        api_key = [METADATA, API_VERSIONS, UNKNOWN, 1, 1000][kind - 1]
        requests.append(_request(api_key, rng.randrange(0, 14), correlation_id, b"x" * kind))
        responses.append(_response(correlation_id, b"\x01" * rng.randrange(0, 300)))
    return b"".join(requests), b"".join(responses)


def _replay(core: Any, requests: list[bytes], responses: list[bytes]) -> list[Any]:
    seen = [_feed(core, "from_client", data) for data in requests]
    seen += [_feed(core, "from_server", data) for data in responses]
    return [*seen, _stats(core), core.in_flight]


@compiled
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(40))
def test_both_twins_cut_pair_and_count_a_conversation_alike(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    requests, responses = _conversation(rng, rng.randrange(1, 25))
    request_reads = _cut(requests, rng, rng.randrange(0, 12))
    response_reads = _cut(responses, rng, rng.randrange(0, 12))
    c_core, py_core = _twins(POLICIES[policy])
    seen = _replay(c_core, request_reads, response_reads)
    assert seen == _replay(py_core, request_reads, response_reads)
    assert seen[-1] == 0, "every request that expects a response got it"
    forwarded = b"".join(
        item[FRAME] if type(item) is tuple else item
        for result in seen[: len(request_reads)]
        for item in result[0]
    )
    assert forwarded == requests, "requests come out whole and in order"


@compiled
@pytest.mark.parametrize("policy", POLICIES)
def test_both_twins_take_mutable_buffers_alike_and_keep_copies_of_them(policy: str) -> None:
    stream = _produce(11, 1, -1) + _request(METADATA, 12, 2, b"m" * 50)
    for core in _twins(POLICIES[policy]):
        first = bytearray(stream[:20])
        items, _ = core.from_client(first)
        first[:] = b"\xff" * 20  # the owner reuses its buffer
        items += core.from_client(bytearray(stream[20:]))[0]
        assert b"".join(bytes(i[FRAME] if type(i) is tuple else i) for i in items) == stream


@compiled
@pytest.mark.parametrize(
    ("direction", "data", "error"),
    [
        ("from_client", struct.pack(">i", -1) + b"\x00" * 8, FrameTooLarge),
        ("from_client", struct.pack(">i", 1 << 17) + b"\x00" * 8, FrameTooLarge),
        ("from_client", struct.pack(">i", 5) + b"\x00" * 8, ProtocolError),
        ("from_server", struct.pack(">i", 3) + b"\x00" * 8, ProtocolError),
        ("from_server", _response(7), ProtocolError),
    ],
)
def test_both_twins_refuse_the_same_input_with_the_same_message(
    direction: str, data: bytes, error: type[Exception]
) -> None:
    results = []
    for core in _twins(POLICIES["tracing off"]):
        for cut in range(len(data) + 1):  # the refusal is the same wherever the read ends
            core = type(core)(POLICIES["tracing off"], 1 << 16, ERRORS)
            with pytest.raises(error) as raised:
                getattr(core, direction)(data[:cut])
                getattr(core, direction)(data[cut:])
            results.append(str(raised.value))
    assert len(set(results)) == 1, results


@compiled
def test_a_response_to_the_wrong_request_is_refused_alike() -> None:
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(_request(METADATA, 12, 1) + _request(METADATA, 12, 2))
        with pytest.raises(ProtocolError, match=r"response 2 does not answer .* request 1 \(api"):
            core.from_server(_response(2))


@compiled
@pytest.mark.parametrize("version", [3, 8, 9, 13])
def test_acks_zero_produce_requests_expect_no_response(version: int) -> None:
    for core in _twins(POLICIES["tracing off"]):
        _, held = core.from_client(_produce(version, 1, 0) + _produce(version, 2, 1))
        assert held == 0 and core.in_flight == 1
        _, held = core.from_server(_response(2))
        assert core.in_flight == 0
        assert held == (version >= 10), "Produce responses from v10 are held (node endpoints)"


@compiled
def test_attached_state_comes_back_with_the_response() -> None:
    for core in _twins(POLICIES["tracing on"]):
        ((seq, key, version, correlation_id, _, _),) = core.from_client(_produce(9, 5, 1))[0]
        assert (key, version, correlation_id) == (0, 9, 5)
        core.attach(seq, ["state"])
        (item,) = core.from_server(_response(5))[0]
        assert item[:4] == (0, 9, 5, ["state"])


@compiled
def test_forgotten_requests_are_skipped_and_stop_counting_in_flight() -> None:
    for core in _twins(POLICIES["tracing on"]):
        items, _ = core.from_client(_produce(9, 1, 0) + _request(METADATA, 12, 2))
        core.forget(items[0][0])
        assert core.in_flight == 1
        core.from_server(_response(2))
        assert core.in_flight == 0
        with pytest.raises(IndexError):
            core.forget(items[0][0])  # gone once the queue moved past it


@compiled
def test_hold_requests_changes_what_is_handed_over() -> None:
    policy = HoldPolicy(requests={METADATA: (0, 20)}, known_api_keys=frozenset({METADATA}))
    for core in _twins(policy):
        assert core.from_client(_request(METADATA, 12, 1))[1] == 1
        core.hold_requests(METADATA, None)
        assert core.from_client(_request(METADATA, 12, 2))[1] == 0
        core.hold_requests(METADATA, (12, 12))
        assert core.from_client(_request(METADATA, 12, 3))[1] == 1
        assert core.from_client(_request(METADATA, 11, 4))[1] == 0


@compiled
def test_counts_are_per_api_with_unknown_keys_together_and_reset_when_taken() -> None:
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(_request(METADATA, 12, 1) + _request(UNKNOWN, 0, 2, b"zz"))
        core.from_client(_request(-5, 0, 3))
        core.from_server(_response(1) + _response(2) + _response(3, b""))
        stats = dict(core.take_stats())
        assert set(stats) == {METADATA, OTHER_API}
        requests, request_bytes, response_bytes, latency, total = stats[OTHER_API]
        assert (requests, request_bytes, response_bytes) == (2, 18 + 20, 10 + 8)
        assert sum(latency) == 2 and total >= 0
        assert core.take_stats() == []


@compiled
def test_latency_is_counted_in_the_bucket_of_its_bound() -> None:
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(_request(METADATA, 12, 1))
        time.sleep(0.003)
        core.from_server(_response(1))
        ((_, (_, _, _, latency, total)),) = core.take_stats()
        assert 0.003 <= total < 0.05
        bucket = latency.index(1)
        assert POLICIES["tracing off"].latency_buckets[bucket - 1] < total
        assert total <= POLICIES["tracing off"].latency_buckets[bucket]


def test_the_compiled_core_is_the_one_used_when_built() -> None:
    core = pairing_core(POLICIES["tracing off"], 1 << 16)
    expected = "PairingCorePython" if native.compiled is None else "PairingCore"
    assert type(core).__name__ == expected


def _kio_produce(version: int, acks: int, transactional_id: str | None) -> Any:
    module = {3: produce3, 9: produce9, 11: produce11}[version]
    return module.ProduceRequest(
        transactional_id=transactional_id,
        acks=i16(acks),
        timeout=datetime.timedelta(seconds=1),
        topic_data=(),
    )


@pytest.mark.parametrize("version", [3, 9, 11])
@pytest.mark.parametrize("acks", [0, 1, -1])
@pytest.mark.parametrize("transactional_id", [None, "", "tx", "t" * 125])
@pytest.mark.parametrize("client_id", [None, "", "app"])
def test_acks_are_read_as_the_full_parse_reads_them(
    version: int, acks: int, transactional_id: str | None, client_id: str | None
) -> None:
    data = request_frame(_kio_produce(version, acks, transactional_id), 1, client_id)
    body = memoryview(data)[4:]
    header = parse_request_header(body)
    assert header.size is not None
    assert read_produce_acks(body, version) == produce_acks(body, header.size, version) == acks


@pytest.mark.parametrize(
    "reason",
    ["client id not ASCII", "tagged header fields", "long transactional id", "cut short"],
)
def test_acks_the_core_cannot_read_for_sure_are_left_to_the_full_parse(reason: str) -> None:
    client_id = "café" if reason == "client id not ASCII" else "app"
    transactional_id = "t" * 200 if reason == "long transactional id" else "tx"
    data = bytearray(request_frame(_kio_produce(11, 0, transactional_id), 1, client_id))
    if reason == "tagged header fields":
        at = 4 + 10 + len(client_id)
        data[at : at + 1] = b"\x01\x00\x00"  # one empty tagged field
    body = memoryview(bytes(data))[4:]
    if reason == "cut short":
        body = body[:17]
    assert read_produce_acks(body, 11) is None
    policy = POLICIES["tracing off"]
    for core in (pairing_core(policy, 1 << 16), PairingCorePython(policy, 1 << 16)):
        items, held = core.from_client(frame(body))
        assert held == 1 and items[0][:4] == (0, 0, 11, 1), "handed over to the owner"


@compiled
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    st.sampled_from(list(POLICIES)),
)
def test_both_twins_agree_on_any_bytes(
    requests: list[bytes], responses: list[bytes], policy: str
) -> None:
    results: list[list[Any]] = []
    for core in _twins(POLICIES[policy], max_frame_size=64):
        seen = []
        for direction, reads in (("from_client", requests), ("from_server", responses)):
            for data in reads:
                result = _feed(core, direction, data)
                seen.append(result)
                if result[0] == "raised":
                    break  # the connection closes
        results.append([*seen, _stats(core)])
    assert results[0] == results[1]


@compiled
def test_hostile_streams_never_crash_the_compiled_core() -> None:
    rng = random.Random(7)
    make: Callable[[], Any] = lambda: native.compiled.PairingCore(  # type: ignore[union-attr]  # noqa: E731
        POLICIES["tracing on"], 1 << 12, ERRORS
    )
    for _ in range(3000):
        core = make()
        requests, responses = _conversation(rng, rng.randrange(1, 6))
        damaged = bytearray(requests + responses)
        for _ in range(rng.randrange(1, 6)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        for direction in ("from_client", "from_server"):
            for data in _cut(bytes(damaged), rng, 4):
                try:
                    getattr(core, direction)(data)
                except (ProtocolError, FrameTooLarge):
                    break


@compiled
@pytest.mark.parametrize("version", [2, 14])
def test_produce_requests_in_versions_the_core_cannot_read_are_handed_over(version: int) -> None:
    for core in _twins(POLICIES["tracing off"]):
        items, held = core.from_client(_produce(version, 1, 0))
        assert held == 1 and items[0][:4] == (0, 0, version, 1)


@compiled
def test_every_int16_acks_value_is_read() -> None:
    for core in _twins(POLICIES["tracing off"]):
        for acks in (-1000, -32768, 32767, 2):
            assert core.from_client(_produce(11, acks + 40000, acks))[1] == 0


@compiled
def test_a_response_to_a_request_not_yet_sent_whole_is_refused_alike() -> None:
    request = _produce(11, 9, 1)
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(request[:15])
        core.from_server(_response(9))
        with pytest.raises(ProtocolError, match="before its request was sent whole"):
            core.from_client(request[15:])


@compiled
def test_the_compiled_core_takes_part_in_garbage_collection() -> None:
    import gc
    import weakref

    class State:
        core: Any = None

    core = native.compiled.PairingCore(POLICIES["tracing on"], 1 << 16, ERRORS)  # type: ignore[union-attr]
    ((seq, *_),), _ = core.from_client(_produce(9, 1, 1))
    state = State()
    state.core = core
    core.attach(seq, state)
    gone = weakref.ref(state)
    del core, state
    gc.collect()
    assert gone() is None


@compiled
def test_an_uninitialised_compiled_core_refuses_to_work() -> None:
    core = native.compiled.PairingCore.__new__(native.compiled.PairingCore)  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="__init__"):
        core.from_client(b"\x00\x00\x00\x04abcd")


def _produce_response(endpoints: bool) -> Any:
    return produce_response11.ProduceResponse(
        responses=(),
        throttle_time=datetime.timedelta(0),
        node_endpoints=(
            (produce_response11.NodeEndpoint(node_id=i32(5), host="10.0.0.5", port=i32(9092)),)
            if endpoints
            else ()
        ),
    )


@compiled
@pytest.mark.parametrize("endpoints", [False, True])
@pytest.mark.parametrize("api", ["produce", "fetch"])
def test_responses_are_walked_and_handed_over_only_with_node_endpoints(
    api: str, endpoints: bool
) -> None:
    if api == "produce":
        request = _produce(11, 3, 1)
        response = response_frame(_produce_response(endpoints), 3)
    else:
        request = _request(1, 17, 3)
        response = response_frame(fetch_response(16, endpoints=endpoints), 3)
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(request)
        for cut in (len(response), 7, len(response) - 1):  # whole, or split over reads
            items = core.from_server(response[:cut])[0]
            items += core.from_server(response[cut:])[0] if cut < len(response) else []
            held = [item for item in items if type(item) is tuple]
            assert len(held) == endpoints, "handed over only to have its addresses rewritten"
            assert b"".join(bytes(i[FRAME] if type(i) is tuple else i) for i in items) == response
            core.from_client(request)


@compiled
@pytest.mark.parametrize("damage", range(40))
def test_damaged_walked_responses_are_handed_over_alike(damage: int) -> None:
    rng = random.Random(damage)
    response = bytearray(response_frame(fetch_response(16, endpoints=bool(damage % 2)), 3))
    for _ in range(1 + damage % 4):
        response[rng.randrange(8, len(response))] = rng.randrange(256)
    results = []
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(_request(1, 17, 3))
        results.append(_feed(core, "from_server", bytes(response)))
    assert results[0] == results[1]


@compiled
@pytest.mark.parametrize(
    ("version", "endpoints", "verdict"), [(16, False, True), (16, True, False)]
)
def test_responses_the_owner_takes_come_with_the_walks_verdict(
    version: int, endpoints: bool, verdict: bool
) -> None:
    response = response_frame(fetch_response(version, endpoints=endpoints), 3)
    for core in _twins(POLICIES["tracing on"]):
        core.from_client(_request(1, version, 3))
        ((*_, frame, walked),), held = core.from_server(response)
        assert held == 1 and bytes(frame) == response
        assert walked is verdict, "clean: the owner forwards it without walking it again"
    for core in _twins(POLICIES["tracing off"]):
        core.from_client(_request(1, version, 3))
        _, held = core.from_server(response)
        assert held == endpoints, "tracing off: only node endpoints are handed over"


@compiled
@pytest.mark.parametrize("version", [8, 9, 11])
def test_produce_responses_with_state_come_walked_whatever_their_header(version: int) -> None:
    module = import_module(f"kio.schema.produce.v{version}.response")
    response = response_frame(
        module.ProduceResponse(responses=(), throttle_time=datetime.timedelta(0)), 3
    )
    for core in _twins(POLICIES["tracing on"]):
        ((seq, *_),), _ = core.from_client(_produce(version, 3, 1))
        core.attach(seq, "state")
        ((*_, state, frame, walked),), _ = core.from_server(response)
        assert (state, bytes(frame), walked) == ("state", response, True)


def test_connections_with_the_same_kind_of_interceptors_share_one_policy() -> None:
    assert hold_policy(Interceptors()) is hold_policy(Interceptors())
    assert hold_policy(Interceptors([_Tracer()])) is not hold_policy(Interceptors())


# -- the produce lane ----------------------------------------------------------------------

#: The versions the fake lanes below take (the exchange gives the decodable ones, 3..13).
LANE_VERSIONS = (9, 11)
LANE_ERROR = "the produce lane must return None or (frame, records >= 0, transactional id, list)"


def _correlation_id(frame: bytes | memoryview) -> int:
    return int(struct.unpack_from(">i", frame, 8)[0])


class _Lane:
    """A fake produce lane: records the frames it is given (as bytes, with their version)
    and answers what `answer` makes of them, keeping every answer so that tests can check
    the core passes on the very objects it returned."""

    def __init__(self, answer: Callable[[bytes | memoryview, int], Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[bytes, int]] = []
        self.answers: list[Any] = []

    def __call__(self, frame: bytes | memoryview, api_version: int) -> Any:
        self.calls.append((bytes(frame), api_version))
        answer = self.answer(frame, api_version)
        self.answers.append(answer)
        return answer


def _rebuilt(
    frame: bytes | memoryview, api_version: int = 0, *, records: int = 7
) -> tuple[bytes, int, None, list[Any]]:
    """A lane's answer with nothing sampled: a new frame object, records passed on."""
    return b"rebuilt %d" % _correlation_id(frame), records, None, []


def _sampled(frame: bytes | memoryview, api_version: int = 0) -> tuple[bytes, int, str, list[Any]]:
    """A lane's answer with a sampled partition: the owner gets it with the request."""
    return b"sampled %d" % _correlation_id(frame), 3, "tx", [("orders", 1, 30, 40, "injected")]


def _laned(policy: str, lane: Callable[[bytes | memoryview, int], Any]) -> tuple[Any, Any]:
    """Both twins with the same lane function set."""
    cores = _twins(POLICIES[policy])
    for core in cores:
        core.set_produce_lane(lane, LANE_VERSIONS)
    return cores


def _each_with_a_lane(
    policy: str, answer: Callable[[bytes | memoryview, int], Any]
) -> list[tuple[Any, _Lane]]:
    """Both twins, each with its own recording lane answering alike."""
    cores = []
    for core in _twins(POLICIES[policy]):
        lane = _Lane(answer)
        core.set_produce_lane(lane, LANE_VERSIONS)
        cores.append((core, lane))
    return cores


def _flat(items: list[Any]) -> bytes:
    """Every piece's bytes in stream order, a held request by its frame."""
    return b"".join(bytes(item[FRAME] if type(item) is tuple else item) for item in items)


@compiled
@pytest.mark.parametrize("policy", POLICIES)
def test_the_lane_takes_only_produce_requests_of_its_versions(policy: str) -> None:
    """Other versions and other APIs follow the rules they followed before the lane."""
    requests = [
        _produce(3, 1, 1),
        _produce(9, 2, 1),
        _request(METADATA, 9, 3),  # an API other than Produce, in the lane's versions
        _produce(11, 4, -1),
        _produce(13, 5, 1),
        _produce(8, 6, 0),
        _request(API_VERSIONS, 3, 7),
    ]
    results = []
    for core, lane in _each_with_a_lane(policy, _rebuilt):
        items, held = core.from_client(b"".join(requests))
        assert lane.calls == [(requests[1], 9), (requests[3], 11)]
        outside = [item[:4] for item in items if type(item) is tuple and item[1] == 0]
        if policy == "tracing on":  # every Produce held for the interceptors, but not the lane's
            assert outside == [(0, 0, 3, 1), (4, 0, 13, 5), (5, 0, 8, 6)]
        else:  # read for their acks and forwarded
            assert outside == []
        assert lane.answers[0][0] in items and lane.answers[1][0] in items
        results.append((_normal(items), held, core.in_flight, core.take_lane_counts()))
    assert results[0] == results[1]
    assert results[0][3] == (2, 14)


@compiled
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "reason",
    ["client id not ASCII", "tagged header fields", "long transactional id", "cut short"],
)
def test_the_lane_is_not_called_for_a_request_whose_acks_the_core_cannot_read(
    policy: str, reason: str
) -> None:
    """Such a request is handed over as before, for the owner's full parse to judge."""
    client_id = "café" if reason == "client id not ASCII" else "app"
    transactional_id = "t" * 200 if reason == "long transactional id" else "tx"
    data = bytearray(request_frame(_kio_produce(11, 1, transactional_id), 4, client_id))
    if reason == "tagged header fields":
        at = 4 + 10 + len(client_id)
        data[at : at + 1] = b"\x01\x00\x00"  # one empty tagged field
    body = bytes(data[4:])
    if reason == "cut short":
        body = body[:17]
    for core, lane in _each_with_a_lane(policy, _rebuilt):
        items, held = core.from_client(frame(body))
        assert lane.calls == []
        assert held == 1 and _normal(items) == [(0, 0, 11, 4, frame(body), None)]
        assert core.take_lane_counts() == (0, 0)


@compiled
@pytest.mark.parametrize("policy", POLICIES)
def test_a_request_with_nothing_sampled_goes_out_as_the_lane_rebuilt_it(policy: str) -> None:
    """Forwarded in stream order, not handed over; the counts are taken once."""
    requests = [
        _request(METADATA, 12, 1, b"m" * 9),
        _produce(11, 2, 1),
        _request(METADATA, 12, 3),
        _produce(9, 4, -1),
    ]
    results = []
    for core in _twins(POLICIES[policy]):
        lane = _Lane(lambda frame, _: _rebuilt(frame, records=_correlation_id(frame) * 10))
        core.set_produce_lane(lane, LANE_VERSIONS)
        items, held = core.from_client(b"".join(requests))
        assert held == 0 and not any(type(item) is tuple for item in items)
        assert _flat(items) == requests[0] + b"rebuilt 2" + requests[2] + b"rebuilt 4"
        assert any(item is lane.answers[0][0] for item in items), "the lane's own object"
        assert any(item is lane.answers[1][0] for item in items)
        assert core.in_flight == 4
        assert core.take_lane_counts() == (2, 60)
        assert core.take_lane_counts() == (0, 0), "reset when taken"
        items, held = core.from_server(b"".join(_response(i) for i in range(1, 5)))
        assert core.in_flight == 0
        results.append((_normal(items), held, _stats(core)))
    assert results[0] == results[1]
    stats = results[0][2]
    assert stats[0][:3] == (2, len(requests[1]) + len(requests[3]), 2 * len(_response(2)))


@compiled
def test_a_lane_that_sends_the_frame_it_was_given_is_not_counted_as_rewriting() -> None:
    """Only a new frame object counts as a rewritten request; its records count still."""
    given = []

    def same_or_new(frame: bytes | memoryview, version: int) -> Any:
        given.append(frame)
        if _correlation_id(frame) == 1:
            return frame, 5, None, []
        return _rebuilt(frame, records=2)

    for core in _laned("tracing on", same_or_new):
        given.clear()
        items, held = core.from_client(_produce(11, 1, 1))
        assert held == 0 and len(items) == 1 and items[0] is given[0]
        assert core.take_lane_counts() == (0, 5)
        core.from_client(_produce(11, 2, 1) + _produce(9, 3, 1))
        assert core.take_lane_counts() == (2, 4)


@compiled
@pytest.mark.parametrize("version", [9, 11])
def test_acks_zero_requests_the_lane_sends_expect_no_response(version: int) -> None:
    """The core forgets them itself: the next response pairs with the next request."""
    for core in _laned("tracing on", _Lane(_rebuilt)):
        items, held = core.from_client(_produce(version, 1, 0) + _produce(version, 2, 1))
        assert held == 0 and core.in_flight == 1
        assert _flat(items) == b"rebuilt 1rebuilt 2"
        core.from_server(_response(2))
        assert core.in_flight == 0
        core.from_client(_produce(version, 3, 0))
        assert core.in_flight == 0
        core.from_client(_request(METADATA, 12, 4))
        core.from_server(_response(4))  # would be refused were request 3 still awaited
        assert core.in_flight == 0


@compiled
def test_an_acks_zero_request_with_sampled_records_is_left_for_the_owner_to_forget() -> None:
    """Held: the owner reads the lane's result, then forgets it (as the exchange does)."""
    for core in _laned("tracing off", _Lane(_sampled)):
        ((seq, *_, result),), held = core.from_client(_produce(11, 1, 0))
        assert held == 1 and result[3] and core.in_flight == 1
        core.forget(seq)
        core.from_client(_request(METADATA, 12, 2))
        core.from_server(_response(2))
        assert core.in_flight == 0


@compiled
@pytest.mark.parametrize("policy", POLICIES)
def test_a_request_with_sampled_records_is_held_with_the_lanes_result(policy: str) -> None:
    """The lane's result is the sixth item; attach and pairing work as for any held request."""
    request = _produce(11, 5, 1)
    results = []
    for core in _twins(POLICIES[policy]):
        lane = _Lane(_sampled)
        core.set_produce_lane(lane, LANE_VERSIONS)
        items, held = core.from_client(_request(METADATA, 12, 4) + request)
        assert held == 1 and type(items[-1]) is tuple
        seq, key, version, correlation_id, sent, result = items[-1]
        assert (key, version, correlation_id, bytes(sent)) == (0, 11, 5, request)
        assert result is lane.answers[0], "the lane's result as it returned it"
        assert core.take_lane_counts() == (0, 0), "the owner counts what it is handed"
        core.attach(seq, ["state"])
        core.from_server(_response(4))
        (response,), held = core.from_server(_response(5))
        assert held == 1 and response[:4] == (0, 11, 5, ["state"])
        assert core.in_flight == 0
        results.append(_normal(items))
    assert results[0] == results[1]


@compiled
@pytest.mark.parametrize("policy", POLICIES)
def test_a_declined_request_is_held_with_none(policy: str) -> None:
    """None from the lane: the owner's general path takes the request."""
    for core in _laned(policy, lambda frame, version: None):
        ((_, key, version, correlation_id, sent, result),), held = core.from_client(
            _produce(9, 3, -1)
        )
        assert held == 1 and (key, version, correlation_id, result) == (0, 9, 3, None)
        assert bytes(sent) == _produce(9, 3, -1)
        assert core.in_flight == 1 and core.take_lane_counts() == (0, 0)


class _FourFields(tuple):
    """A tuple subclass of the right length: a lane must return a plain tuple."""


@compiled
@pytest.mark.parametrize(
    "answer",
    [
        [b"x", 1, None, []],
        (b"x", 1, None),
        (b"x", 1, None, [], "extra"),
        (b"x", 1, None, ()),
        (b"x", 1, None, None),
        (None, 0, None, []),
        ("frame", 0, None, []),
        (b"x", -1, None, []),
        (b"x", 1 << 64, None, []),
        (b"x", 1.0, None, []),
        _FourFields((b"x", 1, None, [])),
        "a string",
        0,
    ],
    ids=[
        "list",
        "3-tuple",
        "5-tuple",
        "tuple of partitions",
        "no partitions",
        "no frame",
        "str frame",
        "negative records",
        "records past 64 bits",
        "float records",
        "tuple subclass",
        "str",
        "int",
    ],
)
def test_a_lane_returning_anything_else_is_a_type_error(answer: Any) -> None:
    for core in _laned("tracing on", lambda frame, version: answer):
        with pytest.raises(TypeError) as raised:
            core.from_client(_produce(11, 1, 1))
        assert str(raised.value) == LANE_ERROR


@compiled
def test_an_error_raised_by_the_lane_reaches_the_caller() -> None:
    def failing(frame: bytes | memoryview, version: int) -> Any:
        raise ValueError("lane broke")

    for core in _laned("tracing off", failing):
        with pytest.raises(ValueError, match="lane broke"):
            core.from_client(_produce(11, 1, 1))


@compiled
@pytest.mark.parametrize("policy", POLICIES)
def test_setting_the_lane_to_none_switches_it_off(policy: str) -> None:
    lane = _Lane(_rebuilt)
    for core in _laned(policy, lane):
        core.set_produce_lane(None, LANE_VERSIONS)
        items, held = core.from_client(_produce(11, 1, 1) + _produce(9, 2, 0))
        assert held == (2 if policy == "tracing on" else 0), "as without a lane"
        assert all(item[5] is None for item in items if type(item) is tuple)
        assert _flat(items) == _produce(11, 1, 1) + _produce(9, 2, 0)
        assert core.take_lane_counts() == (0, 0)
    assert lane.calls == []


def _mixed_lane(frame: bytes | memoryview, version: int) -> Any:
    """Sampled, rebuilt or declined, by correlation id: a lane that does all three."""
    kind = _correlation_id(frame) % 3
    if kind == 0:
        return _sampled(frame)
    return _rebuilt(frame, records=version) if kind == 1 else None


def _lane_conversation(rng: random.Random, count: int) -> tuple[list[bytes], list[bytes]]:
    """Produce requests of several versions and acks among other requests; the responses."""
    requests, responses = [], []
    for correlation_id in range(1, count + 1):
        if rng.randrange(3):
            acks = rng.choice([0, 1, -1])
            requests.append(_produce(rng.choice([3, 9, 10, 11, 13]), correlation_id, acks))
            if acks == 0:
                continue
        else:
            requests.append(_request(METADATA, 12, correlation_id, b"x" * rng.randrange(40)))
        responses.append(_response(correlation_id, b"\x00" * rng.randrange(2, 30)))
    return requests, responses


@compiled
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(25))
def test_requests_split_across_reads_reach_the_lane_whole(policy: str, seed: int) -> None:
    """However the reads cut the stream, both twins give the lane the same whole frames and
    put out the same pieces, in stream order."""
    rng = random.Random(seed)
    requests, responses = _lane_conversation(rng, rng.randrange(1, 20))
    reads = _cut(b"".join(requests), rng, rng.randrange(0, 15))
    response_reads = _cut(b"".join(responses), rng, rng.randrange(0, 6))
    results = []
    for core in _twins(POLICIES[policy]):
        lane = _Lane(_mixed_lane)
        core.set_produce_lane(lane, LANE_VERSIONS)
        seen = [_feed(core, "from_client", data) for data in reads]
        counts = core.take_lane_counts()
        seen += [_feed(core, "from_server", data) for data in response_reads]
        results.append((seen, lane.calls, counts, _stats(core), core.in_flight))
        laned = [
            request
            for request in requests
            if request[4:6] == b"\x00\x00" and 9 <= struct.unpack_from(">h", request, 6)[0] <= 11
        ]
        assert [frame for frame, _ in lane.calls] == laned, "whole, once each, in order"
        expected = b"".join(
            _rebuilt(request)[0]
            if request in laned and _correlation_id(request) % 3 == 1
            else request
            for request in requests
        )
        assert b"".join(_flat(result[0]) for result in seen[: len(reads)]) == expected
    assert results[0] == results[1]
    assert results[0][-1] == 0, "every request that expects a response got it"


@compiled
def test_a_lane_removed_while_a_request_comes_in_leaves_it_to_the_owner() -> None:
    """A request classified for the lane whose last bytes arrive after the lane was removed
    is handed over, unread, as any request the lane declines."""
    request = _produce(11, 1, 1)
    outcomes = []
    for core, lane in _each_with_a_lane("tracing on", _rebuilt):
        core.from_client(request[:12])
        core.set_produce_lane(None, LANE_VERSIONS)
        items, held = core.from_client(request[12:])
        assert held == 1
        assert lane.calls == []
        outcomes.append(_normal(items))
    assert outcomes[0] == outcomes[1]
    ((_, key, version, correlation_id, sent, lane_result),) = outcomes[0]
    assert (key, version, correlation_id, sent, lane_result) == (0, 11, 1, request, None)


@compiled
@pytest.mark.parametrize("answer", ["declined", "rebuilt", "sampled"])
def test_a_lane_that_calls_back_into_the_core_is_safe(answer: str) -> None:
    """The lane is the owner's code: while it runs, the core may be fed more requests (its
    ring of pending requests grows and moves) or lose its lane; the request in hand is still
    answered from its own entry, and both twins agree."""
    outcomes = []
    for core in _twins(POLICIES["tracing on"]):
        inner: list[Any] = []

        def lane(
            frame: bytes | memoryview, version: int, core: Any = core, inner: list[Any] = inner
        ) -> Any:
            if not inner:
                # Enough requests to make the ring grow, then the lane goes away.
                inner.append(
                    core.from_client(b"".join(_request(METADATA, 12, 100 + i) for i in range(40)))
                )
                core.set_produce_lane(None, LANE_VERSIONS)
            return {"declined": None, "rebuilt": _rebuilt(frame), "sampled": _sampled(frame)}[
                answer
            ]

        core.set_produce_lane(lane, LANE_VERSIONS)
        items, held = core.from_client(_produce(11, 1, 0))
        outcomes.append((_normal(items), held, core.in_flight, _normal(inner[0][0])))
        # The next produce request is no longer the lane's.
        later, _ = core.from_client(_produce(11, 2, 1))
        assert [item[5] for item in later if type(item) is tuple] == [None]
    assert outcomes[0] == outcomes[1]
    items, held, in_flight, _ = outcomes[0]
    if answer == "rebuilt":
        assert (items, held) == ([b"rebuilt 1"], 0)
        assert in_flight == 40, "the acks=0 request was forgotten, the 40 others wait"
    else:
        ((seq, key, version, correlation_id, _, lane_result),) = items
        assert (seq, key, version, correlation_id) == (0, 0, 11, 1)
        assert lane_result == (
            None if answer == "declined" else _normal([_sampled(_produce(11, 1, 0))])[0]
        )


# -- the fetch lane -------------------------------------------------------------------------

#: The versions and the size the fake fetch lanes below take.
FETCH_LANE_VERSIONS = (17, 17)
FETCH_LANE_MAX = 1000


class _FetchLane:
    """A fake fetch lane: notes what it is given (as bytes, with the version) and answers
    `answer(frame)`: a list (the response goes out, the list kept) or None (handed over)."""

    def __init__(self, answer: Callable[[bytes], Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[bytes, int]] = []

    def __call__(self, frame: bytes | memoryview, version: int) -> Any:
        self.calls.append((bytes(frame), version))
        return self.answer(bytes(frame))


def _fetch_laned(answer: Callable[[bytes], Any]) -> list[tuple[Any, _FetchLane]]:
    """Both twins under the tracing policy, each with its own fetch lane answering alike."""
    cores = []
    for core in _twins(POLICIES["tracing on"]):
        lane = _FetchLane(answer)
        core.set_fetch_lane(lane, FETCH_LANE_VERSIONS, FETCH_LANE_MAX)
        cores.append((core, lane))
    return cores


def _fetch_frame(version: int, correlation_id: int, *, endpoints: bool = False) -> bytes:
    return response_frame(fetch_response(version, endpoints=endpoints), correlation_id)


@compiled
def test_a_fetch_response_the_lane_takes_goes_out_as_it_came_and_leaves_its_result() -> None:
    response = _fetch_frame(17, 3)
    for core, lane in _fetch_laned(lambda frame: [("figures of", len(frame))]):
        core.from_client(_request(1, 17, 3))
        for cut in (len(response), 9):  # whole, or split over reads
            items = core.from_server(response[:cut])[0]
            rest, held = core.from_server(response[cut:]) if cut < len(response) else ([], 0)
            items += rest
            assert held == 0, "not handed over"
            assert b"".join(bytes(item) for item in items) == response
            assert lane.calls[-1] == (response, 17)
            assert core.fetch_skims == [(len(items) - 1, [("figures of", len(response))])]
            core.fetch_skims.clear()
            core.from_client(_request(1, 17, 3))


@compiled
def test_a_fetch_response_the_lane_declines_is_handed_over_with_its_verdict() -> None:
    response = _fetch_frame(17, 3)
    for core, lane in _fetch_laned(lambda frame: None):
        core.from_client(_request(1, 17, 3))
        ((*_, frame, walked),), held = core.from_server(response)
        assert (held, bytes(frame), walked) == (1, response, True)
        assert lane.calls == [(response, 17)]
        assert core.fetch_skims == []


@compiled
@pytest.mark.parametrize(
    "case", ["endpoints", "older version", "newer version", "other api", "no lane"]
)
def test_the_fetch_lane_sees_only_clean_fetch_responses_of_its_versions_and_size(
    case: str,
) -> None:
    """Node endpoints (to be rewritten), other versions, other APIs, or a lane taken away:
    handed over as without a lane, the lane never called."""
    version = {"older version": 16, "newer version": 18}.get(case, 17)
    key = METADATA if case == "other api" else 1
    if case == "other api":
        response = _response(3)
    else:
        response = _fetch_frame(version, 3, endpoints=case == "endpoints")
    results = []
    for core, lane in _fetch_laned(lambda frame: []):
        if case == "no lane":
            core.set_fetch_lane(None, FETCH_LANE_VERSIONS, FETCH_LANE_MAX)
        core.from_client(_request(key, version if key == 1 else 12, 3))
        items, held = core.from_server(response)
        assert lane.calls == [] and core.fetch_skims == []
        assert b"".join(bytes(i[FRAME] if type(i) is tuple else i) for i in items) == response
        results.append((_normal(items), held))
    assert results[0] == results[1]
    assert results[0][1] == 1, "handed over, as the tracing policy hands them all over"


@compiled
@pytest.mark.parametrize("over", [0, 1])
def test_the_fetch_lane_sees_responses_up_to_its_size(over: int) -> None:
    response = large_fetch_frame(3, 500, version=17)
    results = []
    for core, lane in _fetch_laned(lambda frame: []):
        core.set_fetch_lane(lane, FETCH_LANE_VERSIONS, len(response) - 4 - over)
        core.from_client(_request(1, 17, 3))
        items, held = core.from_server(response)
        assert len(lane.calls) == 1 - over
        assert held == over
        results.append((_normal(items), held, core.fetch_skims))
    assert results[0] == results[1]


@compiled
def test_the_fetch_lanes_results_say_where_their_responses_are_among_the_others() -> None:
    """Three Fetch responses in one read, the middle one declined: the owner can keep their
    order (the skimmed ones are at positions 0 and 2, the held one at 1)."""
    responses = [_fetch_frame(17, n) for n in (1, 2, 3)]
    declined = responses[1]
    for core, lane in _fetch_laned(lambda frame: None if frame == declined else [frame[4:8]]):
        core.from_client(b"".join(_request(1, 17, n) for n in (1, 2, 3)))
        items, held = core.from_server(b"".join(responses))
        assert held == 1 and type(items[1]) is tuple and bytes(items[1][FRAME]) == declined
        assert [bytes(items[0]), bytes(items[2])] == [responses[0], responses[2]]
        assert core.fetch_skims == [(0, [responses[0][4:8]]), (2, [responses[2][4:8]])]
        assert [call[0] for call in lane.calls] == responses


@compiled
def test_a_failing_fetch_lane_fails_the_read_alike() -> None:
    def failing(frame: bytes) -> Any:
        raise RuntimeError("the lane broke")

    for core, _ in _fetch_laned(failing):
        core.from_client(_request(1, 17, 3))
        with pytest.raises(RuntimeError, match="the lane broke"):
            core.from_server(_fetch_frame(17, 3))
