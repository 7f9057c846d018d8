"""The command operators run: help, and start-up failures that say exactly what is wrong."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import warn_if_not_compiled
from proxy.codec import native

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTP_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_describes_the_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "--env-file" in result.stdout and "KTP_" in result.stdout


def test_bad_setting_exits_2_with_one_line_naming_it() -> None:
    result = run(
        env={"KTP_UPSTREAM_BOOTSTRAP_SERVERS": "kafka:9092", "KTP_LISTEN_ADDRESS": "localhost:http"}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "KTP_LISTEN_ADDRESS='localhost:http' is invalid" in lines[0]


def test_bad_otel_setting_exits_2(tmp_path: Path) -> None:
    env_file = tmp_path / "proxy.env"
    env_file.write_text("KTP_UPSTREAM_BOOTSTRAP_SERVERS=kafka:9092\nOTEL_TRACES_SAMPLER=often\n")
    result = run("--env-file", str(env_file))
    assert result.returncode == 2
    assert "OTEL_TRACES_SAMPLER='often'" in result.stderr


def test_unreadable_env_file_exits_2(tmp_path: Path) -> None:
    result = run("--env-file", str(tmp_path / "missing.env"))
    assert result.returncode == 2 and "missing.env" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "kafka-trace-proxy"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "kafka-trace-proxy" in result.stdout


def test_a_missing_c_extension_is_reported_not_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(native, "compiled", None)
    with caplog.at_level(logging.WARNING, logger="proxy"):
        warn_if_not_compiled()
    assert "pure Python" in caplog.text and "C compiler" in caplog.text


def test_nothing_is_said_when_the_c_extension_is_built(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy"):
        warn_if_not_compiled()
    assert caplog.text == ""
