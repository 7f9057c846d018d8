"""SASL through the proxy: clients authenticate to the broker themselves, over the proxy's 1:1
connections; the proxy holds no credentials, does not parse or log the exchange, and a wrong
password fails exactly as it does without the proxy.

The module's proxy runs with KTP_LOG_LEVEL=debug, so that the log-secrecy test at the end checks
a log that saw every exchange of the module (and its own).
"""

from __future__ import annotations

import gc
import logging
import re
import time
import warnings
from collections.abc import Iterator

import pytest

from testbed.clients import (
    ClientDriver,
    ConfluentDriver,
    JavaDriver,
    KafkaPythonDriver,
    assert_round_trip,
    create_topic,
    make_records,
    unique_name,
)
from testbed.java_tools import ConsoleRecord, console_producer
from testbed.proxy import ProxyProcess

from . import (
    MECHANISMS,
    PLAIN_PASSWORD,
    SCRAM_PASSWORD,
    TRACING_ON,
    WRONG_PASSWORD,
    SecureBed,
    assert_healthy,
    confluent_sasl,
    java_sasl,
    kafka_python_sasl,
    running_proxy,
    secure_bed,
    wait_for,
)

pytestmark = pytest.mark.integration

#: Every record value of this module starts with it; it must never appear in the proxy's log.
PAYLOAD_MARKER = "Narwhal-Payload-3c9d"


