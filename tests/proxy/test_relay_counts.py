"""The relay's byte and request counts: kept off the hot path, yet exact whenever they are read."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource

from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.config import HostPort, load_settings
from proxy.exchange import KafkaExchange, Outcome
from proxy.groups import GroupDirectory
from proxy.interceptors import Interceptors
from proxy.metrics import Metrics
from proxy.relay import ClientConnection, Runtime, ServerConnection
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.core import TracingCore
from proxy.tracing.propagation import Propagation
from proxy.tracing.sampling import sampler_from_env

from . import test_fetch_skim_exchange as skims
from .collected import CollectedSpans
from .messages import large_fetch_frame, large_produce_frame, request_frame, response_frame
from .test_exchange import (
    ApiVersionsRequest,
    MetadataRequest,
    _api_versions,
    _fetch_request,
    _metadata_response,
)


class _Transport:
    """Records what the relay writes and which protocol it reads through; never pushes back."""

    def __init__(self, protocol: Any = None) -> None:
        self.written = bytearray()
        self.protocol = protocol
        self.restarts = 0
        self.reading = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, pieces: Any) -> None:
        for piece in pieces:
            self.written += piece

    def set_write_buffer_limits(self, high: int | None = None) -> None: ...
    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.restarts += 1
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555)

    def close(self) -> None: ...


def _connection(
    metrics: Metrics, settings: dict[str, str] | None = None, interceptors: Sequence[object] = ()
) -> tuple[ClientConnection, _Transport, _Transport]:
    """A relayed connection wired to fake transports (its dial to the broker never runs): the
    client connection, and its transports to the broker and to the client."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_connected(metrics, settings or {}, interceptors))
    finally:
        loop.close()


async def _connected(
    metrics: Metrics, settings: dict[str, str], interceptors: Sequence[object]
) -> tuple[ClientConnection, _Transport, _Transport]:
    runtime = Runtime(
        load_settings({"KTP_UPSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:9092", **settings}),
        BrokerDirectory("127.0.0.1", PortMapping(20000, {})),
        TopicNames(),
        GroupDirectory(),
        Interceptors(list(interceptors)),
        metrics,
        set(),
    )
    client = ClientConnection(runtime, 1, lambda: [])
    client_side = _Transport(client)
    client.connection_made(client_side)  # type: ignore[arg-type]
    assert client._connect_task is not None
    client._connect_task.cancel()  # attached by hand below
    await asyncio.sleep(0)
    broker_side = _Transport()
    broker_side.protocol = ServerConnection(client)
    client._attach_server(broker_side, HostPort("127.0.0.1", 9092))  # type: ignore[arg-type]
    return client, broker_side, client_side


def _read_into(transport: _Transport, data: bytes, read_size: int = 1 << 18) -> list[Any]:
    """A peer's bytes as the event loop hands them to whichever protocol `transport` reads
    through at the time, in reads of up to `read_size`: as bytes, or into the buffer a buffered
    protocol gives. What each read went into, in order: "bytes", or that buffer."""
    reads: list[Any] = []
    pos = 0
    while pos < len(data):
        protocol = transport.protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            buffer = protocol.get_buffer(-1)
            size = min(len(buffer), read_size, len(data) - pos)
            buffer[:size] = data[pos : pos + size]
            protocol.buffer_updated(size)
            reads.append(buffer)
        else:
            size = min(read_size, len(data) - pos)
            protocol.data_received(data[pos : pos + size])
            reads.append("bytes")
        pos += size
    return reads


def _bytes(metrics: Metrics, direction: str) -> float:
    return metrics.value("bytes", direction=direction)


def test_counts_are_exact_when_read_during_and_after_a_connection() -> None:
    metrics = Metrics()
    client, server, client_side = _connection(metrics)
    request = MetadataRequest(
        topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
    )
    sent = request_frame(request, 1)
    client.data_received(sent)
    assert _bytes(metrics, "client_to_proxy") == len(sent)
    assert _bytes(metrics, "proxy_to_server") == len(sent)
    assert metrics.value("requests", api_key=3) == 1
    answer = response_frame(_metadata_response(), 1)
    _read_into(server, answer)
    assert _bytes(metrics, "server_to_proxy") == len(answer)
    assert _bytes(metrics, "proxy_to_client") == len(client_side.written)  # addresses rewritten
    client.data_received(sent[:14])  # a request still arriving when the connection closes
    client.close()
    assert _bytes(metrics, "client_to_proxy") == len(sent) + 14
    assert metrics.value("requests", api_key=3) == 2
    assert metrics.value("response_bytes", api_key=3) == len(answer)
    counts = {dict(labels)["api_key"]: n for _, labels, _, _, n in metrics.histograms()}
    assert counts == {"3": 1}, "one latency observed: the answered request"


