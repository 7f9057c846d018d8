"""The relay under both event loops: bytes sent the instant a connection opens are never lost,
and large responses read straight into their frames arrive intact."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.app import Proxy
from proxy.config import load_settings
from proxy.relay import ClientConnection
from testbed.clients import create_topic, poll_values, unique_name
from testbed.kafka import KafkaCluster
from testbed.ports import free_port, free_port_block

pytestmark = pytest.mark.integration


class InProcessProxy:
    """A Proxy running on its own event loop in a thread, for tests that inspect its state."""

    def __init__(self, upstream: str, loop_factory: str, **env: str) -> None:
        self.port = free_port_block(12)
        settings = load_settings(
            {
                "KTP_UPSTREAM_BOOTSTRAP_SERVERS": upstream,
                "KTP_LISTEN_ADDRESS": f"127.0.0.1:{self.port}",
                "KTP_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
                "KTP_TRACING_ENABLED": "false",
                # Stop's bounded drain must fit inside the teardown's wait below.
                "KTP_SHUTDOWN_TIMEOUT_MS": "2000",
                **env,
            }
        )
        if loop_factory == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.proxy = Proxy(settings)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> InProcessProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        stopping = asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop)
        try:
            stopping.result(15)
        except TimeoutError:
            # Say where it hangs: the loop thread's stack and every task still pending.
            stack = "".join(traceback.format_stack(sys._current_frames()[self._thread.ident]))
            tasks = "\n".join(repr(t) for t in asyncio.all_tasks(self.loop))
            message = f"Proxy.stop hung; loop thread:\n{stack}\ntasks:\n{tasks}"
            raise AssertionError(message) from None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def proxy(request: pytest.FixtureRequest, kafka: KafkaCluster) -> Iterator[InProcessProxy]:
    with InProcessProxy(kafka.bootstrap_servers, request.param) as running:
        yield running


def api_versions_v0(correlation_id: int) -> bytes:
    body = struct.pack(">hhih", 18, 0, correlation_id, 4) + b"test"
    return struct.pack(">i", len(body)) + body


def read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "proxy closed the connection"
            data += chunk
        return data

    (size,) = struct.unpack(">i", exactly(4))
    return exactly(size)


def test_request_sent_immediately_after_connect_is_answered(proxy: InProcessProxy) -> None:
    for correlation_id in range(20):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(api_versions_v0(correlation_id))
            response = read_frame(sock)
        assert struct.unpack(">i", response[:4])[0] == correlation_id


def test_pipelined_requests_split_at_every_byte_are_answered_in_order(
    proxy: InProcessProxy,
) -> None:
    stream = b"".join(api_versions_v0(i) for i in range(5))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(stream)):
            sock.sendall(stream[i : i + 1])
        ids = [struct.unpack(">i", read_frame(sock)[:4])[0] for _ in range(5)]
    assert ids == [0, 1, 2, 3, 4]
    assert proxy.proxy.metrics.total("protocol_errors") == 0


def test_garbage_closes_only_that_connection(proxy: InProcessProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as bad:
        bad.sendall(b"\x7f\xff\xff\xff" + b"GET / HTTP/1.1\r\n\r\n")
        assert bad.recv(10) == b""  # closed by the proxy
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as good:
        good.sendall(api_versions_v0(9))
        assert struct.unpack(">i", read_frame(good)[:4])[0] == 9
    assert proxy.proxy.metrics.value("protocol_errors", peer="client") == 1


def test_large_requests_and_responses_are_read_in_place_and_arrive_intact(
    proxy: InProcessProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 MB of random 100 KB records produced through the proxy in batches of up to 1 MB and
    read back through it in fetches of up to 4 MiB: most of the bytes go straight into the
    frames being read, both ways, and every value arrives as it was written, in order."""
    from confluent_kafka import Producer

    filled: dict[str, list[int]] = {"request": [], "response": []}
    for side, name in (("request", "_client_filled"), ("response", "_server_filled")):
        monkeypatch.setattr(
            ClientConnection, name, _counted(getattr(ClientConnection, name), side, filled)
        )
    bootstrap = f"127.0.0.1:{proxy.port}"
    topic = unique_name("in-place")
    create_topic(bootstrap, topic, 1)
    rng = random.Random(11)
    values = [rng.randbytes(100_000) for _ in range(40)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 100, "batch.size": 1 << 20})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    received = poll_values(
        bootstrap,
        topic,
        len(values),
        {"fetch.max.bytes": 8 << 20, "max.partition.fetch.bytes": 4 << 20},
    )
    assert received == values
    for side, reads in filled.items():
        assert sum(reads) > 2_000_000, f"{side}s read in place: {sum(reads)} bytes"


def _counted(method: Any, side: str, filled: dict[str, list[int]]) -> Any:
    """`method` (a relayed connection's `_*_filled`: bytes read into the frame in place), noting
    how many bytes each call was given."""

    def counted(connection: ClientConnection, nbytes: int) -> object:
        filled[side].append(nbytes)
        return method(connection, nbytes)

    return counted
