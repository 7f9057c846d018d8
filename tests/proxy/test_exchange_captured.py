"""KafkaExchange replaying real client conversations (tests/fixtures/captured), in many chunkings.

Each connection a real client opened is fed through a fresh exchange in the recorded order:
requests through `from_client`, responses through `from_server`, split at frame boundaries, into
single bytes, or at random. With no interceptor registered the proxy must change nothing but
broker addresses (Metadata, FindCoordinator, DescribeCluster, KIP-951 node endpoints) and the
ApiVersions ranges it cannot parse, and must end with nothing in flight.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec.apis import DECODED, ApiKey, supported_versions
from proxy.codec.framing import SIZE_PREFIX
from proxy.codec.headers import parse_request_header
from proxy.codec.messages import decode_request, decode_response
from proxy.exchange import KafkaExchange
from proxy.interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from proxy.metrics import Metrics

CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "captured"

ADVERTISED_HOST = "sidecar.proxy.test"
PORTS = PortMapping(base_port=39000, explicit={})
ADDRESS_LISTS = {ApiKey.METADATA: "brokers", ApiKey.DESCRIBE_CLUSTER: "brokers"}
ID_FIELDS = {ApiKey.METADATA: "node_id", ApiKey.DESCRIBE_CLUSTER: "broker_id"}


@dataclass(frozen=True, eq=False)
class Frame:
    entry: dict[str, Any]
    data: bytes  # size prefix included

    @property
    def is_request(self) -> bool:
        return self.entry["direction"] == "request"

    @property
    def api(self) -> tuple[int, int]:
        return self.entry["api_key"], self.entry["api_version"]


@dataclass(frozen=True, eq=False)
class Conversation:
    """The kept frames of one connection, in the order they crossed the wire."""

    name: str
    frames: tuple[Frame, ...]

    def runs(self) -> list[tuple[bool, list[Frame]]]:
        """Consecutive frames in one direction: (is_request, frames)."""
        runs: list[tuple[bool, list[Frame]]] = []
        for frame in self.frames:
            if runs and runs[-1][0] == frame.is_request:
                runs[-1][1].append(frame)
            else:
                runs.append((frame.is_request, [frame]))
        return runs


@cache
def conversations() -> tuple[Conversation, ...]:
    found = []
    for index_path in sorted(CAPTURED.glob("*/index.json")):
        index = json.loads(index_path.read_text())
        by_connection: dict[int, list[Frame]] = {}
        for entry in index["frames"]:
            data = (index_path.parent / entry["file"]).read_bytes()
            by_connection.setdefault(entry["connection"], []).append(Frame(entry, data))
        for number, (connection, frames) in enumerate(sorted(by_connection.items())):
            del connection
            found.append(Conversation(f"{index_path.parent.name}/conn{number}", tuple(frames)))
    return tuple(found)


# -- chunkings ------------------------------------------------------------------------------------

Chunker = Callable[[list[Frame], random.Random], Iterator[bytes]]


def _whole_frames(frames: list[Frame], rng: random.Random) -> Iterator[bytes]:
    for frame in frames:
        yield frame.data


def _whole_runs(frames: list[Frame], rng: random.Random) -> Iterator[bytes]:
    yield b"".join(f.data for f in frames)


def _single_bytes(frames: list[Frame], rng: random.Random) -> Iterator[bytes]:
    data = b"".join(f.data for f in frames)
    for i in range(len(data)):
        yield data[i : i + 1]


def _random_splits(frames: list[Frame], rng: random.Random) -> Iterator[bytes]:
    data = b"".join(f.data for f in frames)
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 5, 7, rng.randint(1, 64), rng.randint(1, 4096)))
        yield data[pos : pos + step]
        pos += step


CHUNKINGS: dict[str, tuple[Chunker, int]] = {
    "frames": (_whole_frames, 0),
    "runs": (_whole_runs, 0),
    "bytes": (_single_bytes, 0),
    "random1": (_random_splits, 1),
    "random2": (_random_splits, 2),
    "random3": (_random_splits, 3),
}

#: 1-byte feeding is for short conversations (a slow way to replay 10 KB of Fetch responses).
SHORT_CONVERSATION = 8000


# -- replay ---------------------------------------------------------------------------------------


@dataclass
class Replay:
    conversation: Conversation
    #: (frames fed, bytes that came out) for each run of one direction.
    requests: list[tuple[list[Frame], bytes]]
    responses: list[tuple[list[Frame], bytes]]
    in_flight: int
    after_send: int


def _new_exchange() -> KafkaExchange:
    return KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 50000), BrokerEndpoint(1, "127.0.0.1", 9092)),
        brokers=BrokerDirectory(ADVERTISED_HOST, PORTS),
        topics=TopicNames(),
        interceptors=Interceptors(),
        metrics=Metrics(),
        max_frame_size=1 << 24,
    )


@cache
def replay(conversation: Conversation, chunking: str) -> Replay:
    chunker, seed = CHUNKINGS[chunking]
    rng = random.Random(f"{conversation.name}/{seed}")
    exchange = _new_exchange()
    result = Replay(conversation, [], [], 0, 0)
    for is_request, frames in conversation.runs():
        feed = exchange.from_client if is_request else exchange.from_server
        out = bytearray()
        for chunk in chunker(frames, rng):
            outcome = feed(chunk)
            for piece in outcome.send:
                out += piece
            result.after_send += len(outcome.after_send)
        (result.requests if is_request else result.responses).append((frames, bytes(out)))
    result.in_flight = exchange.in_flight
    return result


def _split_frames(data: bytes) -> list[bytes]:
    frames = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + SIZE_PREFIX], "big")
        frames.append(data[pos : pos + SIZE_PREFIX + size])
        pos += SIZE_PREFIX + size
    assert pos == len(data), "output ends inside a frame"
    return frames


def _response_pairs(result: Replay) -> Iterator[tuple[Frame, bytes]]:
    for frames, out in result.responses:
        sent = _split_frames(out)
        assert len(sent) == len(frames)
        yield from zip(frames, sent, strict=True)


# -- what the proxy may change --------------------------------------------------------------------


def _decodable(api_key: int, version: int) -> bool:
    limits = supported_versions(api_key)
    return api_key in DECODED and limits is not None and limits[0] <= version <= limits[1]


def _decoded(frame_data: bytes, api: tuple[int, int]) -> tuple[bytes, Any]:
    body = memoryview(frame_data)[SIZE_PREFIX:]
    header_size, payload = decode_response(*api, body)
    return bytes(body[:header_size]), payload


def _node_endpoints(payload: Any) -> tuple[Any, ...]:
    return getattr(payload, "node_endpoints", None) or ()


def carries_addresses(api: tuple[int, int], payload: Any) -> bool:
    key = api[0]
    if key in (ApiKey.METADATA, ApiKey.DESCRIBE_CLUSTER):
        return bool(payload.brokers)
    if key == ApiKey.FIND_COORDINATOR:
        if hasattr(payload, "coordinators"):
            return any(c.node_id >= 0 for c in payload.coordinators)
        return payload.node_id >= 0
    return bool(_node_endpoints(payload))


def _swap_back(
    entries: tuple[Any, ...], originals: tuple[Any, ...], id_field: str
) -> tuple[Any, ...]:
    """`entries` with the original host/port put back, after checking they were the proxy's."""
    assert len(entries) == len(originals)
    restored = []
    for entry, original in zip(entries, originals, strict=True):
        node_id = getattr(entry, id_field)
        assert node_id == getattr(original, id_field)
        if node_id < 0:  # "no coordinator": left alone
            assert entry == original
        else:
            assert (entry.host, entry.port) == (ADVERTISED_HOST, PORTS.port_for(node_id))
            entry = dataclasses.replace(entry, host=original.host, port=original.port)
        restored.append(entry)
    return tuple(restored)


