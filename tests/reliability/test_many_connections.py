"""Hundreds of clients at once, then thousands connecting and leaving: nothing may pile up.

500 raw clients each do what every Kafka client does first (ApiVersions, then Metadata) and stay
connected together; then 2000 connections come and go as fast as they can, some leaving before the
proxy has even reached the broker. Afterwards the proxy holds no connection, no extra file
descriptor or thread, and about the memory it held before.
"""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from testbed.kafka import KafkaCluster

from . import wire
from .conftest import Proxies
from .support import (
    TRACING_ON,
    MiB,
    assert_healthy,
    connections_open,
    proc_stats,
    wait_connections_closed,
    wait_until,
)

pytestmark = pytest.mark.integration

CONCURRENT = 500
CHURN = 2000
CHURN_PARALLEL = 50


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(wire.api_versions_v0(1) + wire.metadata_v12(2))
    await writer.drain()
    for expected in (1, 2):
        body = await asyncio.wait_for(_read_frame(reader), 30)
        assert wire.correlation_id(body) == expected
    return reader, writer


async def _many_at_once(port: int, count: int, on_all_open: object) -> list[BaseException]:
    results = await asyncio.gather(
        *(_handshake(port) for _ in range(count)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    await asyncio.to_thread(on_all_open)  # type: ignore[arg-type]
    for result in results:
        if not isinstance(result, BaseException):
            result[1].close()
    return errors


async def _churn(port: int, count: int, parallel: int) -> list[BaseException]:
    errors: list[BaseException] = []
    semaphore = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with semaphore:
            try:
                if i % 2:
                    # Gone before the proxy has connected upstream.
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                else:
                    _, writer = await _handshake(port)
                writer.close()
            except (OSError, AssertionError, asyncio.IncompleteReadError) as exc:
                errors.append(exc)

    await asyncio.gather(*(one(i) for i in range(count)))
    return errors


def test_many_connections_leave_nothing_behind(
    kafka: KafkaCluster, proxies: Proxies, figures: list[str]
) -> None:
    proxy = proxies.start(kafka.bootstrap_servers, "many", **TRACING_ON)
    port = proxy.listen_port
    asyncio.run(_churn(port, 20, 10))  # warm-up
    wait_connections_closed(proxy)
    before = proc_stats(proxy.pid)

    peak: dict[str, object] = {}

    def at_peak() -> None:
        peak["open"] = connections_open(proxy)
        peak["stats"] = proc_stats(proxy.pid)

    started = time.monotonic()
    errors = asyncio.run(_many_at_once(port, CONCURRENT, at_peak))
    concurrent_seconds = time.monotonic() - started
    assert not errors, f"{len(errors)} of {CONCURRENT} concurrent clients failed: {errors[:3]}"
    assert peak["open"] == CONCURRENT, f"ktp_connections_open was {peak['open']} at the peak"
    wait_connections_closed(proxy)
    after_concurrent = proc_stats(proxy.pid)

    started = time.monotonic()
    errors = asyncio.run(_churn(port, CHURN, CHURN_PARALLEL))
    churn_seconds = time.monotonic() - started
    assert not errors, f"{len(errors)} of {CHURN} connect/disconnect clients failed: {errors[:3]}"
    wait_connections_closed(proxy)
    # Sockets the proxy closed may take a moment to leave its fd table; none may stay.
    wait_until(
        lambda: proc_stats(proxy.pid).fds <= before.fds + 2,
        10,
        what=f"the proxy's fds to return to {before.fds} (now {proc_stats(proxy.pid)})",
    )
    after = proc_stats(proxy.pid)

    assert_healthy(proxy)
    assert after.sockets <= before.sockets + 2, f"sockets leaked: before {before}, after {after}"
    assert after.threads <= before.threads + 2, f"threads leaked: before {before}, after {after}"
    # 500 connections cost a few MiB of buffers that the allocator may keep; 2000 more
    # connections must not add to it.
    assert after.rss <= after_concurrent.rss + 8 * MiB, (
        f"memory grew with churn: after 500 concurrent {after_concurrent}, after churn {after}"
    )
    assert after.rss <= before.rss + 40 * MiB, f"memory kept: before {before}, after {after}"
    accepted = proxy.metric("ktp_connections_accepted_total")
    assert accepted >= 20 + CONCURRENT + CHURN
    figures.append(
        f"{CONCURRENT} concurrent in {concurrent_seconds:.1f}s (peak {peak['stats']}), "
        f"{CHURN} churned in {churn_seconds:.1f}s; before: {before}; after 500: "
        f"{after_concurrent}; after churn: {after}"
    )
