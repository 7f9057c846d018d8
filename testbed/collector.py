"""A stand-in OTLP/HTTP collector for tests that need the exporter's side of the wire.

Accepts any POST, keeps (path, headers, body) of the most recent requests, and answers 200 after
an optional delay (a slow collector). Tests that check what Jaeger stored use the real Jaeger
(`testbed.jaeger`); this is for the bytes and the timing of the export itself.
"""

from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Requests kept; older ones are forgotten (a long run must not grow the test's memory).
KEPT_REQUESTS = 1000


class StubCollector:
    """``with StubCollector(delay=3.0) as collector:`` then point the exporter at
    ``collector.endpoint`` (the base URL; ``collector.traces_url`` is the traces path)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.received: collections.deque[tuple[str, dict[str, str], bytes]] = collections.deque(
            maxlen=KEPT_REQUESTS
        )
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, dict(self.headers), body))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.traces_url = f"{self.endpoint}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
