"""TLS for both sides: verify brokers by default, optionally present a client certificate
(mutual TLS), and optionally serve clients over TLS.

Contexts are built once at start-up; an unreadable or unusable file stops the proxy with the name
of the setting that points at it.
"""

from __future__ import annotations

import logging
import ssl

from .config import ConfigError, Settings

log = logging.getLogger(__name__)


def _load_chain(
    context: ssl.SSLContext, cert: str, key: str | None, names: tuple[str, str]
) -> None:
    try:
        context.load_cert_chain(cert, key or None)
    except FileNotFoundError as exc:
        raise ConfigError(names[0], cert, f"cannot be read ({exc.strerror})") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            names[1] if key else names[0],
            key or cert,
            f"certificate and key do not load together ({exc})",
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: str, name: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError as exc:
        raise ConfigError(name, ca_file, f"cannot be read ({exc.strerror})") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(name, ca_file, f"is not a PEM CA bundle ({exc})") from None


def upstream_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for connections to brokers, or None for plaintext."""
    if not settings.upstream_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if settings.upstream_tls_ca_file:
        _load_ca(context, settings.upstream_tls_ca_file, "KTP_UPSTREAM_TLS_CA_FILE")
    if settings.upstream_tls_cert_file:
        _load_chain(
            context,
            settings.upstream_tls_cert_file,
            settings.upstream_tls_key_file,
            ("KTP_UPSTREAM_TLS_CERT_FILE", "KTP_UPSTREAM_TLS_KEY_FILE"),
        )
    if not settings.upstream_tls_verify:
        log.warning(
            "KTP_UPSTREAM_TLS_VERIFY=false: broker certificates are NOT verified; anyone on the "
            "network path can impersonate the cluster"
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def listener_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for serving clients, or None for plaintext listeners."""
    if not settings.listen_tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(
        context,
        settings.listen_tls_cert_file,
        settings.listen_tls_key_file,
        ("KTP_LISTEN_TLS_CERT_FILE", "KTP_LISTEN_TLS_KEY_FILE"),
    )
    if settings.listen_tls_client_ca_file:
        _load_ca(context, settings.listen_tls_client_ca_file, "KTP_LISTEN_TLS_CLIENT_CA_FILE")
        context.verify_mode = ssl.CERT_REQUIRED
    return context