@pytest.fixture(scope="module")
def bed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SecureBed:
    return secure_bed(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def sasl_proxy(bed: SecureBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """In front of the SASL_PLAINTEXT listener (PLAIN + SCRAM-SHA-512), debug logging, traced."""
    env = {**TRACING_ON, "KTP_LOG_LEVEL": "debug"}
    workdir = tmp_path_factory.mktemp("sasl-proxy")
    with running_proxy(bed.bootstrap("SASL"), workdir, "sasl-proxy", env) as proxy:
        yield proxy


def sasl_client(name: str, mechanism: str, password: str | None = None) -> ClientDriver:
    if name == "kafka-python":
        return KafkaPythonDriver(extra=kafka_python_sasl(mechanism, password))
    if name == "confluent-kafka":
        return ConfluentDriver(extra=confluent_sasl(mechanism, password))
    return JavaDriver(extra=java_sasl(mechanism, password))


def round_trip(client: ClientDriver, bed: SecureBed, bootstrap: str, count: int, tag: str) -> None:
    topic = unique_name(f"sasl-{client.name}")
    create_topic(bed.plaintext, topic, partitions=2)  # over PLAINTEXT: admin needs no login
    records = make_records(count, binary=client.binary, tag=f"{PAYLOAD_MARKER}-{tag}")
    client.produce(bootstrap, topic, records, timeout=60)
    received = client.consume(bootstrap, topic, unique_name("g"), count, timeout=60)
    assert_round_trip(records, received, traceparent=True)


# -- readiness first: before any client taught the proxy the brokers -----------------------------


def test_readyz_with_sasl_only_bootstrap(sasl_proxy: ProxyProcess) -> None:
    """The proxy's own Metadata request cannot authenticate; an upstream that accepts
    connections is enough to be ready."""

    def ready() -> bool:
        return sasl_proxy.admin_get("/readyz")[0] == 200

    assert wait_for(ready, 20), sasl_proxy.admin_get("/readyz")
    _, body = sasl_proxy.admin_get("/readyz")
    assert body.startswith("ready: upstream accepts connections"), body
    assert_healthy(sasl_proxy)


# -- clients authenticate through the proxy ------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka", "java"])
def test_clients_authenticate_through_proxy(
    client: str, mechanism: str, bed: SecureBed, sasl_proxy: ProxyProcess
) -> None:
    driver = sasl_client(client, mechanism)
    count = 10 if client == "java" else 30
    round_trip(driver, bed, sasl_proxy.bootstrap_servers, count, f"{client}-{mechanism}")
    assert sasl_proxy.metric("ktp_upstream_connect_errors_total") == 0
    assert_healthy(sasl_proxy)


def test_sasl_over_upstream_tls(bed: SecureBed, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SASL_SSL broker listener: TLS proxy->broker, SASL frames from the client pass through."""
    env = {
        **TRACING_ON,
        "KTP_UPSTREAM_TLS": "true",
        "KTP_UPSTREAM_TLS_CA_FILE": str(bed.pki.ca.cert),
    }
    workdir = tmp_path_factory.mktemp("sasl-ssl-proxy")
    with running_proxy(bed.bootstrap("SASLSSL"), workdir, "sasl-ssl-proxy", env) as proxy:
        # The client speaks SASL_PLAINTEXT to the proxy; the proxy adds the TLS.
        driver = ConfluentDriver(extra=confluent_sasl("SCRAM-SHA-512"))
        round_trip(driver, bed, proxy.bootstrap_servers, 20, "sasl-ssl")
        status, body = proxy.admin_get("/readyz")
        assert status == 200, body
        assert_healthy(proxy)


# -- a wrong password fails as it does without the proxy -----------------------------------------


def _confluent_auth_error(bootstrap: str, mechanism: str) -> tuple[int, str, float]:
    """(error code, message without address and timing, seconds) of a producer's login."""
    from confluent_kafka import Producer

    errors: list = []
    quiet = logging.getLogger("tests.security.rdkafka")
    quiet.propagate = False
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            **confluent_sasl(mechanism, WRONG_PASSWORD),
            "error_cb": errors.append,
            "logger": quiet,
        }
    )
    began = time.monotonic()
    while not errors and time.monotonic() - began < 20:
        producer.poll(0.1)
    seconds = time.monotonic() - began
    producer.flush(0)
    assert errors, f"no error within {seconds:.0f}s: the login hangs"
    error = errors[0]
    message = error.str().split("/bootstrap: ", 1)[-1]  # "sasl_plaintext://host:port/bootstrap: "
    message = re.sub(r" \(after \d+ms in state \w+.*\)$", "", message)
    return error.code(), message, seconds


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_confluent(mechanism: str, bed: SecureBed, sasl_proxy: ProxyProcess) -> None:
    direct = _confluent_auth_error(bed.bootstrap("SASL"), mechanism)
    proxied = _confluent_auth_error(sasl_proxy.bootstrap_servers, mechanism)
    assert proxied[:2] == direct[:2]
    assert "Authentication failed" in proxied[1]
    assert proxied[2] < direct[2] + 5, f"direct {direct[2]:.1f}s, via proxy {proxied[2]:.1f}s"
    assert_healthy(sasl_proxy)


class _Messages(logging.Handler):
    """Keeps only formatted messages: log records would keep kafka-python's sockets alive."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _kafka_python_auth_failure(bootstrap: str) -> tuple[str, set[str], float]:
    """(exception class, connection failure reasons logged, seconds) of a producer's login."""
    from kafka import KafkaProducer

    kafka_log = logging.getLogger("kafka")
    handler, propagate = _Messages(), kafka_log.propagate
    kafka_log.addHandler(handler)
    kafka_log.propagate = False
    began = time.monotonic()
    failure = "no exception"
    try:
        KafkaProducer(
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=5000,
            **kafka_python_sasl("PLAIN", WRONG_PASSWORD),
        ).close()
    except Exception as exc:
        failure = type(exc).__name__
    finally:
        kafka_log.removeHandler(handler)
        kafka_log.propagate = propagate
    seconds = time.monotonic() - began
    # A KafkaProducer whose constructor failed leaves its sockets to the garbage collector:
    # collect them now, quietly, rather than as unraisable warnings at the end of the session.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    pattern = re.compile(r"Bootstrap connection to \S+ failed: (.*) \(backoff")
    reasons = {m.group(1) for message in handler.messages if (m := pattern.search(message))}
    return failure, reasons, seconds


def test_wrong_password_kafka_python(bed: SecureBed, sasl_proxy: ProxyProcess) -> None:
    """kafka-python retries the bootstrap until bootstrap_timeout_ms; each attempt fails with
    the broker's SaslAuthenticationFailedError or, when it notices the broker closing the
    connection before reading the answer (a race of its own, with or without the proxy),
    "socket disconnected". Both ways must end the same, in bounded time."""
    direct = _kafka_python_auth_failure(bed.bootstrap("SASL"))
    proxied = _kafka_python_auth_failure(sasl_proxy.bootstrap_servers)
    assert proxied[0] == direct[0] == "KafkaTimeoutError"
    auth = "SaslAuthenticationFailedError: Authentication failed: Invalid username or password"
    # Besides the broker's answer: the race above, and the last attempt's request (or its
    # connect) timing out when the bootstrap deadline cuts it short. kafka-python gives each
    # attempt the time left before that deadline, and reports an attempt it ran out on as a
    # bare KafkaTimeoutError, or as "SASL Authentication timed out" when it ran out during the
    # handshake.
    benign = (
        "KafkaConnectionError: socket disconnected",
        "RequestTimedOutError: Request timed out",
        "KafkaConnectionError: Connection timed out",
    )
    cut_short = ("KafkaTimeoutError", "KafkaTimeoutError: SASL Authentication timed out")
    for reasons in (direct[1], proxied[1]):
        assert reasons, "no bootstrap attempt logged"
        assert all(auth in r or r in cut_short or any(b in r for b in benign) for r in reasons), (
            reasons
        )
    assert any(auth in r for r in direct[1] | proxied[1])
    assert proxied[2] < 15, f"took {proxied[2]:.0f}s"
    assert_healthy(sasl_proxy)


def test_wrong_password_java(bed: SecureBed, sasl_proxy: ProxyProcess) -> None:
    def failure(bootstrap: str) -> str:
        result = console_producer(
            bootstrap,
            unique_name("sasl-java-denied"),
            [ConsoleRecord(f"{PAYLOAD_MARKER}-denied")],
            producer_config={**java_sasl("SCRAM-SHA-512", WRONG_PASSWORD), "max.block.ms": 15000},
            check=False,
            timeout=90,
        )
        found = re.findall(r"(org\.apache\.kafka\.\S+Exception): (.*)", result.stderr)
        assert found, result.stderr[-3000:]
        return " ".join(found[0])

    direct = failure(bed.bootstrap("SASL"))
    proxied = failure(sasl_proxy.bootstrap_servers)
    assert proxied == direct
    assert "SaslAuthenticationException" in proxied
    assert_healthy(sasl_proxy)


# -- secrets and payloads never reach the log (keep last: it checks the module's whole log) -----


def test_no_secrets_or_payloads_in_debug_log(bed: SecureBed, sasl_proxy: ProxyProcess) -> None:
    # Its own traffic, so that it stands alone too: both mechanisms, and a refused login.
    for mechanism in MECHANISMS:
        round_trip(
            ConfluentDriver(extra=confluent_sasl(mechanism)),
            bed,
            sasl_proxy.bootstrap_servers,
            10,
            f"secrecy-{mechanism}",
        )
    _confluent_auth_error(sasl_proxy.bootstrap_servers, "PLAIN")
    sasl_proxy.stop()  # flush and close the log
    log = sasl_proxy.log_path.read_bytes()
    assert b" DEBUG " in log, "the proxy did not log at debug level"
    for secret in (PLAIN_PASSWORD, SCRAM_PASSWORD, WRONG_PASSWORD, PAYLOAD_MARKER):
        for form in (secret.encode(), secret.encode().hex().encode()):
            assert form not in log, f"{secret!r} ({form[:16]!r}...) found in the proxy log"
    assert b"Traceback" not in log
