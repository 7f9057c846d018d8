"""A tiny OTLP/HTTP trace sink: accepts POST /v1/traces, counts requests and bytes, keeps nothing.

Spans must go somewhere real (the proxy's exporter does its full work: encode, HTTP POST, wait
for 200) but the sink must cost next to nothing, so it neither parses nor stores. It runs as its
own process (`python -m benchmarks.sink PORT`) so that its work never competes for the GIL with
the harness's Python load generators; GET /stats returns the counters as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Counters:
    """Totals shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0


COUNTERS = _Counters()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real collector offers

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        with COUNTERS.lock:
            COUNTERS.requests += 1
            COUNTERS.bytes += length
        self._reply(200, b"", "application/x-protobuf")

    def do_GET(self) -> None:
        if self.path != "/stats":
            self._reply(404, b"not found\n", "text/plain")
            return
        with COUNTERS.lock:
            body = json.dumps({"requests": COUNTERS.requests, "bytes": COUNTERS.bytes})
        self._reply(200, body.encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging (it would cost more than the sink itself)."""


def main(argv: list[str]) -> None:
    port = int(argv[0]) if argv else 4318
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    print(f"otlp sink on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
