"""A throw-away PKI for TLS tests: a test CA, server and client certificates, an unrelated CA.

Made with the `openssl` command line (the `cryptography` package is not a dependency of the test
extras). Keys are unencrypted PKCS#8 PEM (`BEGIN PRIVATE KEY`): Python's ssl, librdkafka,
kafka-python and Kafka's PEM key stores (`ssl.keystore.type=PEM`) all read them. Certificates are
valid for a few days, carry subject/authority key identifiers and a critical basicConstraints, so
they also pass strict X.509 verification (Python 3.13's VERIFY_X509_STRICT).

    pki = make_test_pki(tmp_path / "pki")
    pki.ca.cert                 # trust anchor for brokers and proxy (PEM)
    pki.server.pem              # key + certificate in one file (Kafka's PEM key store)
    pki.wrong_host.cert         # signed by the CA, but for a host name nobody dials
    pki.client.cert, .key       # client certificate (mTLS), signed by the CA
    pki.other_ca.cert           # an unrelated CA: verifying with it must fail
    pki.other_client.cert       # a client certificate the test CA did not sign
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DAYS = 7

_MINIMAL_CONF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
"""

_serials = itertools.count(0x4B5450)  # "KTP": unique serials within one test process


class CertError(RuntimeError):
    """openssl failed; the message carries its output."""


def openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise CertError("the openssl command is needed to make test certificates")
    return found


def _run(args: Sequence[str], workdir: Path) -> None:
    env = {**os.environ, "OPENSSL_CONF": str(workdir / "openssl.cnf")}
    result = subprocess.run(
        [openssl(), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise CertError(f"openssl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as separate PEM files and as one combined file."""

    name: str
    cert: Path
    key: Path
    #: Private key followed by the certificate (what a PEM key store or `certfile` alone wants).
    pem: Path


@dataclass(frozen=True)
class TestPKI:
    __test__ = False  # not a pytest test class

    directory: Path
    ca: KeyPair
    server: KeyPair
    wrong_host: KeyPair
    client: KeyPair
    other_ca: KeyPair
    other_client: KeyPair


def _new_key(path: Path, workdir: Path) -> None:
    _run(
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
        workdir,
    )
    path.chmod(0o600)


def _combine(pair_dir: Path, name: str, key: Path, cert: Path) -> KeyPair:
    pem = pair_dir / f"{name}.pem"
    pem.write_text(key.read_text() + cert.read_text())
    pem.chmod(0o600)
    return KeyPair(name, cert, key, pem)


def make_ca(directory: Path, name: str, common_name: str | None = None) -> KeyPair:
    """A self-signed CA certificate (and key) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_conf(directory)
    key = directory / f"{name}.key"
    cert = directory / f"{name}.crt"
    conf = directory / f"{name}.cnf"
    conf.write_text(
        _MINIMAL_CONF + "\n[v3]\n"
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid:always\n"
    )
    _new_key(key, directory)
    _run(
        [
            "req", "-x509", "-new", "-key", str(key), "-out", str(cert),
            "-days", str(DAYS), "-subj", f"/O=kafka-trace-proxy tests/CN={common_name or name}",
            "-set_serial", str(next(_serials)), "-config", str(conf), "-extensions", "v3",
        ],
        directory,
    )  # fmt: skip
    return _combine(directory, name, key, cert)


def issue(
    ca: KeyPair,
    directory: Path,
    name: str,
    *,
    common_name: str,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    server: bool = True,
    client: bool = False,
) -> KeyPair:
    """A leaf certificate signed by `ca`, with the given subjectAltNames and uses."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_conf(directory)
    key = directory / f"{name}.key"
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    uses = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
    sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
    lines = [
        "[v3]",
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature",
        f"extendedKeyUsage = {', '.join(uses)}",
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid, issuer",
    ]
    if sans:
        lines.append(f"subjectAltName = {', '.join(sans)}")
    ext.write_text("\n".join(lines) + "\n")
    _new_key(key, directory)
    _run(
        ["req", "-new", "-key", str(key), "-out", str(csr),
         "-subj", f"/O=kafka-trace-proxy tests/CN={common_name}"],
        directory,
    )  # fmt: skip
    _run(
        [
            "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", str(next(_serials)), "-days", str(DAYS), "-out", str(cert),
            "-extfile", str(ext), "-extensions", "v3",
        ],
        directory,
    )  # fmt: skip
    csr.unlink()
    return _combine(directory, name, key, cert)


def _write_conf(directory: Path) -> None:
    # openssl reads OPENSSL_CONF for `req`; a minimal file keeps the system's defaults (which
    # may add extensions or ask for fields) out of the certificates.
    conf = directory / "openssl.cnf"
    if not conf.exists():
        conf.write_text(_MINIMAL_CONF)


def make_test_pki(directory: Path) -> TestPKI:
    """The full set of certificates the TLS tests need (about a second of openssl runs)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_conf(directory)
    ca = make_ca(directory, "ca", "ktp test CA")
    other_ca = make_ca(directory, "other-ca", "unrelated CA")
    return TestPKI(
        directory=directory,
        ca=ca,
        server=issue(
            ca,
            directory,
            "server",
            common_name="localhost",
            dns=["localhost"],
            ips=["127.0.0.1"],
            server=True,
            client=True,
        ),
        wrong_host=issue(
            ca,
            directory,
            "wrong-host",
            common_name="broker.invalid",
            dns=["broker.invalid"],
            server=True,
        ),
        client=issue(ca, directory, "client", common_name="ktp-client", server=False, client=True),
        other_ca=other_ca,
        other_client=issue(
            other_ca, directory, "other-client", common_name="stranger", server=False, client=True
        ),
    )
