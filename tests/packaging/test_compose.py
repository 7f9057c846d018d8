"""The docker-compose demo: Kafka, Jaeger, and two apps each sharing its sidecar's network."""

from __future__ import annotations

import base64
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.config import load_settings

from . import REPO_ROOT, module, needs_packaging_tools, setup_variable, tool

COMPOSE = REPO_ROOT / "docker-compose.yml"
APPS = {"orders": "orders-proxy", "billing": "billing-proxy"}
REQUIRED_ENV = (
    "KTP_UPSTREAM_BOOTSTRAP_SERVERS",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

Services = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def services() -> Services:
    compose = module("yaml").safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def image_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "")


def test_services_present(services: Services) -> None:
    assert set(services) == {"kafka", "jaeger", *APPS, *APPS.values()}


def test_images_pinned(services: Services) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        _repository, tag = image_tag(image)
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
    assert image_tag(services["kafka"]["image"]) == (
        "apache/kafka",
        setup_variable("KAFKA_4_VERSION"),
    )
    # Jaeger v2 (one binary, OTLP built in), the version the test bed runs.
    assert image_tag(services["jaeger"]["image"]) == (
        "jaegertracing/jaeger",
        setup_variable("JAEGER_VERSION"),
    )
    assert setup_variable("JAEGER_VERSION").startswith("2.")


def test_sidecars_built_from_the_dockerfile(services: Services) -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for sidecar in APPS.values():
        service = services[sidecar]
        build = service["build"]
        context = build if isinstance(build, str) else build["context"]
        assert (COMPOSE.parent / context).resolve() == REPO_ROOT
        assert isinstance(build, str) or build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert image_tag(service["image"]) == ("kafka-trace-proxy", project["version"])
        assert "network_mode" not in service and "ports" not in service


def test_apps_share_their_sidecars_network(services: Services) -> None:
    for app, sidecar in APPS.items():
        service = services[app]
        assert service["network_mode"] == f"service:{sidecar}"
        # network_mode: service: excludes networks and ports of its own.
        assert "networks" not in service and "ports" not in service
        listen = environment(services[sidecar])["KTP_LISTEN_ADDRESS"]
        command = service["command"]
        assert command[:4] == ["python", "-m", "demo.apps", app], command
        assert command[command.index("--bootstrap") + 1] == listen == "127.0.0.1:9092"
        assert service["depends_on"][sidecar]["condition"] == "service_healthy"


def test_sidecar_env_complete(services: Services) -> None:
    kafka_listeners = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    advertised = re.findall(r"PLAINTEXT://([^,]+)", kafka_listeners)
    for app, sidecar in APPS.items():
        env = environment(services[sidecar])
        missing = [name for name in REQUIRED_ENV if not env.get(name)]
        assert not missing, f"{sidecar}: {missing} not set"
        assert env["OTEL_SERVICE_NAME"] == app
        assert env["KTP_UPSTREAM_BOOTSTRAP_SERVERS"] in advertised
        otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (otlp.scheme, otlp.hostname, otlp.port) == ("http", "jaeger", 4318)
        # Docker's HEALTHCHECK (Dockerfile) probes the admin endpoint on 127.0.0.1:9644.
        assert env.get("KTP_ADMIN_ADDRESS", "127.0.0.1:9644").endswith(":9644")
        settings = load_settings(env)
        assert not settings.unknown, settings.unknown
        assert services[sidecar]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_kafka_single_kraft_node(services: Services) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@localhost:9093"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    # kafka-storage format wants a base64url-encoded UUID.
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16 and len(cluster_id) == 22
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_jaeger_listens_for_otlp_and_shows_its_ui(services: Services) -> None:
    jaeger = services["jaeger"]
    assert environment(jaeger).get("JAEGER_LISTEN_HOST") == "0.0.0.0"
    assert "16686:16686" in jaeger["ports"]


def demo_app_dockerfile(services: Services) -> str:
    builds = {str(services[app]["build"]) for app in APPS}
    assert len(builds) == 1, "both demo apps use one image"
    build = services["orders"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO_ROOT / "demo"
    return build["dockerfile_inline"]


def test_demo_app_image(services: Services) -> None:
    dockerfile = demo_app_dockerfile(services)
    test_deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    kafka_python = next(d for d in test_deps if d.startswith("kafka-python=="))
    assert f"pip install --no-cache-dir {kafka_python}" in dockerfile
    assert "COPY . /app/demo" in dockerfile and "WORKDIR /app" in dockerfile
    assert (REPO_ROOT / "demo" / "apps.py").is_file()
    assert re.search(r"^USER [1-9]\d*$", dockerfile, re.MULTILINE), "demo apps run as root"


@needs_packaging_tools
def test_demo_app_dockerfile_hadolint_clean(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(demo_app_dockerfile(services))
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