def test_a_closed_connection_is_no_longer_asked_for_counts() -> None:
    metrics = Metrics()
    client, _, _ = _connection(metrics)
    assert len(metrics._sources) == 2  # the connection and its exchange
    client.close()
    assert len(metrics._sources) == 0
    del client
    gc.collect()
    assert metrics.value("bytes", direction="client_to_proxy") == 0


def test_the_rest_of_a_large_response_is_read_straight_into_its_frame() -> None:
    """A 1 MiB Fetch response in 64 KiB reads: the first comes as bytes, the rest goes into the
    frame being assembled; the client gets the response byte for byte, and the reads go back to
    bytes for the next, small, response."""
    metrics = Metrics()
    client, server, client_side = _connection(metrics)
    own = server.protocol
    client.data_received(request_frame(_fetch_request(), 1))
    client.data_received(request_frame(_fetch_request(), 2))
    large, small = large_fetch_frame(1, 1 << 20), large_fetch_frame(2, 10)
    reads = _read_into(server, large + small, read_size=1 << 16)
    assert bytes(client_side.written) == large + small
    assert reads[0] == "bytes" and reads[-1] == "bytes"
    in_place = reads[1:-1]
    assert len(in_place) == len(large) // (1 << 16), "every read after the first"
    assert all(type(b) is memoryview for b in in_place)
    assert len({id(b.obj) for b in in_place}) == 1, "all into the one frame"
    assert server.protocol is own and server.restarts == 2, "in place and back, reads restarted"
    assert _bytes(metrics, "server_to_proxy") == len(large) + len(small)
    assert _bytes(metrics, "proxy_to_client") == len(large) + len(small)


def test_a_connection_closed_during_a_large_response_lets_go_of_its_frame() -> None:
    """The client leaves while a 1 MiB Fetch response is read in place: the frame is dropped
    when the connection closes, not whenever the collector frees the connection."""
    client, server, _ = _connection(Metrics())
    client.data_received(request_frame(_fetch_request(), 1))
    large = large_fetch_frame(1, 1 << 20)
    _read_into(server, large[: 1 << 18], read_size=1 << 16)
    exchange = client._exchange
    assert exchange is not None
    frame = exchange.response_buffer()
    assert frame is not None, "the rest is being read in place"
    frame = frame.obj
    kept = sys.getrefcount(frame)
    client.connection_lost(None)
    assert sys.getrefcount(frame) == kept - 1
    assert exchange.response_buffer() is None


def test_a_large_response_read_in_place_is_rewritten_as_when_fed_whole() -> None:
    """A Metadata response of 3,000 topics (over 64 KiB) read in 16 KiB reads, most of them
    into its frame: its broker addresses are rewritten exactly as when it arrives in one read."""
    topics = _metadata_response().topics[0]
    many = dataclasses.replace(
        _metadata_response(),
        topics=tuple(dataclasses.replace(topics, name=f"orders-{n:05}") for n in range(3000)),
    )
    answer = response_frame(many, 1)
    assert len(answer) > (1 << 16) + (1 << 14)
    request = MetadataRequest(
        topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
    )
    written = []
    for read_size in (len(answer), 1 << 14):
        client, server, client_side = _connection(Metrics())
        client.data_received(request_frame(request, 1))
        buffers = _read_into(server, answer, read_size=read_size)
        written.append(bytes(client_side.written))
        assert any(type(b) is memoryview for b in buffers) == (read_size < len(answer))
        assert isinstance(server.protocol, ServerConnection), "reads went back to bytes"
    assert written[0] == written[1] != answer  # rewritten, the same way


