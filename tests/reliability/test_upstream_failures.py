"""Upstream trouble must reach the client as what it is, quickly, and cost the proxy nothing.

- Nothing listens at the upstream address, or its name does not resolve: the client's connection
  is closed at once (a client then tries its next bootstrap server or backs off; it must not hang
  waiting for the proxy's connect timeout), `ktp_upstream_connect_errors_total` counts it and the
  log says which upstream failed.
- The upstream accepts but never answers: the proxy does not invent an answer or a close; the
  client's own request timeout fires on time, and repeated attempts do not grow the proxy.
"""

from __future__ import annotations

import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import KafkaError, Producer

from testbed.ports import free_port

from . import wire
from .conftest import Proxies
from .support import (
    TRACING_ON,
    BlackHole,
    MiB,
    assert_healthy,
    proc_stats,
    rss,
    wait_connections_closed,
    wait_until,
)

pytestmark = pytest.mark.integration

PARALLEL = 10


def _seconds_until_closed(port: int) -> float:
    """Connect, send ApiVersions, and time how long until the proxy closes the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(wire.api_versions_v0(1))
            data = sock.recv(4096)
        except ConnectionError:
            data = b""
        except TimeoutError:
            return float("inf")
    assert data == b"", f"the proxy answered without an upstream: {data[:40]!r}"
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("address", "attempts", "closed_within"),
    [
        # Refused: nothing to wait for, the client must see the close at once.
        pytest.param(lambda: f"127.0.0.1:{free_port()}", 200, 1.0, id="refused"),
        # NXDOMAIN: as fast as the resolver answers. This machine's resolver drops some
        # queries (glibc retries after 5 s), so the bound is the proxy's connect timeout
        # (default 10 s), which covers name resolution too.
        pytest.param(lambda: "does-not-exist.invalid:9092", 20, 10 + 1.5, id="unresolvable"),
    ],
)
def test_unreachable_upstream_closes_clients_quickly(
    address: object, attempts: int, closed_within: float, proxies: Proxies, figures: list[str]
) -> None:
    upstream = address()  # type: ignore[operator]
    proxy = proxies.start(upstream, "unreachable", **TRACING_ON)
    first = _seconds_until_closed(proxy.listen_port)
    baseline = proc_stats(proxy.pid)
    with ThreadPoolExecutor(min(PARALLEL, attempts // 4)) as pool:
        times = [
            first,
            *pool.map(lambda _: _seconds_until_closed(proxy.listen_port), range(attempts)),
        ]
    worst = max(times)
    median = sorted(times)[len(times) // 2]
    assert worst < closed_within, f"a client waited {worst:.1f}s for the proxy to give up"
    wait_connections_closed(proxy)
    errors = proxy.metric("ktp_upstream_connect_errors_total", listener="bootstrap")
    assert errors == attempts + 1, f"ktp_upstream_connect_errors_total = {errors}"
    host = upstream.rpartition(":")[0]
    assert f"cannot reach any upstream for bootstrap ({host}" in proxy.log()
    assert proxy.admin_get("/readyz")[0] == 503
    after = proc_stats(proxy.pid)
    assert_healthy(proxy)
    assert after.fds <= baseline.fds + 2, f"fds leaked: before {baseline}, after {after}"
    assert after.rss <= baseline.rss + 8 * MiB, f"memory grew: before {baseline}, after {after}"
    slow = sum(t > 1 for t in times)
    figures.append(
        f"{attempts + 1} clients closed after {median * 1000:.0f} ms (median), worst "
        f"{worst * 1000:.0f} ms, {slow} over 1 s; {after}"
    )


def test_name_resolution_slower_than_connect_timeout_logs_no_error(proxies: Proxies) -> None:
    """A DNS outage (lookups outlasting KTP_CONNECT_TIMEOUT_MS, as when a cluster's resolver is
    down): clients are closed at the timeout, and the log says why, without error lines. A 1 ms
    timeout makes every lookup outlast it."""
    proxy = proxies.start(
        "does-not-exist.invalid:9092", "dns-timeout", KTP_CONNECT_TIMEOUT_MS="1", **TRACING_ON
    )
    with ThreadPoolExecutor(5) as pool:
        times = list(pool.map(lambda _: _seconds_until_closed(proxy.listen_port), range(10)))
    assert max(times) < 1.5, times
    wait_connections_closed(proxy)
    # At least one per client: a client may open a second connection before giving up.
    assert proxy.metric("ktp_upstream_connect_errors_total") >= 10
    # Lookups still running when the timeout fired end within the resolver's own timeout.
    time.sleep(6)
    proxy.admin_get("/metrics")  # a little event-loop activity, so finished futures are freed
    assert_healthy(proxy)


def test_connect_timeout_is_named_in_the_log(proxies: Proxies) -> None:
    proxy = proxies.start(
        "does-not-exist.invalid:9092", "named-timeout", KTP_CONNECT_TIMEOUT_MS="1", **TRACING_ON
    )
    _seconds_until_closed(proxy.listen_port)
    reasons = [
        line.rpartition("does-not-exist.invalid:9092: ")[2]
        for line in proxy.log().splitlines()
        if "cannot reach any upstream" in line
    ]
    assert reasons, "no log line about the unreachable upstream"
    # Either the 1 ms timeout fires (named "TimeoutError") or the lookup fails first; never blank.
    assert all(not reason.startswith(")") for reason in reasons), reasons


def _produce_with_timeout(bootstrap: str, timeout_ms: int) -> tuple[float, KafkaError | None]:
    """One record with message.timeout.ms; (seconds until the delivery report, its error)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "message.timeout.ms": timeout_ms,
            "socket.timeout.ms": timeout_ms,
            "log_level": 0,
        }
    )
    reports: list[KafkaError | None] = []
    started = time.monotonic()
    producer.produce("black-hole", b"value", on_delivery=lambda err, _msg: reports.append(err))
    deadline = started + timeout_ms / 1000 + 10
    while not reports and time.monotonic() < deadline:
        producer.poll(0.1)
    elapsed = time.monotonic() - started
    producer.purge()
    producer.flush(1)
    return elapsed, (reports[0] if reports else KafkaError(KafkaError._FAIL, "no delivery report"))


