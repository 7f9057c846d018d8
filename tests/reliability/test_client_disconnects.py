"""Clients that vanish mid-request and mid-response must cost the proxy nothing lasting.

Raw sockets send half an ApiVersions or Produce frame and close, or ask for a large Fetch and close
before (or while) the response arrives, many times over; meanwhile a well-behaved client keeps
working. Afterwards: the proxy is up, logged no error, holds no connection (`ktp_connections_open`
back to 0) and no more file descriptors than before.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Producer

from testbed.clients import ConfluentDriver, Record, assert_round_trip, create_topic, unique_name
from testbed.kafka import KafkaCluster

from . import wire
from .conftest import Proxies
from .support import (
    TRACING_ON,
    MiB,
    assert_healthy,
    proc_stats,
    wait_connections_closed,
    warning_lines,
)

pytestmark = pytest.mark.integration

ROUNDS = 150  # of each kind of disconnect
FETCH_ROUNDS = 60
DATA_RECORDS = 160
DATA_VALUE = 100 * 1024  # 16 MB in the fetched partition


def _fill(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(DATA_RECORDS):
        producer.produce(topic, value=struct.pack(">i", i) * (DATA_VALUE // 4), partition=0)
        producer.poll(0)
    assert producer.flush(60) == 0


class GoodClient(threading.Thread):
    """ApiVersions round trips on one connection every 20 ms; counts answers and failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.answered = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            cid = 0
            while not self._halt.wait(0.02):
                cid += 1
                try:
                    wire.round_trip(sock, wire.api_versions_v0(cid), cid)
                    self.answered += 1
                except (OSError, AssertionError) as exc:
                    self.failures.append(f"request {cid}: {exc!r}")
                    sock.close()
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        finally:
            sock.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _abort(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0), as a crashing client or a killed pod does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_vanishing_mid_request_and_mid_response(
    kafka: KafkaCluster, proxies: Proxies, figures: list[str]
) -> None:
    topic = unique_name("vanish")
    create_topic(kafka.bootstrap_servers, topic, partitions=1)
    _fill(kafka.bootstrap_servers, topic)
    proxy = proxies.start(kafka.bootstrap_servers, "vanish", **TRACING_ON)
    port = proxy.listen_port
    # One warm-up round trip so the baseline includes the proxy's lazily built state.
    with _connect(port) as sock:
        wire.round_trip(sock, wire.api_versions_v0(1), 1)
    wait_connections_closed(proxy)
    before = proc_stats(proxy.pid)
    rng = random.Random(4)

    good = GoodClient(port)
    good.start()
    started = time.monotonic()
    try:
        for i in range(ROUNDS):
            # Half an ApiVersions frame (the proxy holds ApiVersions whole), then gone.
            request = wire.api_versions_v0(i)
            sock = _connect(port)
            sock.sendall(request[: rng.randint(1, len(request) - 1)])
            (_abort if i % 2 else socket.socket.close)(sock)
            # Half a Produce frame claiming 100 kB (held whole by the proxy), then gone.
            sock = _connect(port)
            sock.sendall(wire.produce_head(i))
            (_abort if i % 3 == 0 else socket.socket.close)(sock)
        for i in range(FETCH_ROUNDS):
            # A 16 MB Fetch response on its way; the client leaves before / while it arrives.
            sock = _connect(port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.sendall(wire.fetch_v12(i, topic, 0, 50 * MiB))
            if i % 3 == 1:
                time.sleep(rng.uniform(0.0, 0.05))
            elif i % 3 == 2:
                sock.recv(4096)  # the response has started
            (_abort if i % 2 else socket.socket.close)(sock)
    finally:
        good.stop()
    abuse_seconds = time.monotonic() - started

    assert not good.failures, f"a well-behaved client was disturbed: {good.failures[:5]}"
    assert good.answered > 10, f"the well-behaved client got only {good.answered} answers"
    # A real client still produces and consumes, with trace context added.
    check_topic = unique_name("vanish-after")
    sent = [Record(b"k%d" % i, b"value-%d" % i) for i in range(200)]
    client = ConfluentDriver()
    client.produce(proxy.bootstrap_servers, check_topic, sent, idempotent=True)
    received = client.consume(proxy.bootstrap_servers, check_topic, unique_name("g"), len(sent))
    assert_round_trip(sent, received, traceparent=True)

    wait_connections_closed(proxy)
    after = proc_stats(proxy.pid)
    assert_healthy(proxy)
    assert after.fds <= before.fds + 2, f"file descriptors leaked: before {before}, after {after}"
    assert after.sockets <= before.sockets + 2, f"sockets leaked: before {before}, after {after}"
    assert after.rss <= before.rss + 48 * MiB, f"memory kept: before {before}, after {after}"
    figures.append(
        f"{2 * ROUNDS} half frames + {FETCH_ROUNDS} abandoned 16 MB fetches in "
        f"{abuse_seconds:.1f}s; good client answered {good.answered}x, 0 failures; "
        f"before: {before}; after: {after}; {len(warning_lines(proxy))} warning lines"
    )
