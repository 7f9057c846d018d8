"""Running kafka-trace-proxy as a real process (its own CLI) in front of a test cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .ports import free_port, free_port_block

REPO_ROOT = Path(__file__).resolve().parent.parent


class ProxyProcess:
    """`python -m proxy` with KTP_* settings; a block of free ports for bootstrap + brokers."""

    def __init__(
        self,
        upstream_bootstrap: str,
        workdir: Path,
        *,
        max_node_id: int = 8,
        env: Mapping[str, str] | None = None,
        name: str = "proxy",
        python: str | None = None,
        source: Path | None = None,
    ) -> None:
        self.workdir = workdir
        #: The interpreter that runs `-m proxy` (default: this one).
        self.python = python or sys.executable
        #: The source tree whose `proxy` package runs (default: this checkout).
        self.source = source or REPO_ROOT
        self.name = name
        base = free_port_block(max_node_id + 2)
        self.listen_port = base
        self.broker_port_base = base + 1  # broker N on base + 1 + N
        self.admin_port = free_port()
        self.env = {
            "KTP_ADMIN_ADDRESS": f"127.0.0.1:{self.admin_port}",
            "KTP_UPSTREAM_BOOTSTRAP_SERVERS": upstream_bootstrap,
            "KTP_LISTEN_ADDRESS": f"127.0.0.1:{self.listen_port}",
            "KTP_BROKER_PORT_BASE": str(self.broker_port_base),
            "KTP_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def broker_port(self, node_id: int) -> int:
        return self.broker_port_base + node_id

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET a path of the admin endpoint: (status, body)."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample from /metrics whose labels include `labels`."""
        _, text = self.admin_get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, label_text = series.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONPATH": str(self.source)}
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.python, "-m", "proxy"],
            cwd=self.source,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"proxy exited with {self._process.returncode}:\n{self.log()}")
            try:
                admin_on = self.env.get("KTP_ADMIN_ADDRESS", "").lower() != "off"
                for port in (
                    (self.listen_port, self.admin_port) if admin_on else (self.listen_port,)
                ):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"proxy did not listen within {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
