"""What an operator touches: admin endpoints under real traffic, `check`, JSON logs, SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from testbed.clients import Record, driver
from testbed.jaeger import Jaeger, wait_for
from testbed.kafka import KafkaCluster
from testbed.ports import free_port
from testbed.proxy import REPO_ROOT, ProxyProcess

pytestmark = pytest.mark.integration


def test_metrics_and_health_during_real_traffic(
    kafka: KafkaCluster, jaeger: Jaeger, tmp_path: Path
) -> None:
    env = {
        "OTEL_SERVICE_NAME": "ops",
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with ProxyProcess(kafka.bootstrap_servers, tmp_path, env=env) as proxy:
        assert proxy.admin_get("/healthz") == (200, "ok\n")
        wait_for(lambda: proxy.admin_get("/readyz")[0] == 200, timeout=10)
        topic = f"ops-{uuid.uuid4().hex[:6]}"
        records = [Record(b"k", b"v" * 1000) for _ in range(500)]
        client = driver("kafka-python")
        client.produce(proxy.bootstrap_servers, topic, records)
        client.consume(proxy.bootstrap_servers, topic, f"g-{topic}", len(records))
        wait_for(lambda: proxy.metric("ktp_spans_exported_total") >= 1000, timeout=20)
        status, text = proxy.admin_get("/metrics")
        assert status == 200
        assert proxy.metric("ktp_requests_total", api_key="0") >= 1  # Produce
        assert proxy.metric("ktp_requests_total", api_key="1") >= 1  # Fetch
        assert proxy.metric("ktp_bytes_total", direction="client_to_proxy") > 500_000
        assert proxy.metric("ktp_request_bytes_total", api_key="0") > 500_000
        assert proxy.metric("ktp_response_bytes_total", api_key="1") > 500_000
        assert proxy.metric("ktp_bytes_total", direction="proxy_to_client") > 500_000
        assert proxy.metric("ktp_request_latency_seconds_count", api_key="0") >= 1
        assert proxy.metric("ktp_records_traced_total", side="produce", outcome="sampled") == 500
        assert proxy.metric("ktp_records_traced_total", side="fetch", outcome="context") >= 500
        assert proxy.metric("ktp_spans_dropped_total") == 0
        assert "# TYPE ktp_request_latency_seconds histogram" in text
        assert proxy.admin_get("/nope")[0] == 404


def test_readyz_says_why_it_is_not_ready(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with ProxyProcess(dead, tmp_path, env={"OTEL_TRACES_EXPORTER": "none"}) as proxy:
        status, body = proxy.admin_get("/readyz")
        assert status == 503 and "no upstream broker" in body
        assert proxy.admin_get("/healthz")[0] == 200


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTP_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_what_works(kafka: KafkaCluster, jaeger: Jaeger, tmp_path: Path) -> None:
    env_file = tmp_path / "proxy.env"
    env_file.write_text(
        f"KTP_UPSTREAM_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}\n"
        f"OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_http_endpoint}\n"
    )
    result = run_cli("check", "--env-file", str(env_file), env={})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("ok") for line in lines)
    assert any("broker 1 at" in line for line in lines)
    assert any("collector" in line and "HTTP 200" in line for line in lines)


def test_check_fails_on_unreachable_collector_and_typos(kafka: KafkaCluster) -> None:
    result = run_cli(
        "check",
        env={
            "KTP_UPSTREAM_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "KTP_LISTEN_ADRESS": "127.0.0.1:1",
        },
    )
    assert result.returncode == 1
    assert "FAIL  unknown setting KTP_LISTEN_ADRESS" in result.stdout
    assert any(line.startswith("FAIL  collector") for line in result.stdout.splitlines())


def test_json_logs_are_one_object_per_line(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = {"KTP_LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "none"}
    with ProxyProcess(kafka.bootstrap_servers, tmp_path, env=env) as proxy:
        wait_for(lambda: proxy.admin_get("/readyz")[0] == 200, timeout=10)
    lines = proxy.log().strip().splitlines()
    assert len(lines) >= 3
    entries = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("listening on" in e["message"] for e in entries)


def test_sigterm_exits_cleanly_and_flushes_spans(
    kafka: KafkaCluster, jaeger: Jaeger, tmp_path: Path
) -> None:
    service = f"flush-{uuid.uuid4().hex[:6]}"
    env = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }  # only the shutdown flush can deliver them
    proxy = ProxyProcess(kafka.bootstrap_servers, tmp_path, env=env).start()
    topic = f"flush-{uuid.uuid4().hex[:6]}"
    driver("kafka-python").produce(
        proxy.bootstrap_servers, topic, [Record(None, b"x") for _ in range(20)]
    )
    assert jaeger.traces(service) == []
    assert proxy.stop() == 0
    assert "stopping" in proxy.log()
    traces = jaeger.wait_for(lambda: jaeger.traces(service, limit=100), timeout=10)
    assert len(traces) == 20
