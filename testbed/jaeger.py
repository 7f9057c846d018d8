"""A real Jaeger v2 on loopback, so tests can assert on what a tracing backend actually stored.

scripts/setup builds the `jaeger` binary from the Go module proxy into the cache dir. `Jaeger`
runs it with a generated config: OTLP receivers (gRPC and HTTP), in-memory storage and the query
API, every listener on a free 127.0.0.1 port (nothing on Jaeger's default ports, so parallel runs
never collide), and reads results back through the HTTP query API that the Jaeger UI uses
(`/api/services`, `/api/traces`, `/api/dependencies`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from testbed.kafka import cache_dir, kill_process_group, spawn, tail
from testbed.ports import free_port

# Keep in sync with JAEGER_VERSION / JAEGER_MODULE_VERSION in scripts/setup. Jaeger tags each
# release twice (v1.x.y and v2.x.y on the same commit); its module path has no /v2, so the Go
# module proxy knows the v2.13.0 release only as module version v1.76.0.
JAEGER_VERSION = "2.13.0"
JAEGER_MODULE_VERSION = "v1.76.0"

DEFAULT_MAX_TRACES = 100_000
_T = TypeVar("_T")


class JaegerNotInstalledError(RuntimeError):
    """The jaeger binary is not in the cache: run scripts/setup (without KTP_SKIP_JAEGER=1)."""


class JaegerStartError(RuntimeError):
    """Jaeger did not come up; the message carries the tail of its log."""


def jaeger_binary() -> Path:
    """The jaeger binary scripts/setup built for JAEGER_VERSION."""
    path = cache_dir() / f"jaeger-{JAEGER_VERSION}" / "jaeger"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise JaegerNotInstalledError(
            f"jaeger {JAEGER_VERSION} is not installed at {path}: run `bash scripts/setup`"
        )
    return path


def parse_duration(value: str | float) -> float:
    """Seconds in a duration: a number of seconds or a string like "500ms", "30s", "5m", "1h"."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    raise ValueError(f"not a duration: {value!r}")


def span_service(trace: dict[str, Any], span: dict[str, Any]) -> str:
    """The service name of `span` (looked up in the trace's `processes`)."""
    return str(trace["processes"][span["processID"]]["serviceName"])


def span_tags(span: dict[str, Any]) -> dict[str, Any]:
    """A span's tags (`[{"key", "type", "value"}]` in the query API) as a dict."""
    return {tag["key"]: tag["value"] for tag in span.get("tags") or []}


def parent_span_id(span: dict[str, Any]) -> str | None:
    """The spanID of a span's CHILD_OF reference (its parent), or None for a root span."""
    for ref in span.get("references") or []:
        if ref.get("refType") == "CHILD_OF":
            return str(ref["spanID"])
    return None