def swap_addresses_back(api: tuple[int, int], sent: Any, original: Any) -> Any:
    key = api[0]
    changes: dict[str, Any] = {}
    if key in ADDRESS_LISTS:
        field = ADDRESS_LISTS[key]
        changes[field] = _swap_back(getattr(sent, field), getattr(original, field), ID_FIELDS[key])
    elif key == ApiKey.FIND_COORDINATOR:
        if hasattr(sent, "coordinators"):
            changes["coordinators"] = _swap_back(
                sent.coordinators, original.coordinators, "node_id"
            )
        elif original.node_id >= 0:
            assert (sent.host, sent.port) == (ADVERTISED_HOST, PORTS.port_for(sent.node_id))
            changes.update(host=original.host, port=original.port)
    if _node_endpoints(original):
        changes["node_endpoints"] = _swap_back(
            sent.node_endpoints, original.node_endpoints, "node_id"
        )
    return dataclasses.replace(sent, **changes)


def narrowed_api_versions(original: Any) -> Any:
    """The ApiVersions response as proxy/codec/api_versions.py documents the proxy sends it."""
    kept = []
    for entry in original.api_keys:
        limits = supported_versions(entry.api_key) if entry.api_key in DECODED else None
        if limits is None:  # never decoded: the broker's range passes through
            kept.append(entry)
            continue
        # Produce keeps the broker's minimum (Kafka 4 advertises v0 for librdkafka's sake).
        low = (
            entry.min_version
            if entry.api_key == ApiKey.PRODUCE
            else max(entry.min_version, limits[0])
        )
        high = min(entry.max_version, limits[1])
        if low > high:
            continue  # nothing in common: removed
        kept.append(
            dataclasses.replace(
                entry,
                min_version=type(entry.min_version)(low),
                max_version=type(entry.max_version)(high),
            )
        )
    return dataclasses.replace(original, api_keys=tuple(kept))


# -- parametrisation ------------------------------------------------------------------------------


