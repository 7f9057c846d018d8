"""Settings: defaults, every bad value named with what is allowed, the documented example file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.config import SETTINGS, ConfigError, HostPort, load_settings, read_env_file

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "kafka-trace-proxy.env"
REQUIRED = {"KTP_UPSTREAM_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092"}


def test_defaults_are_secure_and_derived() -> None:
    settings = load_settings(REQUIRED)
    assert settings.upstream_bootstrap_servers == (
        HostPort("kafka-1", 9092),
        HostPort("kafka-2", 9092),
    )
    assert settings.listen_address == HostPort("127.0.0.1", 9092)
    assert settings.advertised_host == "127.0.0.1"
    assert settings.broker_port_base == 9093
    assert settings.tracing_enabled is True
    assert settings.unknown == ()


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("KTP_UPSTREAM_BOOTSTRAP_SERVERS", "kafka", "host:port"),
        ("KTP_UPSTREAM_BOOTSTRAP_SERVERS", "kafka:99999", "host:port"),
        ("KTP_LISTEN_ADDRESS", "127.0.0.1:0", "host:port"),
        ("KTP_LISTEN_ADDRESS", "127.0.0.1", "host:port"),
        ("KTP_BROKER_PORT_BASE", "70000", "1..65535"),
        ("KTP_BROKER_PORT_MAP", "1:9101", "node=port"),
        ("KTP_MAX_FRAME_BYTES", "-5", "positive"),
        ("KTP_LOG_LEVEL", "verbose", "debug, info, warning, error"),
        ("KTP_LOG_FORMAT", "xml", "plain or json"),
        ("KTP_TRACING_ENABLED", "maybe", "true or false"),
        ("KTP_CONSUMER_SPAN_MODE", "sibling", "parent or link"),
    ],
)
def test_bad_value_names_variable_value_and_what_is_allowed(
    name: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**REQUIRED, name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r} is invalid")
    assert allowed in message


def test_missing_upstream_is_named() -> None:
    with pytest.raises(ConfigError, match=r"KTP_UPSTREAM_BOOTSTRAP_SERVERS=\(not set\)"):
        load_settings({})


def test_listening_on_all_interfaces_needs_an_advertised_host() -> None:
    with pytest.raises(ConfigError, match="KTP_ADVERTISED_HOST"):
        load_settings({**REQUIRED, "KTP_LISTEN_ADDRESS": "0.0.0.0:9092"})
    settings = load_settings(
        {**REQUIRED, "KTP_LISTEN_ADDRESS": "0.0.0.0:9092", "KTP_ADVERTISED_HOST": "10.1.2.3"}
    )
    assert settings.advertised_host == "10.1.2.3"


def test_unknown_ktp_variables_are_reported() -> None:
    assert load_settings({**REQUIRED, "KTP_LISTEN_ADRESS": "x"}).unknown == ("KTP_LISTEN_ADRESS",)


def test_ipv6_addresses() -> None:
    settings = load_settings({**REQUIRED, "KTP_LISTEN_ADDRESS": "[::1]:9092"})
    assert settings.listen_address == HostPort("::1", 9092)


def test_env_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "proxy.env"
    path.write_text('# comment\n\nexport KTP_LOG_LEVEL=debug\nOTEL_SERVICE_NAME="orders"\n')
    assert read_env_file(path) == {"KTP_LOG_LEVEL": "debug", "OTEL_SERVICE_NAME": "orders"}
    path.write_text("NOT A SETTING\n")
    with pytest.raises(ConfigError, match=r"proxy\.env:1"):
        read_env_file(path)


def test_example_env_file_documents_every_setting_with_its_default() -> None:
    text = EXAMPLE.read_text()
    for setting in SETTINGS:
        if setting.default is None:
            assert re.search(rf"^{setting.name}=\S+", text, re.M), setting.name
        else:
            assert f"# {setting.name}={setting.default}\n" in text, setting.name
    settings = load_settings(read_env_file(EXAMPLE))
    assert settings.unknown == ()