def test_the_rest_of_a_large_request_is_read_straight_into_its_frame() -> None:
    """A 1 MiB Produce request in 64 KiB reads goes to the broker byte for byte, most of it
    read into its frame; the small request after it comes as bytes again."""
    metrics = Metrics()
    client, broker_side, client_side = _connection(metrics)
    large = large_produce_frame(1, 1 << 20)
    small = request_frame(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
        ),
        2,
    )
    reads = _read_into(client_side, large + small, read_size=1 << 16)
    assert bytes(broker_side.written) == large + small
    in_place = [b for b in reads if type(b) is memoryview]
    assert len(in_place) == len(large) // (1 << 16)
    assert len({id(b.obj) for b in in_place}) == 1, "all into the one frame"
    assert reads[-1] == "bytes" and client_side.protocol is client
    assert (
        _bytes(metrics, "client_to_proxy")
        == _bytes(metrics, "proxy_to_server")
        == len(large + small)
    )
    assert client.in_flight == 2


@pytest.mark.parametrize("side", ["client", "broker"])
def test_a_failure_once_the_bytes_went_out_closes_the_connection(
    side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the exchange runs after a send (tracing's bookkeeping) failing with a bug: the
    bytes already went out and are counted, the connection closes and the error is counted,
    as for a failure before the send."""

    def failing() -> None:
        raise RuntimeError("a bug in what runs once the bytes went out")

    def passing_on(self: KafkaExchange, pieces: list[Any], held: int) -> Outcome:
        outcome = Outcome([b"0123"])
        outcome.after_send.append(failing)
        return outcome

    metrics = Metrics()
    client, server, client_side = _connection(metrics)
    # ApiVersions requests and their responses are held frames: they reach the exchange.
    request = request_frame(
        ApiVersionsRequest(client_software_name="t", client_software_version="1"), 1
    )
    if side == "client":
        monkeypatch.setattr(KafkaExchange, "request_outcome", passing_on)
        client_side.protocol.data_received(request)
    else:
        client_side.protocol.data_received(request)
        monkeypatch.setattr(KafkaExchange, "response_outcome", passing_on)
        server.written.clear()
        server.protocol.data_received(response_frame(_api_versions([(18, 0, 3)]), 1))
    written = server if side == "client" else client_side
    assert bytes(written.written) == b"0123"
    assert metrics.value("internal_errors") == 1
    assert client._closed
    forwarded = "proxy_to_server" if side == "client" else "proxy_to_client"
    assert _bytes(metrics, forwarded) == 4


def test_a_client_with_too_many_requests_outstanding_is_read_again_once_one_is_answered() -> None:
    """KTP_MAX_IN_FLIGHT requests waiting for their responses stop the reads of the client's
    socket (back-pressure through TCP, not a queue); the first response starts them again."""
    client, server, client_side = _connection(Metrics(), {"KTP_MAX_IN_FLIGHT": "2"})
    request = MetadataRequest(
        topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
    )
    client_side.protocol.data_received(request_frame(request, 1))
    assert client_side.reading
    client_side.protocol.data_received(request_frame(request, 2))
    assert not client_side.reading
    assert client.in_flight == 2
    _read_into(server, response_frame(_metadata_response(), 1))
    assert client_side.reading
    assert client.in_flight == 1


def test_a_fetch_response_sent_on_by_the_fetch_lane_reaches_the_tracer() -> None:
    """A Fetch response with no sampled record goes out from the pairing core's fetch lane,
    never held; the relay must still hand the tracer what the lane skimmed (the offsets it
    delivered, for the redelivered mark), or a sampled record fetched again goes unmarked."""
    metrics = Metrics()
    core = TracingCore(
        sampler=sampler_from_env("parentbased_traceidratio", "0.01"),
        propagation=Propagation(["tracecontext"]),
        pipeline=CollectedSpans(metrics),
        resource=Resource.create({"service.name": "relay-test"}),
    )
    _, server, client_side = _connection(metrics, interceptors=[FetchTracer(core, metrics)])
    sent = b""
    for n, (base, count) in enumerate([(0, 5), (5, 3)], start=1):
        parts = [skims.Part("orders", 0, skims._batch(base, count))]
        client_side.protocol.data_received(request_frame(skims._fetch_request(12, parts, 0), n))
        response = response_frame(skims._fetch_response(12, parts, endpoints=False), n)
        _read_into(server, response)
        sent += response
        # Each response's figures are handed on once, right after it went out.
        assert metrics.value("records_traced", side="fetch", outcome="skimmed") == base + count
    assert bytes(client_side.written) == sent
