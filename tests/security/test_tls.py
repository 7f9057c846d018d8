"""TLS on both sides of the proxy, against a real broker with TLS listeners and real clients.

Upstream: the proxy verifies brokers by default (custom CA or the system's), checks host names,
presents a client certificate for mutual TLS, and never falls back to an unverified connection.
Downstream: the proxy serves its bootstrap and broker listeners over TLS, optionally requiring
client certificates. Bad TLS settings stop it at start with exit code 2 naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.certs import TestPKI, make_test_pki
from testbed.clients import (
    ClientDriver,
    ConfluentDriver,
    KafkaPythonDriver,
    assert_round_trip,
    create_topic,
    make_records,
    poll_values,
    unique_name,
)
from testbed.proxy import ProxyProcess

from . import (
    TRACING_OFF,
    TRACING_ON,
    SecureBed,
    assert_healthy,
    client_tls_context,
    probe,
    run_proxy_command,
    running_proxy,
    secure_bed,
    wait_for,
)

pytestmark = pytest.mark.integration

UPSTREAM_ERRORS = "ktp_upstream_connect_errors_total"


@pytest.fixture(scope="module")
def bed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SecureBed:
    return secure_bed(request.config, tmp_path_factory)


def upstream_tls(bed: SecureBed, **extra: str) -> dict[str, str]:
    return {"KTP_UPSTREAM_TLS": "true", "KTP_UPSTREAM_TLS_CA_FILE": str(bed.pki.ca.cert), **extra}


@pytest.fixture(scope="module")
def tls_proxy(bed: SecureBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """Plaintext to clients, verified TLS (test CA) to the broker, tracing on."""
    env = {**TRACING_ON, **upstream_tls(bed)}
    with running_proxy(
        bed.bootstrap("TLS"), tmp_path_factory.mktemp("tls-proxy"), "tls-proxy", env
    ) as proxy:
        yield proxy


def round_trip(
    client: ClientDriver,
    bed: SecureBed,
    proxy: ProxyProcess,
    *,
    count: int = 30,
    traced: bool = True,
) -> None:
    """Produce and consume through `proxy`: every record intact (+ a traceparent if traced)."""
    topic = unique_name(f"sec-{client.name}")
    create_topic(bed.plaintext, topic, partitions=2)
    records = make_records(count, binary=client.binary, seed=len(topic))
    client.produce(proxy.bootstrap_servers, topic, records, timeout=60)
    received = client.consume(proxy.bootstrap_servers, topic, unique_name("g"), count, timeout=60)
    context = "proxy log:\n" + "\n".join(proxy.log().splitlines()[-40:])
    assert_round_trip(records, received, traceparent=traced, context=context)


# -- upstream TLS --------------------------------------------------------------------------------


@pytest.mark.parametrize("client", [KafkaPythonDriver(), ConfluentDriver()], ids=str)
def test_clients_through_proxy_to_tls_broker(
    client: ClientDriver, bed: SecureBed, tls_proxy: ProxyProcess
) -> None:
    round_trip(client, bed, tls_proxy)
    status, body = tls_proxy.admin_get("/readyz")
    assert (status, body.startswith("ready: 1 broker(s) known")) == (200, True), body
    assert tls_proxy.metric(UPSTREAM_ERRORS) == 0
    assert_healthy(tls_proxy)


def test_large_responses_over_tls_arrive_intact(bed: SecureBed, tls_proxy: ProxyProcess) -> None:
    """Fetch responses of megabytes, decrypted straight into the frames the proxy reads them
    into: every value arrives as written, in order."""
    from confluent_kafka import Producer

    topic = unique_name("sec-large")
    create_topic(bed.plaintext, topic, partitions=1)
    values = [os.urandom(100_000) for _ in range(40)]
    producer = Producer({"bootstrap.servers": bed.plaintext, "linger.ms": 100})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    received = poll_values(
        tls_proxy.bootstrap_servers,
        topic,
        len(values),
        {"fetch.max.bytes": 8 << 20, "max.partition.fetch.bytes": 4 << 20},
    )
    assert received == values
    assert_healthy(tls_proxy)


def _assert_refused(proxy: ProxyProcess, log_fragment: str) -> None:
    """The proxy must close a client whose broker it cannot verify, say why, and count it."""
    result = probe(proxy.listen_port, timeout=20)
    assert not result.answered, "the proxy relayed to a broker it could not verify"
    assert result.seconds < 15, f"refusal took {result.seconds:.1f}s ({result.reason})"
    assert wait_for(lambda: log_fragment in proxy.log(), 10), proxy.log()
    assert "CERTIFICATE_VERIFY_FAILED" in proxy.log()
    assert proxy.metric(UPSTREAM_ERRORS, listener="bootstrap") >= 1
    # Discovery fails the same way, so the proxy does not call itself ready either; the reason
    # appears once its first attempt has failed (it runs beside the client's connection).
    assert wait_for(lambda: "certificate verify failed" in proxy.admin_get("/readyz")[1], 10), (
        proxy.admin_get("/readyz")
    )
    status, body = proxy.admin_get("/readyz")
    assert status == 503, body
    assert_healthy(proxy)


@pytest.mark.parametrize("ca", ["unrelated-ca", "system-cas"])
def test_unverifiable_broker_is_refused(
    ca: str, bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {**TRACING_OFF, "KTP_UPSTREAM_TLS": "true"}
    if ca == "unrelated-ca":
        env["KTP_UPSTREAM_TLS_CA_FILE"] = str(bed.pki.other_ca.cert)
    workdir = tmp_path_factory.mktemp(f"refuse-{ca}")
    with running_proxy(bed.bootstrap("TLS"), workdir, f"refuse-{ca}", env) as proxy:
        _assert_refused(proxy, "unable to get local issuer certificate")
        if ca == "unrelated-ca":  # and a real client sees an error, not a hang or success
            from confluent_kafka import KafkaException
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": proxy.bootstrap_servers, "log_level": 0})
            with pytest.raises(KafkaException):
                admin.list_topics(timeout=5)


def test_broker_cert_for_another_host_is_refused(
    bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """WRONGHOST's certificate is signed by the trusted CA but names only broker.invalid."""
    workdir = tmp_path_factory.mktemp("wrong-host")
    with running_proxy(
        bed.bootstrap("WRONGHOST"), workdir, "wrong-host", {**TRACING_OFF, **upstream_tls(bed)}
    ) as proxy:
        _assert_refused(proxy, "IP address mismatch")


