"""Helpers shared by the reliability tests: process measurements, log checks, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil

from testbed.proxy import ProxyProcess

T = TypeVar("T")

#: Tracing on, spans thrown away: the proxy does all its tracing work (holds and parses Produce
#: and Fetch frames, injects headers) without a collector.
TRACING_ON = {"KTP_TRACING_ENABLED": "true", "OTEL_TRACES_EXPORTER": "none"}

MiB = 1 << 20


def wait_until(
    condition: Callable[[], T], timeout: float, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        time.sleep(interval)


@dataclass(frozen=True)
class ProcStats:
    rss: int
    fds: int
    threads: int
    sockets: int

    def __str__(self) -> str:
        return (
            f"rss {self.rss / MiB:.1f} MiB, {self.fds} fds, {self.sockets} sockets, "
            f"{self.threads} threads"
        )


def proc_stats(pid: int) -> ProcStats:
    process = psutil.Process(pid)
    with process.oneshot():
        return ProcStats(
            rss=process.memory_info().rss,
            fds=process.num_fds(),
            threads=process.num_threads(),
            sockets=len(process.net_connections(kind="tcp")),
        )


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def bad_log_lines(proxy: ProxyProcess) -> list[str]:
    """Lines a user would call errors: tracebacks, ERROR and CRITICAL records."""
    return [
        line
        for line in proxy.log().splitlines()
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    ]


def warning_lines(proxy: ProxyProcess) -> list[str]:
    return [line for line in proxy.log().splitlines() if " WARNING " in line]


def assert_healthy(proxy: ProxyProcess) -> None:
    """The proxy process is still running and logged no error."""
    assert proxy.alive(), f"the proxy exited:\n{proxy.log()[-3000:]}"
    bad = bad_log_lines(proxy)
    assert not bad, "the proxy logged errors:\n" + "\n".join(bad[:30])
    assert proxy.metric("ktp_internal_errors_total") == 0, "ktp_internal_errors_total > 0"


def connections_open(proxy: ProxyProcess) -> float:
    return proxy.metric("ktp_connections_open")


def wait_connections_closed(proxy: ProxyProcess, timeout: float = 10.0) -> None:
    wait_until(
        lambda: connections_open(proxy) == 0,
        timeout,
        what=f"ktp_connections_open to return to 0 (now {connections_open(proxy)})",
    )


class BlackHole:
    """A TCP server that accepts every connection and reads everything, but never answers."""

    def __init__(self) -> None:
        import selectors
        import socket
        import threading

        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self.open = 0
        self.bytes_read = 0
        self._running = True
        self._thread = threading.Thread(target=self._run, name="black-hole", daemon=True)

    def _run(self) -> None:
        import selectors

        while self._running:
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                if sock is self._listener:
                    try:
                        conn, _ = self._listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    self._selector.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    self.open += 1
                    continue
                try:
                    data = sock.recv(1 << 16)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.bytes_read += len(data)
                else:
                    self._selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    self.open -= 1

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
