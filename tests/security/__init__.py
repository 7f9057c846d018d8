"""Security tests: TLS on both sides of the proxy, SASL through it, logs, secure defaults.

Shared by the modules of this package (there is no conftest here on purpose: these helpers are
imported explicitly): one broker with every secured listener the tests need, started once per
session, a test PKI, the proxy as a real process, and a raw Kafka probe.

Listeners of the shared broker (besides PLAINTEXT):

    TLS        SSL, server cert for 127.0.0.1/localhost signed by the test CA
    MTLS       SSL, same cert, client certificates signed by the test CA required
    WRONGHOST  SSL, a cert signed by the test CA but only for broker.invalid
    SASL       SASL_PLAINTEXT with PLAIN (PLAIN_USER) and SCRAM-SHA-512 (SCRAM_USER)
    SASLSSL    SASL_SSL, same users, same cert as TLS
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.certs import TestPKI, make_test_pki
from testbed.kafka import SCRAM_MECHANISM, KafkaCluster, SecurityConfig
from testbed.proxy import REPO_ROOT, ProxyProcess

# Distinctive credentials: the log-secrecy test greps the proxy's log for them.
PLAIN_USER, PLAIN_PASSWORD = "alice", "Pl41n-Quokka-Secret-8c1e"
SCRAM_USER, SCRAM_PASSWORD = "bob", "Scr4m-Wombat-Secret-5d7f"
WRONG_PASSWORD = "not-the-password"

TRACING_ON = {"KTP_TRACING_ENABLED": "true", "OTEL_TRACES_EXPORTER": "none"}
TRACING_OFF = {"KTP_TRACING_ENABLED": "false"}


@dataclass
class SecureBed:
    cluster: KafkaCluster
    pki: TestPKI

    def bootstrap(self, listener: str) -> str:
        return self.cluster.secure_bootstrap(listener)

    @property
    def plaintext(self) -> str:
        return self.cluster.bootstrap_servers


_BED_KEY = pytest.StashKey[SecureBed]()


def secure_bed(config: pytest.Config, factory: pytest.TempPathFactory) -> SecureBed:
    """The session's broker with all secured listeners (started on first use, stopped at the
    end of the session)."""
    bed = config.stash.get(_BED_KEY, None)
    if bed is not None:
        return bed
    root = factory.mktemp("secure-kafka")
    pki = make_test_pki(root / "pki")
    users = {
        "plain_users": {PLAIN_USER: PLAIN_PASSWORD},
        "scram_users": {SCRAM_USER: SCRAM_PASSWORD},
    }
    cluster = KafkaCluster(
        "4",
        1,
        root / "kafka",
        security=[
            SecurityConfig("SSL", "TLS", keystore=pki.server.pem),
            SecurityConfig(
                "SSL",
                "MTLS",
                keystore=pki.server.pem,
                truststore=pki.ca.cert,
                client_auth="required",
            ),
            SecurityConfig("SSL", "WRONGHOST", keystore=pki.wrong_host.pem),
            SecurityConfig("SASL_PLAINTEXT", "SASL", **users),
            SecurityConfig("SASL_SSL", "SASLSSL", keystore=pki.server.pem, **users),
        ],
    )
    cluster.start()
    config.add_cleanup(cluster.stop)
    bed = SecureBed(cluster, pki)
    config.stash[_BED_KEY] = bed
    return bed


# -- the proxy ---------------------------------------------------------------------------------


@contextlib.contextmanager
def running_proxy(
    upstream: str, workdir: Path, name: str, env: Mapping[str, str]
) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(upstream, workdir, env=dict(env), name=name)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def problems_in_log(proxy: ProxyProcess) -> list[str]:
    """Tracebacks and ERROR/CRITICAL lines of a proxy log (a healthy proxy has none)."""
    return [
        line
        for line in proxy.log().splitlines()
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    ]


def assert_healthy(proxy: ProxyProcess) -> None:
    assert proxy.alive(), f"proxy exited:\n{proxy.log()[-3000:]}"
    bad = problems_in_log(proxy)
    assert not bad, "proxy logged errors:\n" + "\n".join(bad[:20])


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_proxy_command(
    env: Mapping[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python -m proxy [args]` with exactly the KTP_* settings in `env` (others removed)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTP_", "OTEL_"))}
    clean.update(env)
    clean["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# -- a raw Kafka probe -------------------------------------------------------------------------


def api_versions_request(correlation_id: int = 7) -> bytes:
    """ApiVersions v0 (request header v1, empty body), size-prefixed."""
    client_id = b"ktp-security-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(body)) + body


@dataclass
class ProbeResult:
    #: The broker's answer (size prefix stripped), or None when the connection closed first.
    response: bytes | None
    #: Why there was no answer ("closed", "reset", an SSL error, "timeout").
    reason: str = ""
    seconds: float = 0.0

    @property
    def answered(self) -> bool:
        return self.response is not None


def probe(port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 15.0) -> ProbeResult:
    """Send ApiVersions to 127.0.0.1:`port` (over TLS with `tls`) and read the answer."""
    began = time.monotonic()

    def done(response: bytes | None, reason: str = "") -> ProbeResult:
        return ProbeResult(response, reason, time.monotonic() - began)

    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        return done(None, f"connect: {exc}")
    sock: socket.socket = raw
    try:
        if tls is not None:
            sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")  # detaches `raw`
        sock.sendall(api_versions_request())
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return done(None, "closed")
            data += chunk
        return done(data[4:])
    except TimeoutError:
        return done(None, "timeout")
    except ssl.SSLError as exc:
        return done(None, f"ssl: {exc}")
    except OSError as exc:
        return done(None, f"reset: {exc}")
    finally:
        sock.close()
        raw.close()


def client_tls_context(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


# -- client settings ---------------------------------------------------------------------------


def sasl_credentials(mechanism: str) -> tuple[str, str]:
    return (PLAIN_USER, PLAIN_PASSWORD) if mechanism == "PLAIN" else (SCRAM_USER, SCRAM_PASSWORD)


def confluent_sasl(
    mechanism: str, password: str | None = None, *, protocol: str = "SASL_PLAINTEXT"
) -> dict[str, str]:
    user, right = sasl_credentials(mechanism)
    return {
        "security.protocol": protocol,
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password or right,
    }


def kafka_python_sasl(mechanism: str, password: str | None = None) -> dict[str, str]:
    user, right = sasl_credentials(mechanism)
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password or right,
    }


def java_sasl(mechanism: str, password: str | None = None) -> dict[str, str]:
    user, right = sasl_credentials(mechanism)
    module = (
        "org.apache.kafka.common.security.plain.PlainLoginModule"
        if mechanism == "PLAIN"
        else "org.apache.kafka.common.security.scram.ScramLoginModule"
    )
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.jaas.config": (
            f'{module} required username="{user}" password="{password or right}";'
        ),
    }


MECHANISMS = ("PLAIN", SCRAM_MECHANISM)