def test_verify_false_connects_and_warns(
    bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {**TRACING_ON, "KTP_UPSTREAM_TLS": "true", "KTP_UPSTREAM_TLS_VERIFY": "false"}
    workdir = tmp_path_factory.mktemp("no-verify")
    with running_proxy(bed.bootstrap("WRONGHOST"), workdir, "no-verify", env) as proxy:
        warning = [line for line in proxy.log().splitlines() if "KTP_UPSTREAM_TLS_VERIFY" in line]
        assert warning, proxy.log()
        assert " WARNING " in warning[0] and "NOT verified" in warning[0]
        round_trip(ConfluentDriver(), bed, proxy, count=10)
        assert_healthy(proxy)


@pytest.mark.parametrize("files", ["cert-and-key", "combined-pem"])
def test_mutual_tls_with_client_certificate(
    files: str, bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client = bed.pki.client
    if files == "cert-and-key":
        certs = {
            "KTP_UPSTREAM_TLS_CERT_FILE": str(client.cert),
            "KTP_UPSTREAM_TLS_KEY_FILE": str(client.key),
        }
    else:  # key and certificate in one file, KTP_UPSTREAM_TLS_KEY_FILE unset
        certs = {"KTP_UPSTREAM_TLS_CERT_FILE": str(client.pem)}
    workdir = tmp_path_factory.mktemp(f"mtls-{files}")
    env = {**TRACING_ON, **upstream_tls(bed, **certs)}
    with running_proxy(bed.bootstrap("MTLS"), workdir, f"mtls-{files}", env) as proxy:
        round_trip(ConfluentDriver(), bed, proxy, count=10)
        assert_healthy(proxy)


def test_mutual_tls_without_client_certificate_fails_closed(
    bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("mtls-missing")
    with running_proxy(
        bed.bootstrap("MTLS"), workdir, "mtls-missing", {**TRACING_OFF, **upstream_tls(bed)}
    ) as proxy:
        result = probe(proxy.listen_port, timeout=20)
        assert not result.answered
        assert result.seconds < 15, result
        assert_healthy(proxy)


def test_missing_client_certificate_is_diagnosable(
    bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("mtls-diagnose")
    with running_proxy(
        bed.bootstrap("MTLS"), workdir, "mtls-diagnose", {**TRACING_OFF, **upstream_tls(bed)}
    ) as proxy:
        assert not probe(proxy.listen_port, timeout=20).answered
        status, body = proxy.admin_get("/readyz")
        assert status == 503, body
        assert wait_for(lambda: "certificate" in proxy.log().lower(), 5), proxy.log()


def test_check_reports_tls_broker(bed: SecureBed) -> None:
    env = {
        **TRACING_OFF,
        **upstream_tls(bed),
        "KTP_UPSTREAM_BOOTSTRAP_SERVERS": bed.bootstrap("TLS"),
    }
    good = run_proxy_command(env, "check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "over verified TLS" in good.stdout, good.stdout

    env["KTP_UPSTREAM_TLS_CA_FILE"] = str(bed.pki.other_ca.cert)
    bad = run_proxy_command(env, "check")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "certificate verify failed" in bad.stdout, bad.stdout


# -- downstream TLS (clients to the proxy) -------------------------------------------------------


def listen_tls(pki: TestPKI, **extra: str) -> dict[str, str]:
    return {
        "KTP_LISTEN_TLS_CERT_FILE": str(pki.server.cert),
        "KTP_LISTEN_TLS_KEY_FILE": str(pki.server.key),
        **extra,
    }


@pytest.fixture(scope="module")
def tls_listening_proxy(
    bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """TLS to clients (bootstrap and broker listeners), plaintext to the broker."""
    env = {**TRACING_ON, **listen_tls(bed.pki)}
    workdir = tmp_path_factory.mktemp("tls-listen")
    with running_proxy(bed.plaintext, workdir, "tls-listen", env) as proxy:
        yield proxy


def tls_client(name: str, pki: TestPKI, *, cert: bool = False) -> ClientDriver:
    if name == "confluent-kafka":
        extra = {"security.protocol": "SSL", "ssl.ca.location": str(pki.ca.cert)}
        if cert:
            extra |= {
                "ssl.certificate.location": str(pki.client.cert),
                "ssl.key.location": str(pki.client.key),
            }
        return ConfluentDriver(extra=extra)
    extra = {"security_protocol": "SSL", "ssl_cafile": str(pki.ca.cert)}
    if cert:
        extra |= {"ssl_certfile": str(pki.client.cert), "ssl_keyfile": str(pki.client.key)}
    return KafkaPythonDriver(extra=extra)


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_clients_over_tls_to_proxy(
    client: str, bed: SecureBed, tls_listening_proxy: ProxyProcess
) -> None:
    proxy = tls_listening_proxy
    round_trip(tls_client(client, bed.pki), bed, proxy)
    # The broker listener the clients were sent to speaks TLS too, and nothing else.
    context = client_tls_context(bed.pki.ca.cert)
    for port in (proxy.listen_port, proxy.broker_port(1)):
        assert probe(port, tls=context).answered, f"port {port} over TLS"
        assert not probe(port, timeout=5).answered, f"port {port} answered plaintext"
    assert_healthy(proxy)


def test_client_certificates_required(
    bed: SecureBed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pki = bed.pki
    env = {**TRACING_OFF, **listen_tls(pki, KTP_LISTEN_TLS_CLIENT_CA_FILE=str(pki.ca.cert))}
    workdir = tmp_path_factory.mktemp("tls-mtls-listen")
    with running_proxy(bed.plaintext, workdir, "tls-mtls-listen", env) as proxy:
        round_trip(
            tls_client("confluent-kafka", pki, cert=True), bed, proxy, count=10, traced=False
        )
        without = probe(proxy.listen_port, tls=client_tls_context(pki.ca.cert))
        assert not without.answered, "a client without a certificate was served"
        stranger = client_tls_context(pki.ca.cert, pki.other_client.cert, pki.other_client.key)
        assert not probe(proxy.listen_port, tls=stranger).answered, "a foreign client cert worked"
        trusted = client_tls_context(pki.ca.cert, pki.client.cert, pki.client.key)
        assert probe(proxy.listen_port, tls=trusted).answered
        assert_healthy(proxy)


# -- bad TLS settings stop the proxy at start -----------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Certificates only (these tests need no broker)."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _bad_settings(pki: TestPKI, tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    garbage = tmp / "not-a-ca.pem"
    garbage.write_text("this is not a certificate\n")
    up = {"KTP_UPSTREAM_TLS": "true"}
    return {
        "ca-missing": (
            {**up, "KTP_UPSTREAM_TLS_CA_FILE": str(tmp / "missing-ca.pem")},
            "KTP_UPSTREAM_TLS_CA_FILE",
        ),
        "ca-not-pem": (
            {**up, "KTP_UPSTREAM_TLS_CA_FILE": str(garbage)},
            "KTP_UPSTREAM_TLS_CA_FILE",
        ),
        "ca-is-a-directory": (
            {**up, "KTP_UPSTREAM_TLS_CA_FILE": str(tmp)},
            "KTP_UPSTREAM_TLS_CA_FILE",
        ),
        "cert-without-key": (
            {**up, "KTP_UPSTREAM_TLS_CERT_FILE": str(pki.client.cert)},
            "KTP_UPSTREAM_TLS_CERT_FILE",
        ),
        "key-without-cert": (
            {**up, "KTP_UPSTREAM_TLS_KEY_FILE": str(pki.client.key)},
            "KTP_UPSTREAM_TLS_CERT_FILE",
        ),
        "key-of-another-cert": (
            {
                **up,
                "KTP_UPSTREAM_TLS_CERT_FILE": str(pki.client.cert),
                "KTP_UPSTREAM_TLS_KEY_FILE": str(pki.server.key),
            },
            "KTP_UPSTREAM_TLS_KEY_FILE",
        ),
        "ca-without-tls": (
            {"KTP_UPSTREAM_TLS": "false", "KTP_UPSTREAM_TLS_CA_FILE": str(pki.ca.cert)},
            "KTP_UPSTREAM_TLS",
        ),
        "listen-cert-without-key": (
            {"KTP_LISTEN_TLS_CERT_FILE": str(pki.server.cert)},
            "KTP_LISTEN_TLS_CERT_FILE",
        ),
        "listen-key-without-cert": (
            {"KTP_LISTEN_TLS_KEY_FILE": str(pki.server.key)},
            "KTP_LISTEN_TLS_CERT_FILE",
        ),
        "listen-client-ca-without-cert": (
            {"KTP_LISTEN_TLS_CLIENT_CA_FILE": str(pki.ca.cert)},
            "KTP_LISTEN_TLS_CERT_FILE",
        ),
        "listen-client-ca-missing": (
            {**_listen(pki), "KTP_LISTEN_TLS_CLIENT_CA_FILE": str(tmp / "missing-ca.pem")},
            "KTP_LISTEN_TLS_CLIENT_CA_FILE",
        ),
    }


def _listen(pki: TestPKI) -> dict[str, str]:
    return {"KTP_LISTEN_TLS_CERT_FILE": str(pki.server.pem)}


BAD_CASES = (
    "ca-missing",
    "ca-not-pem",
    "ca-is-a-directory",
    "cert-without-key",
    "key-without-cert",
    "key-of-another-cert",
    "ca-without-tls",
    "listen-cert-without-key",
    "listen-key-without-cert",
    "listen-client-ca-without-cert",
    "listen-client-ca-missing",
)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_tls_settings_stop_the_proxy(case: str, pki: TestPKI, tmp_path: Path) -> None:
    env, variable = _bad_settings(pki, tmp_path)[case]
    result = run_proxy_command(
        {**TRACING_OFF, "KTP_UPSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env}, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{variable}=" in lines[0], lines[0]


def test_unreadable_ca_file_stops_the_proxy(pki: TestPKI, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.cert.read_bytes())
    ca.chmod(0)
    env = {
        **TRACING_OFF,
        "KTP_UPSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KTP_UPSTREAM_TLS": "true",
        "KTP_UPSTREAM_TLS_CA_FILE": str(ca),
    }
    result = run_proxy_command(env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "KTP_UPSTREAM_TLS_CA_FILE=" in result.stderr, result.stderr