def _conversation_size(conversation: Conversation) -> int:
    return sum(len(f.data) for f in conversation.frames)


def _is_acks0_produce(frame: Frame) -> bool:
    if not frame.is_request or frame.api[0] != ApiKey.PRODUCE:
        return False
    body = memoryview(frame.data)[SIZE_PREFIX:]
    header = parse_request_header(body)
    return decode_request(*frame.api, body, header.size).acks == 0


def _ends_with_unanswered_acks0_produce(conversation: Conversation) -> bool:
    """An acks=0 Produce with no response of any request after it on the connection."""
    for frame in reversed(conversation.frames):
        if not frame.is_request:
            return False
        if _is_acks0_produce(frame):
            return True
    return False


def unanswered_requests(conversation: Conversation) -> int:
    """Requests still waiting when the capture ended: the client closed before their response
    came (a consumer leaving during a long-poll Fetch). acks=0 produces never get one."""
    answered = {f.entry["correlation_id"] for f in conversation.frames if not f.is_request}
    return sum(
        1
        for f in conversation.frames
        if f.is_request and f.entry["correlation_id"] not in answered and not _is_acks0_produce(f)
    )


def _cases(
    select: Callable[[Conversation], bool] = lambda c: True,
    in_flight_check: bool = False,
) -> list[Any]:
    cases = []
    for conversation in conversations():
        if not select(conversation):
            continue
        for chunking in CHUNKINGS:
            if chunking == "bytes" and _conversation_size(conversation) > SHORT_CONVERSATION:
                continue
            cases.append(pytest.param(conversation, chunking, id=f"{conversation.name}-{chunking}"))
    return cases


def _has_api_versions(conversation: Conversation) -> bool:
    return any(not f.is_request and f.api[0] == ApiKey.API_VERSIONS for f in conversation.frames)


def _has_addresses(conversation: Conversation) -> bool:
    return any(
        not f.is_request
        and f.api[0] != ApiKey.API_VERSIONS
        and _decodable(*f.api)
        and carries_addresses(f.api, _decoded(f.data, f.api)[1])
        for f in conversation.frames
    )


def test_every_captured_set_is_replayed() -> None:
    names = {c.name.split("/")[0] for c in conversations()}
    assert len(names) >= 4, "run tests/fixtures/capture_frames.py"
    assert sum(_has_addresses(c) for c in conversations()) >= len(names)


@pytest.mark.parametrize(("conversation", "chunking"), _cases())
def test_requests_come_out_byte_identical(conversation: Conversation, chunking: str) -> None:
    result = replay(conversation, chunking)
    for frames, out in result.requests:
        assert out == b"".join(f.data for f in frames)
    assert result.after_send == 0  # no interceptor, nothing to run after sending


@pytest.mark.parametrize(("conversation", "chunking"), _cases())
def test_responses_without_broker_addresses_or_narrowing_come_out_byte_identical(
    conversation: Conversation, chunking: str
) -> None:
    for frame, sent in _response_pairs(replay(conversation, chunking)):
        if _decodable(*frame.api):
            payload = _decoded(frame.data, frame.api)[1]
            if frame.api[0] == ApiKey.API_VERSIONS:
                if narrowed_api_versions(payload) != payload:
                    continue
            elif carries_addresses(frame.api, payload):
                continue
        assert sent == frame.data, frame.entry["file"]


@pytest.mark.parametrize(("conversation", "chunking"), _cases(_has_addresses))
def test_broker_addresses_are_replaced_and_nothing_else_changes(
    conversation: Conversation, chunking: str
) -> None:
    rewritten = 0
    for frame, sent in _response_pairs(replay(conversation, chunking)):
        if not _decodable(*frame.api):
            continue
        header, original = _decoded(frame.data, frame.api)
        if frame.api[0] == ApiKey.API_VERSIONS or not carries_addresses(frame.api, original):
            continue
        sent_header, payload = _decoded(sent, frame.api)
        assert sent_header == header
        assert swap_addresses_back(frame.api, payload, original) == original, frame.entry["file"]
        rewritten += 1
    assert rewritten


@pytest.mark.parametrize(("conversation", "chunking"), _cases(_has_api_versions))
def test_api_versions_are_only_narrowed_as_documented(
    conversation: Conversation, chunking: str
) -> None:
    for frame, sent in _response_pairs(replay(conversation, chunking)):
        if frame.api[0] != ApiKey.API_VERSIONS:
            continue
        header, original = _decoded(frame.data, frame.api)
        expected = narrowed_api_versions(original)
        if expected == original:
            assert sent == frame.data
            continue
        sent_header, payload = _decoded(sent, frame.api)
        assert sent_header == header
        assert payload == expected


@pytest.mark.parametrize(("conversation", "chunking"), _cases(in_flight_check=True))
def test_in_flight_ends_at_zero_once_every_response_is_back(
    conversation: Conversation, chunking: str
) -> None:
    assert replay(conversation, chunking).in_flight == unanswered_requests(conversation)
