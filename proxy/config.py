"""Settings: one env-file of `KTP_*` variables plus the standard `OTEL_*` ones, checked at start.

Every setting is declared once below with its default and a one-line explanation; the
documented example file `config/kafka-trace-proxy.env` lists the same. A bad value stops the
proxy with one line naming the variable, the value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "KTP_"


class ConfigError(ValueError):
    """A setting has a value the proxy cannot use."""

    def __init__(self, name: str, value: str | None, allowed: str) -> None:
        shown = "(not set)" if value is None else repr(value)
        super().__init__(f"{name}={shown} is invalid: {allowed}")
        self.name = name


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError
    return port


def parse_host_port(text: str) -> HostPort:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError
    if not host or any(c.isspace() for c in host):
        raise ValueError
    return HostPort(host, _port(port_text))


def _host_port_list(text: str) -> tuple[HostPort, ...]:
    items = tuple(parse_host_port(part) for part in text.split(",") if part.strip())
    if not items:
        raise ValueError
    return items


def _port_map(text: str) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        node, sep, port = part.partition("=")
        if not sep:
            raise ValueError
        mapping[int(node)] = _port(port)
    return mapping


def _optional_host_port(text: str) -> HostPort | None:
    return None if text.strip().lower() == "off" else parse_host_port(text)


def _path(text: str) -> str:
    return text.strip()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in choices:
            raise ValueError
        return lowered

    return parse


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: str | None
    parse: Callable[[str], Any]
    allowed: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "KTP_UPSTREAM_BOOTSTRAP_SERVERS",
        None,
        _host_port_list,
        "a comma-separated list of host:port",
        "Kafka brokers to bootstrap from (required).",
    ),
    Setting(
        "KTP_LISTEN_ADDRESS",
        "127.0.0.1:9092",
        parse_host_port,
        "host:port",
        "Where clients connect (the proxy's bootstrap address).",
    ),
    Setting(
        "KTP_ADVERTISED_HOST",
        "",
        str,
        "a host name or IP",
        "Host clients are told to dial for brokers; default: listen host.",
    ),
    Setting(
        "KTP_BROKER_PORT_BASE",
        "",
        _port,
        "a port 1..65535",
        "Broker N is served on this port + N; default: listen port + 1.",
    ),
    Setting(
        "KTP_BROKER_PORT_MAP",
        "",
        _port_map,
        "node=port pairs, comma-separated (1=9101,2=9102)",
        "Explicit local port per broker node id; overrides the base port for those nodes.",
    ),
    Setting(
        "KTP_UPSTREAM_TLS",
        "false",
        _bool,
        "true or false",
        "Connect to the brokers over TLS.",
    ),
    Setting(
        "KTP_UPSTREAM_TLS_CA_FILE",
        "",
        _path,
        "a PEM file path",
        "CA bundle to verify brokers with; default: the system's trusted CAs.",
    ),
    Setting(
        "KTP_UPSTREAM_TLS_CERT_FILE",
        "",
        _path,
        "a PEM file path",
        "Client certificate for mutual TLS with the brokers (with KTP_UPSTREAM_TLS_KEY_FILE).",
    ),
    Setting(
        "KTP_UPSTREAM_TLS_KEY_FILE",
        "",
        _path,
        "a PEM file path",
        "Private key of KTP_UPSTREAM_TLS_CERT_FILE (if not in the same file).",
    ),
    Setting(
        "KTP_UPSTREAM_TLS_VERIFY",
        "true",
        _bool,
        "true or false",
        "Verify broker certificates and host names; false is insecure (testing only).",
    ),
    Setting(
        "KTP_LISTEN_TLS_CERT_FILE",
        "",
        _path,
        "a PEM file path",
        "Serve clients over TLS with this certificate (with KTP_LISTEN_TLS_KEY_FILE).",
    ),
    Setting(
        "KTP_LISTEN_TLS_KEY_FILE",
        "",
        _path,
        "a PEM file path",
        "Private key of KTP_LISTEN_TLS_CERT_FILE (if not in the same file).",
    ),
    Setting(
        "KTP_LISTEN_TLS_CLIENT_CA_FILE",
        "",
        _path,
        "a PEM file path",
        "Require client certificates signed by this CA (mutual TLS for clients).",
    ),
    Setting(
        "KTP_MAX_FRAME_BYTES",
        "104857600",
        _positive_int,
        "a positive number of bytes",
        "Largest Kafka frame accepted in either direction.",
    ),
    Setting(
        "KTP_MAX_BATCH_BYTES",
        "1048588",
        _positive_int,
        "a positive number of bytes",
        "A batch that headers would grow past this is forwarded without them "
        "(the broker's message.max.bytes).",
    ),
    Setting(
        "KTP_MAX_IN_FLIGHT",
        "1000",
        _positive_int,
        "a positive integer",
        "Requests per connection awaiting a response before the proxy "
        "stops reading from that client.",
    ),
    Setting(
        "KTP_BUFFER_HIGH_WATER_BYTES",
        "1048576",
        _positive_int,
        "a positive number of bytes",
        "Unsent bytes on one side at which the proxy stops reading from the other.",
    ),
    Setting(
        "KTP_CONNECT_TIMEOUT_MS",
        "10000",
        _positive_int,
        "a positive number of milliseconds",
        "Timeout for connecting to a broker.",
    ),
    Setting(
        "KTP_SHUTDOWN_TIMEOUT_MS",
        "10000",
        _positive_int,
        "a positive number of milliseconds",
        "On SIGTERM, how long in-flight requests may take to finish before connections close.",
    ),
    Setting(
        "KTP_LOG_LEVEL",
        "info",
        _choice("debug", "info", "warning", "error"),
        "one of debug, info, warning, error",
        "Log verbosity.",
    ),
    Setting(
        "KTP_LOG_FORMAT", "plain", _choice("plain", "json"), "plain or json", "Log line format."
    ),
    Setting(
        "KTP_TRACING_ENABLED",
        "true",
        _bool,
        "true or false",
        "Inject and extract trace context and export spans.",
    ),
    Setting(
        "KTP_TUNE_ALLOCATOR",
        "true",
        _bool,
        "true or false",
        "Keep frame-sized buffers on the C heap instead of mapping fresh memory for each "
        "(glibc; ~10x less CPU per 1 MiB Fetch response).",
    ),
    Setting(
        "KTP_ADMIN_ADDRESS",
        "127.0.0.1:9644",
        _optional_host_port,
        "host:port or off",
        "Admin HTTP endpoint: /metrics (Prometheus), /healthz, /readyz.",
    ),
    Setting(
        "KTP_CONSUMER_SPAN_MODE",
        "parent",
        _choice("parent", "link"),
        "parent or link",
        "Receive spans as children of the record's context (parent) or as new traces "
        "linking to it (link).",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    upstream_bootstrap_servers: tuple[HostPort, ...]
    listen_address: HostPort
    advertised_host: str
    broker_port_base: int
    broker_port_map: Mapping[int, int]
    upstream_tls: bool
    upstream_tls_ca_file: str | None
    upstream_tls_cert_file: str | None
    upstream_tls_key_file: str | None
    upstream_tls_verify: bool
    listen_tls_cert_file: str | None
    listen_tls_key_file: str | None
    listen_tls_client_ca_file: str | None
    max_frame_bytes: int
    max_batch_bytes: int
    max_in_flight: int
    buffer_high_water_bytes: int
    connect_timeout_ms: int
    shutdown_timeout_ms: int
    log_level: str
    log_format: str
    tracing_enabled: bool
    tune_allocator: bool
    consumer_span_mode: str
    admin_address: HostPort | None
    #: Every OTEL_* variable, passed on to the OpenTelemetry SDK configuration.
    otel: Mapping[str, str]
    #: KTP_* variables that are not settings (likely typos), reported at start.
    unknown: tuple[str, ...]


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a Docker-style env-file: KEY=VALUE lines, # comments, no shell expansion."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--env-file", str(path), f"cannot be read ({exc.strerror})") from exc
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{path}:{number}", raw, "expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def _check_tls_combinations(parsed: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Catch TLS settings that would silently do nothing."""
    upstream_files = [
        n
        for n in (
            "KTP_UPSTREAM_TLS_CA_FILE",
            "KTP_UPSTREAM_TLS_CERT_FILE",
            "KTP_UPSTREAM_TLS_KEY_FILE",
        )
        if parsed[n]
    ]
    if upstream_files and not parsed["KTP_UPSTREAM_TLS"]:
        raise ConfigError(
            "KTP_UPSTREAM_TLS",
            env.get("KTP_UPSTREAM_TLS"),
            f"must be true when {upstream_files[0]} is set",
        )
    pairs = (
        ("KTP_UPSTREAM_TLS_KEY_FILE", "KTP_UPSTREAM_TLS_CERT_FILE"),
        ("KTP_LISTEN_TLS_KEY_FILE", "KTP_LISTEN_TLS_CERT_FILE"),
        ("KTP_LISTEN_TLS_CLIENT_CA_FILE", "KTP_LISTEN_TLS_CERT_FILE"),
    )
    for dependent, required in pairs:
        if parsed[dependent] and not parsed[required]:
            raise ConfigError(required, None, f"required when {dependent} is set")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate settings from an environment mapping (default: the process environment)."""
    env = dict(os.environ if environ is None else environ)
    parsed: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.name)
        if raw is None or raw.strip() == "":
            if setting.default is None:
                raise ConfigError(setting.name, None, f"required; expected {setting.allowed}")
            if setting.default == "":
                parsed[setting.name] = None
                continue
            raw = setting.default
        try:
            parsed[setting.name] = setting.parse(raw)
        except (ValueError, TypeError):
            raise ConfigError(setting.name, raw, f"expected {setting.allowed}") from None
    listen: HostPort = parsed["KTP_LISTEN_ADDRESS"]
    advertised = parsed["KTP_ADVERTISED_HOST"] or listen.host
    if advertised in ("0.0.0.0", "::"):
        raise ConfigError(
            "KTP_ADVERTISED_HOST",
            env.get("KTP_ADVERTISED_HOST"),
            "required when listening on all interfaces: the address clients should dial",
        )
    _check_tls_combinations(parsed, env)
    base = parsed["KTP_BROKER_PORT_BASE"] or listen.port + 1
    return Settings(
        upstream_bootstrap_servers=parsed["KTP_UPSTREAM_BOOTSTRAP_SERVERS"],
        listen_address=listen,
        advertised_host=advertised,
        broker_port_base=base,
        broker_port_map=parsed["KTP_BROKER_PORT_MAP"] or {},
        upstream_tls=parsed["KTP_UPSTREAM_TLS"],
        upstream_tls_ca_file=parsed["KTP_UPSTREAM_TLS_CA_FILE"],
        upstream_tls_cert_file=parsed["KTP_UPSTREAM_TLS_CERT_FILE"],
        upstream_tls_key_file=parsed["KTP_UPSTREAM_TLS_KEY_FILE"],
        upstream_tls_verify=parsed["KTP_UPSTREAM_TLS_VERIFY"],
        listen_tls_cert_file=parsed["KTP_LISTEN_TLS_CERT_FILE"],
        listen_tls_key_file=parsed["KTP_LISTEN_TLS_KEY_FILE"],
        listen_tls_client_ca_file=parsed["KTP_LISTEN_TLS_CLIENT_CA_FILE"],
        max_frame_bytes=parsed["KTP_MAX_FRAME_BYTES"],
        max_batch_bytes=parsed["KTP_MAX_BATCH_BYTES"],
        max_in_flight=parsed["KTP_MAX_IN_FLIGHT"],
        buffer_high_water_bytes=parsed["KTP_BUFFER_HIGH_WATER_BYTES"],
        connect_timeout_ms=parsed["KTP_CONNECT_TIMEOUT_MS"],
        shutdown_timeout_ms=parsed["KTP_SHUTDOWN_TIMEOUT_MS"],
        log_level=parsed["KTP_LOG_LEVEL"],
        log_format=parsed["KTP_LOG_FORMAT"],
        tracing_enabled=parsed["KTP_TRACING_ENABLED"],
        tune_allocator=parsed["KTP_TUNE_ALLOCATOR"],
        consumer_span_mode=parsed["KTP_CONSUMER_SPAN_MODE"],
        admin_address=parsed["KTP_ADMIN_ADDRESS"],
        otel={k: v for k, v in env.items() if k.startswith("OTEL_")},
        unknown=tuple(sorted(k for k in env if k.startswith(PREFIX) and k not in _BY_NAME)),
    )