def wait_for(
    predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> _T:
    """Call `predicate` until it returns something truthy, and return that; TimeoutError after
    `timeout` seconds (the message shows the last value, or the last exception it raised)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except Exception as exc:  # e.g. a query before the data exists
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what or predicate}: {last!r}"
            )
        time.sleep(interval)


# Strong references: a running Jaeger that a caller dropped must still be stopped at exit.
_LIVE: set[Jaeger] = set()


@atexit.register
def _stop_all() -> None:
    for jaeger in list(_LIVE):
        with contextlib.suppress(Exception):
            jaeger.stop(timeout=5)


class Jaeger:
    """One Jaeger v2 process: OTLP in, memory storage, query API out, all on free loopback ports.

    Use as a context manager, or call start() / stop(). The ports are picked anew by each start().
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        max_traces: int = DEFAULT_MAX_TRACES,
        start_timeout: float = 30.0,
        log_level: str = "info",
    ) -> None:
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="jaeger-"))
        )
        self.max_traces = max_traces
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.otlp_grpc_port = 0
        self.otlp_http_port = 0
        self.query_http_port = 0
        self.query_grpc_port = 0
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # --- endpoints ------------------------------------------------------------------------------

    @property
    def otlp_grpc_endpoint(self) -> str:
        """For OTLPSpanExporter (gRPC) `endpoint=`: "http://127.0.0.1:port" (plaintext)."""
        return f"http://127.0.0.1:{self.otlp_grpc_port}"

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of OTLP/HTTP; the traces path is `otlp_http_endpoint + "/v1/traces"`."""
        return f"http://127.0.0.1:{self.otlp_http_port}"

    @property
    def query_url(self) -> str:
        """Base URL of the query HTTP API (and UI)."""
        return f"http://127.0.0.1:{self.query_http_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "jaeger.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "jaeger.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def config_yaml(self) -> str:
        """The Jaeger v2 (OpenTelemetry Collector) config for the current ports.

        Only the listeners below exist: no jaeger/zipkin receivers, no remote_sampling,
        healthcheckv2, expvar, zpages or pprof extensions, and the collector's own metrics
        (Prometheus on :8888 by default) and traces are off, as is the query service's
        self-tracing (which would export to localhost:4318).
        """
        return f"""\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: {self.log_level}

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {self.max_traces}
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{self.query_http_port}
    grpc:
      endpoint: 127.0.0.1:{self.query_grpc_port}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{self.otlp_grpc_port}
      http:
        endpoint: 127.0.0.1:{self.otlp_http_port}

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""

    def start(self) -> None:
        """Start Jaeger and wait until the query API answers and both OTLP ports accept."""
        if self.running:
            return
        binary = jaeger_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The ports are free when picked but not reserved: if another process takes one before
        # jaeger binds it, jaeger exits at once and we retry with new ports.
        for attempt in range(3):
            self._pick_ports()
            self.config_path.write_text(self.config_yaml())
            with self.log_path.open("a") as log:
                log.write(f"--- start attempt {attempt + 1}: {self.config_path}\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            began = time.monotonic()
            self._proc = spawn(
                [str(binary), "--config", str(self.config_path)],
                self.log_path,
                env=env,
                cwd=self.workdir,
            )
            _LIVE.add(self)
            try:
                self._wait_ready()
            except JaegerStartError:
                exited = self._proc.poll() is not None
                self.stop()
                if exited and "address already in use" in self.log_tail(30) and attempt < 2:
                    continue
                raise
            self.startup_seconds = time.monotonic() - began
            return

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM Jaeger's process group, then SIGKILL it after `timeout`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            kill_process_group(proc, timeout)
        _LIVE.discard(self)

    def _pick_ports(self) -> None:
        ports: list[int] = []
        while len(ports) < 4:
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.otlp_grpc_port, self.otlp_http_port, self.query_http_port, self.query_grpc_port = ports

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise JaegerStartError(
                    f"jaeger exited with {self._proc.returncode} during start-up; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if self._query_answers() and all(
                _accepts(port) for port in (self.otlp_grpc_port, self.otlp_http_port)
            ):
                return
            if time.monotonic() >= deadline:
                raise JaegerStartError(
                    f"jaeger not ready after {self.start_timeout}s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _query_answers(self) -> bool:
        try:
            self._get("/api/services", timeout=1.0)
        except (OSError, ValueError):
            return False
        return True

    # --- query API ------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
        """GET a query API path and return the decoded JSON body."""
        url = self.query_url + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())

    def services(self) -> list[str]:
        """Service names that have stored spans (`/api/services`)."""
        return sorted(self._get("/api/services").get("data") or [])

    def operations(self, service: str) -> list[str]:
        """Operation (span) names stored for a service."""
        path = f"/api/services/{urllib.parse.quote(service, safe='')}/operations"
        return sorted(self._get(path).get("data") or [])

    def traces(
        self,
        service: str,
        *,
        operation: str | None = None,
        limit: int = 100,
        lookback: str | float = "1h",
    ) -> list[dict[str, Any]]:
        """Traces with a span of `service` (and `operation`) that started in the last `lookback`.

        Each trace is the query API's JSON: {"traceID", "spans": [{"traceID", "spanID",
        "operationName", "references": [{"refType": "CHILD_OF", "traceID", "spanID"}],
        "startTime" (µs), "duration" (µs), "tags": [{"key", "type", "value"}], "logs",
        "processID"}], "processes": {processID: {"serviceName", "tags"}}}.
        """
        now_us = int(time.time() * 1_000_000)
        params = {
            "service": service,
            "operation": operation,
            "limit": limit,
            # The server filters on start/end (µs); `lookback` is only what the UI sends along.
            "start": now_us - int(parse_duration(lookback) * 1_000_000),
            "end": now_us + 60_000_000,  # tolerate span clocks slightly ahead of ours
        }
        return list(self._get("/api/traces", params).get("data") or [])

    def trace(self, trace_id_hex: str) -> dict[str, Any] | None:
        """One trace by id (32 hex digits; leading zeros optional), or None if not stored."""
        try:
            data = self._get(f"/api/traces/{trace_id_hex.lower()}").get("data") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return data[0] if data else None

    def dependencies(self, lookback: str | float = "1h") -> list[dict[str, Any]]:
        """Service edges computed from the stored traces: [{"parent", "child", "callCount"}].

        Memory storage derives them on each request from every stored parent/child span pair,
        so a span whose parent is in the same service yields a self-edge (parent == child) too.
        """
        params = {
            "endTs": int(time.time() * 1000) + 60_000,
            "lookback": int(parse_duration(lookback) * 1000) + 60_000,
        }
        return list(self._get("/api/dependencies", params).get("data") or [])

    def wait_for(
        self, predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.05
    ) -> _T:
        """Poll `predicate` (typically a query) until truthy; adds the log tail on timeout."""
        try:
            return wait_for(predicate, timeout, interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\njaeger log {self.log_path}:\n{self.log_tail(20)}") from None


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False
