"""A consumer that reads its socket very slowly must not make the proxy buffer the topic.

96 MB sit in one partition. A raw client with a 16 KB receive buffer pipelines 24 Fetch requests of
4 MB each through the proxy (tracing on, so the proxy holds every Fetch response whole to read its
records' trace context), then reads 4 KB every 100 ms for a while, then everything. The proxy's
RSS is sampled throughout.

The bound follows from the design (TCP back-pressure, no queues): at any time the proxy holds at
most the Fetch response it is assembling (one frame, <= fetch max bytes), the bytes waiting in the
client transport (the high-water mark plus the one frame written past it), the decoded copy tracing
reads after sending, and the kernel-bounded socket reads. So: baseline + 2 x high water + 3 x
frame + 16 MiB of allocator slack, i.e. about 30 MiB; a proxy that buffered would need ~96 MB.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Producer

from testbed.clients import create_topic, unique_name
from testbed.kafka import KafkaCluster

from . import wire
from .conftest import Proxies
from .support import TRACING_ON, MiB, assert_healthy, rss, wait_connections_closed

pytestmark = pytest.mark.integration

VALUE = 64 * 1024
RECORDS = 1536  # 96 MiB
FETCH_MAX = 4 * MiB
PER_FETCH = 60  # records of 64 KiB that fit in one 4 MiB response
FETCHES = RECORDS // PER_FETCH  # 25 pipelined requests
HIGH_WATER = 1 * MiB
SLOW_SECONDS = 5.0


def _fill(bootstrap: str, topic: str) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000, "acks": 1}
    )
    for i in range(RECORDS):
        while True:
            try:
                producer.produce(topic, struct.pack(">i", i) * (VALUE // 4), partition=0)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self.samples.append(rss(self.pid))

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return max(self.samples)


def _read_responses(sock: socket.socket, count: int) -> list[tuple[int, int]]:
    """(correlation id, size) of `count` response frames, read as fast as they come."""
    out = []
    for _ in range(count):
        (size,) = struct.unpack(">i", wire.recv_exactly(sock, 4))
        body = wire.recv_exactly(sock, size)
        out.append((wire.correlation_id(body), size))
    return out


def test_slow_consumer_keeps_proxy_memory_bounded(
    kafka: KafkaCluster, proxies: Proxies, figures: list[str]
) -> None:
    topic = unique_name("slow-reader")
    create_topic(kafka.bootstrap_servers, topic, partitions=1)
    started = time.monotonic()
    _fill(kafka.bootstrap_servers, topic)
    fill_seconds = time.monotonic() - started
    proxy = proxies.start(
        kafka.bootstrap_servers,
        "slow-reader",
        KTP_BUFFER_HIGH_WATER_BYTES=str(HIGH_WATER),
        **TRACING_ON,
    )
    initial = rss(proxy.pid)
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as sock:
        # Warm-up: one 4 MiB fetch read at full speed (codec caches, allocator thresholds).
        sock.sendall(wire.fetch_v12(1000, topic, 0, FETCH_MAX))
        assert _read_responses(sock, 1)[0][0] == 1000
    time.sleep(0.5)
    baseline = rss(proxy.pid)
    bound = baseline + 2 * HIGH_WATER + 3 * FETCH_MAX + 16 * MiB

    sampler = Sampler(proxy.pid)
    sampler.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", proxy.listen_port))
        sock.sendall(
            b"".join(wire.fetch_v12(i, topic, i * PER_FETCH, FETCH_MAX) for i in range(FETCHES))
        )
        slow_read = 0
        deadline = time.monotonic() + SLOW_SECONDS
        head = b""
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            assert chunk, "the proxy closed the slow reader's connection"
            head += chunk if len(head) < 8 else b""
            slow_read += len(chunk)
            time.sleep(0.1)
        slow_peak = max(sampler.samples)
        # Now read the rest quickly: all responses arrive, in order, complete.
        (first_size,) = struct.unpack(">i", head[:4])
        assert struct.unpack(">i", head[4:8])[0] == 0
        remaining_first = first_size + 4 - slow_read
        assert remaining_first >= 0, "the slow phase read past the first response"
        wire.recv_exactly(sock, remaining_first)
        responses = [(0, first_size), *_read_responses(sock, FETCHES - 1)]
    finally:
        sock.close()
    peak = sampler.stop()

    assert [cid for cid, _ in responses] == list(range(FETCHES))
    total = sum(size for _, size in responses)
    assert all(size > FETCH_MAX // 2 for _, size in responses), responses
    wait_connections_closed(proxy)
    assert_healthy(proxy)
    figures.append(
        f"{total / MiB:.0f} MiB fetched ({FETCHES} x 4 MiB, filled in {fill_seconds:.1f}s); "
        f"{slow_read // 1024} KiB read in the {SLOW_SECONDS:.0f}s slow phase; RSS initial "
        f"{initial / MiB:.1f}, baseline {baseline / MiB:.1f}, peak while slow "
        f"{slow_peak / MiB:.1f}, peak overall {peak / MiB:.1f} MiB; bound asserted "
        f"{bound / MiB:.1f} MiB (baseline + 2x{HIGH_WATER // MiB} MiB high water + 3x4 MiB "
        f"frames + 16 MiB)"
    )
    assert slow_peak <= bound, (
        f"proxy RSS reached {slow_peak / MiB:.1f} MiB while the client read slowly; bound "
        f"{bound / MiB:.1f} MiB (baseline {baseline / MiB:.1f})"
    )
    assert peak <= bound, f"proxy RSS peaked at {peak / MiB:.1f} MiB; bound {bound / MiB:.1f} MiB"
