"""Secure defaults: with nothing but the upstream address set, the proxy exposes nothing beyond
loopback, and upstream TLS, once switched on, verifies certificates and host names."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from proxy.config import load_settings
from proxy.tls import upstream_context
from testbed.proxy import REPO_ROOT

from . import SecureBed, probe, secure_bed, wait_for

pytestmark = pytest.mark.integration

DEFAULT_BOOTSTRAP_PORT = 9092
DEFAULT_BROKER_PORT = 9093 + 1  # base port (listen port + 1) + node id 1
DEFAULT_ADMIN_PORT = 9644
DEFAULT_PORTS = (DEFAULT_BOOTSTRAP_PORT, DEFAULT_BROKER_PORT, DEFAULT_ADMIN_PORT)


def _port_free(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


@contextlib.contextmanager
def default_proxy(upstream: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The proxy with KTP_UPSTREAM_BOOTSTRAP_SERVERS as its only KTP_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTP_", "OTEL_"))}
    env |= {
        "KTP_UPSTREAM_BOOTSTRAP_SERVERS": upstream,
        "OTEL_TRACES_EXPORTER": "none",  # no collector here; not a KTP_* setting
        "PYTHONPATH": str(REPO_ROOT),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture(scope="module")
def bed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SecureBed:
    return secure_bed(request.config, tmp_path_factory)


def test_only_loopback_listeners_by_default(bed: SecureBed, tmp_path: Path) -> None:
    busy = [p for p in DEFAULT_PORTS if not _port_free(p)]
    if busy:
        pytest.skip(f"default ports {busy} are in use on this machine")
    log_path = tmp_path / "proxy.log"
    with default_proxy(bed.plaintext, log_path) as process:

        def all_bound() -> bool:
            assert process.poll() is None, log_path.read_text()
            return {port for _, port in _listening(process.pid)} >= set(DEFAULT_PORTS)

        assert wait_for(all_bound, 30), f"{_listening(process.pid)}\n{log_path.read_text()}"
        listening = _listening(process.pid)
        assert {host for host, _ in listening} == {"127.0.0.1"}, listening
        assert {port for _, port in listening} == set(DEFAULT_PORTS), listening
        # And it does serve there: a Kafka request through the default bootstrap port.
        assert probe(DEFAULT_BOOTSTRAP_PORT).answered, log_path.read_text()


def test_default_settings_are_loopback_and_verified() -> None:
    settings = load_settings({"KTP_UPSTREAM_BOOTSTRAP_SERVERS": "kafka:9092"})
    assert settings.listen_address.host == "127.0.0.1"
    assert settings.advertised_host == "127.0.0.1"
    assert settings.admin_address is not None and settings.admin_address.host == "127.0.0.1"
    assert settings.upstream_tls is False and upstream_context(settings) is None
    assert settings.listen_tls_cert_file is None  # TLS to clients is opt-in
    assert settings.upstream_tls_verify is True


def test_upstream_tls_verifies_by_default() -> None:
    """KTP_UPSTREAM_TLS=true alone verifies certificates (system CAs) and host names."""
    settings = load_settings(
        {"KTP_UPSTREAM_BOOTSTRAP_SERVERS": "kafka:9093", "KTP_UPSTREAM_TLS": "true"}
    )
    assert settings.upstream_tls_verify is True
    context = upstream_context(settings)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