def _unanswered_round(port: int, connections: int) -> None:
    """Clients that send requests (one of 256 kB) that are never answered, then give up."""
    big_body = struct.pack(">hhih", 1, 12, 99, 11) + b"reliability" + b"\x00" * (256 * 1024)
    big = struct.pack(">i", len(big_body)) + big_body
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
    try:
        for sock in socks:
            sock.sendall(
                wire.api_versions_v0(1)
                + b"".join(wire.metadata_v12(cid) for cid in range(2, 22))
                + big
            )
        socks[0].settimeout(0.3)
        with pytest.raises(TimeoutError):
            socks[0].recv(1)  # no answer and no close: the upstream is just slow
    finally:
        for sock in socks:
            sock.close()


def test_silent_upstream_lets_client_timeouts_fire_and_keeps_memory_flat(
    proxies: Proxies, figures: list[str]
) -> None:
    with BlackHole() as hole:
        proxy = proxies.start(f"127.0.0.1:{hole.port}", "silent", **TRACING_ON)
        timeout_ms = 3000
        with ThreadPoolExecutor(3) as pool:
            results = list(
                pool.map(
                    lambda _: _produce_with_timeout(proxy.bootstrap_servers, timeout_ms), range(3)
                )
            )
        for elapsed, error in results:
            assert error is not None and error.code() == KafkaError._MSG_TIMED_OUT, error
            assert elapsed < timeout_ms / 1000 + 2, (
                f"the timeout reached the client after {elapsed:.1f}s"
            )

        samples = []
        for _ in range(6):
            _unanswered_round(proxy.listen_port, 40)
            wait_connections_closed(proxy)
            samples.append(rss(proxy.pid))
        # Every upstream connection the proxy made for a client is closed with it.
        wait_until(
            lambda: hole.open <= 1, 15, what=f"upstream connections to close ({hole.open} open)"
        )
        after = proc_stats(proxy.pid)
        assert_healthy(proxy)
        growth = samples[-1] - samples[0]
        assert growth <= 8 * MiB, (
            f"RSS grew {growth / MiB:.1f} MiB over 5 rounds of unanswered clients: "
            + ", ".join(f"{s / MiB:.1f}" for s in samples)
        )
        assert hole.bytes_read >= 6 * 40 * 256 * 1024, "the requests did not reach the upstream"
    figures.append(
        "client timeouts after "
        + ", ".join(f"{elapsed:.1f}s" for elapsed, _ in results)
        + f" (message.timeout.ms={timeout_ms}); RSS over 6 rounds of 40 unanswered clients: "
        + ", ".join(f"{s / MiB:.1f}" for s in samples)
        + f" MiB; {hole.bytes_read / MiB:.0f} MiB swallowed upstream; {after}"
    )
