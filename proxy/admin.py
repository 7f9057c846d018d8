"""The admin HTTP endpoint: Prometheus `/metrics`, `/healthz` (alive) and `/readyz` (serving).

A deliberately tiny HTTP/1.1 responder on asyncio streams: three GET paths, no keep-alive, a
bounded request head. It listens on 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from .metrics import Metrics

log = logging.getLogger(__name__)

PREFIX = "ktp_"
MAX_HEAD = 8192

_HELP = {
    "requests": "Requests from clients, by API key (other: keys Kafka does not define).",
    "bytes": "Bytes relayed, by direction.",
    "request_bytes": "Bytes of client requests (size prefix included), by API key (or other).",
    "response_bytes": "Bytes of broker responses (size prefix included), by API key (or other).",
    "connections_accepted": "Client connections accepted, by listener.",
    "connections_open": "Client connections open now.",
    "upstream_connect_errors": "Client connections closed because no broker could be reached.",
    "upstream_disconnects": "Broker connections that failed mid-way (reset, TLS alert).",
    "protocol_errors": "Connections closed because a peer sent invalid Kafka protocol.",
    "internal_errors": "Connections closed after an internal error (a bug: please report).",
    "responses_rewritten": "Responses re-encoded (broker addresses or versions changed).",
    "responses_undecodable": "Responses forwarded unread because they could not be decoded.",
    "produce_requests_rewritten": "Produce requests re-encoded with added headers.",
    "records_traced": "Records seen by tracing, by side and outcome.",
    "header_injections_skipped": "Batches forwarded without trace headers, by reason.",
    "spans_exported": "Spans accepted by the collector.",
    "spans_dropped": "Spans dropped, by reason (queue_full, export_failed, shutdown).",
    "span_export_seconds": "Time spent exporting spans.",
    "interceptor_errors": "Exceptions in interceptor hooks (traffic forwarded unchanged).",
    "listener_errors": "Broker listeners that could not be bound.",
    "fetch_records_unreadable": "Fetched partitions whose records could not be read for tracing.",
    "request_latency_seconds": (
        "Time from a request reaching the proxy to its response leaving it, by API key (or other)."
    ),
}


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + ",".join(escaped) + "}"


def render_prometheus(metrics: Metrics) -> str:
    """Metrics in the Prometheus text exposition format (counters get a `_total` suffix)."""
    lines: list[str] = []
    declared: set[str] = set()
    for kind, name, labels, value in metrics.samples():
        full = PREFIX + name + ("_total" if kind == "counter" else "")
        if full not in declared:
            declared.add(full)
            if name in _HELP:
                lines.append(f"# HELP {full} {_HELP[name]}")
            lines.append(f"# TYPE {full} {kind}")
        lines.append(f"{full}{_labels(labels)} {value:g}")
    for name, labels, buckets, total, count in metrics.histograms():
        full = PREFIX + name
        if full not in declared:
            declared.add(full)
            if name in _HELP:
                lines.append(f"# HELP {full} {_HELP[name]}")
            lines.append(f"# TYPE {full} histogram")
        for bound, cumulative in buckets:
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f"{full}_bucket{_labels((*labels, ('le', le)))} {cumulative}")
        lines.append(f"{full}_sum{_labels(labels)} {total:g}")
        lines.append(f"{full}_count{_labels(labels)} {count}")
    return "\n".join(lines) + "\n"


class AdminServer:
    """Serves the three admin paths."""

    def __init__(self, metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> None:
        self._metrics = metrics
        self._ready = ready
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("admin endpoint on http://%s:%d (/metrics, /healthz, /readyz)", host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = self._route(method, path.split("?", 1)[0])
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
        ):
            status, content_type, body = "400 Bad Request", "text/plain", "bad request\n"
        payload = body.encode()
        with contextlib.suppress(ConnectionError):
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, str]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", "GET only\n"
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", render_prometheus(self._metrics)
        if path == "/healthz":
            return "200 OK", "text/plain", "ok\n"
        if path == "/readyz":
            ready, detail = self._ready()
            return ("200 OK" if ready else "503 Service Unavailable"), "text/plain", detail + "\n"
        return "404 Not Found", "text/plain", "not found\n"
