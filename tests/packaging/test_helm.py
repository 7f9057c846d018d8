"""The Helm chart: lints, renders manifests valid for Kubernetes, and wires the sidecar right."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_settings

from . import REPO_ROOT, module, needs_packaging_tools, tool

pytestmark = needs_packaging_tools

CHART = REPO_ROOT / "helm" / "kafka-trace-proxy"
JAEGER_VALUES = CHART / "examples" / "jaeger-values.yaml"
SIDECAR = "kafka-trace-proxy"
# The oldest Kubernetes with native sidecars on by default, and the newest the schemas cover.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm's cache, config and data directories in a temporary directory."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    return env


def helm(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def render(
    env: dict[str, str], *args: str | Path, release: str = "orders", chart: Path = CHART
) -> list[Doc]:
    result = helm(env, "template", release, chart, *args)
    assert result.returncode == 0, result.stderr
    yaml = module("yaml")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(env: dict[str, str], *args: str | Path) -> str:
    result = helm(env, "template", "orders", CHART, *args)
    assert result.returncode != 0, f"rendered although it should not:\n{result.stdout}"
    return result.stderr


def values_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return path


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def sidecar(spec: Doc) -> Doc:
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    found = [c for c in containers if c["name"] == SIDECAR]
    assert len(found) == 1, [c["name"] for c in containers]
    return found[0]


def config(docs: list[Doc]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


def validate(docs: list[Doc]) -> None:
    """Every manifest against the strict Kubernetes JSON schemas (no unknown fields)."""
    kubernetes_validate = module("kubernetes_validate")
    assert docs
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                pytest.fail(
                    f"{doc['kind']} invalid for Kubernetes {version}: {where}: {exc.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(exc.message)


@pytest.fixture(scope="module")
def default_docs(helm_env: dict[str, str]) -> list[Doc]:
    return render(helm_env)


@pytest.fixture(scope="module")
def jaeger_docs(helm_env: dict[str, str]) -> list[Doc]:
    return render(helm_env, "-f", JAEGER_VALUES)


@pytest.mark.parametrize("values", [None, JAEGER_VALUES], ids=["default", "jaeger"])
def test_lint(helm_env: dict[str, str], values: Path | None) -> None:
    result = helm(helm_env, "lint", "--strict", CHART, *(["-f", values] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_default_manifests_are_valid_kubernetes(default_docs: list[Doc]) -> None:
    assert sorted(d["kind"] for d in default_docs) == ["ConfigMap", "Deployment"]
    validate(default_docs)


def test_jaeger_example_manifests_are_valid_kubernetes(jaeger_docs: list[Doc]) -> None:
    validate(jaeger_docs)


def test_schema_validation_rejects_a_bad_manifest(default_docs: list[Doc]) -> None:
    """The validator catches what `helm template` does not: an unknown field, a wrong type."""
    bad = one(default_docs, "Deployment")
    bad = {**bad, "spec": {**bad["spec"], "replica": 1}}
    with pytest.raises(pytest.fail.Exception, match="replica"):
        validate([bad])


def test_sidecar_probes_on_admin_port(default_docs: list[Doc]) -> None:
    container = sidecar(pod_spec(default_docs))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz" and readiness["path"] == "/readyz"
    assert ports[liveness["port"]] == ports[readiness["port"]] == 9644
    # The kubelet probes the pod IP: the admin endpoint listens on all interfaces, the Kafka
    # listener only on the pod's localhost, where the app container reaches it.
    data = config(default_docs)
    assert data["KTP_ADMIN_ADDRESS"] == "0.0.0.0:9644"
    assert data["KTP_LISTEN_ADDRESS"] == "127.0.0.1:9092"


def test_sidecar_reads_the_configmap(default_docs: list[Doc]) -> None:
    container = sidecar(pod_spec(default_docs))
    configmap = one(default_docs, "ConfigMap")["metadata"]["name"]
    assert {"configMapRef": {"name": configmap}} in container["envFrom"]
    assert "env" not in container, "settings belong in the ConfigMap"


def test_configmap_from_values(helm_env: dict[str, str], tmp_path: Path) -> None:
    values = values_file(
        tmp_path,
        """
upstream:
  bootstrapServers: [b1.kafka:9092, b2.kafka:9092]
otlp:
  endpoint: http://collector.obs:4317
  protocol: grpc
serviceName: checkout
listenPort: 19092
adminPort: 19644
env:
  KTP_LOG_FORMAT: json
  KTP_TRACING_ENABLED: false
  OTEL_TRACES_SAMPLER_ARG: 0.5
""",
    )
    docs = render(helm_env, "-f", values)
    data = config(docs)
    assert data == {
        "KTP_UPSTREAM_BOOTSTRAP_SERVERS": "b1.kafka:9092,b2.kafka:9092",
        "KTP_LISTEN_ADDRESS": "127.0.0.1:19092",
        "KTP_ADMIN_ADDRESS": "0.0.0.0:19644",
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.obs:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "KTP_LOG_FORMAT": "json",
        "KTP_TRACING_ENABLED": "false",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    # The proxy accepts every setting, and none is unknown to it.
    settings = load_settings(data)
    assert not settings.unknown
    assert settings.admin_address is not None and settings.admin_address.port == 19644
    spec = pod_spec(docs)
    container = sidecar(spec)
    assert container["livenessProbe"]["httpGet"]["port"] == "ktp-admin"
    assert container["ports"] == [{"name": "ktp-admin", "containerPort": 19644, "protocol": "TCP"}]
    app = spec["containers"][0]
    assert {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "127.0.0.1:19092"} in app["env"]
    validate(docs)


def test_default_configmap_is_a_valid_proxy_config(default_docs: list[Doc]) -> None:
    settings = load_settings(config(default_docs))
    assert not settings.unknown
    assert str(settings.upstream_bootstrap_servers[0]) == "kafka:9092"


@pytest.mark.parametrize("release", ["orders", "payments-eu"])
def test_service_name_defaults_to_release_name(helm_env: dict[str, str], release: str) -> None:
    docs = render(helm_env, release=release)
    assert config(docs)["OTEL_SERVICE_NAME"] == release
    assert one(docs, "Deployment")["metadata"]["name"] == release


def test_security_context(default_docs: list[Doc]) -> None:
    context = sidecar(pod_spec(default_docs))["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    # The image's user (Dockerfile USER), so runAsNonRoot holds for the image as built.
    dockerfile_users = [
        line.split()[1]
        for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    assert str(context["runAsUser"]) == dockerfile_users[-1].split(":")[0]


def test_sidecar_image_and_resources(default_docs: list[Doc]) -> None:
    container = sidecar(pod_spec(default_docs))
    chart = module("yaml").safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"kafka-trace-proxy:{chart['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_chart_app_version_is_the_project_version() -> None:
    chart = module("yaml").safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_jaeger_example(jaeger_docs: list[Doc]) -> None:
    data = config(jaeger_docs)
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://jaeger-collector.")
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")
    assert data["OTEL_SERVICE_NAME"] == "orders"
    assert not load_settings(data).unknown
    spec = pod_spec(jaeger_docs)
    # A native sidecar: an init container that keeps running, started before the app.
    container = sidecar(spec)
    assert container in spec["initContainers"] and container["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["orders"]
    app = spec["containers"][0]
    assert app["image"] == "registry.example.com/shop/orders:2.4.1"
    assert {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "127.0.0.1:9092"} in app["env"]


def test_secrets(helm_env: dict[str, str], tmp_path: Path) -> None:
    values = values_file(
        tmp_path,
        """
secretEnv:
  OTEL_EXPORTER_OTLP_HEADERS: authorization=Bearer s3cret
existingSecretEnv: kafka-credentials
secretFiles:
  secretName: otlp-ca
env:
  OTEL_EXPORTER_OTLP_CERTIFICATE: /etc/kafka-trace-proxy/secrets/ca.crt
app:
  volumes:
    - name: data
      emptyDir: {}
  volumeMounts:
    - name: data
      mountPath: /data
""",
    )
    docs = render(helm_env, "-f", values)
    secret = one(docs, "Secret")
    assert secret["stringData"] == {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret"}
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in config(docs)
    spec = pod_spec(docs)
    container = sidecar(spec)
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    assert {"secretRef": {"name": "kafka-credentials"}} in container["envFrom"]
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == "/etc/kafka-trace-proxy/secrets" and mount["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "otlp-ca"
    assert "data" in volumes
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/kafka-trace-proxy-secret" in annotations
    validate(docs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("env:\n  LOG_LEVEL: debug\n", "LOG_LEVEL"),
        ("env:\n  KTP_ADMIN_ADDRESS: 127.0.0.1:9644\n", "KTP_ADMIN_ADDRESS"),
        ("upstream:\n  bootstrapServer: kafka:9092\n", "bootstrapServer"),
        ("upstream:\n  bootstrapServers: kafka\n", "bootstrapServers"),
        ("otlp:\n  endpoint: jaeger:4318\n", "endpoint"),
        ("imagee:\n  tag: x\n", "imagee"),
    ],
    ids=["not-a-setting", "managed-key", "typo", "no-port", "no-scheme", "unknown-value"],
)
def test_bad_values_refused(
    helm_env: dict[str, str], tmp_path: Path, values: str, message: str
) -> None:
    assert message in render_error(helm_env, "-f", values_file(tmp_path, values))


def test_sidecar_included_in_another_charts_pod(helm_env: dict[str, str], tmp_path: Path) -> None:
    """Use 2 of the README: a parent chart includes the named templates in its own pod spec."""
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "kafka-trace-proxy")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\n"
        "dependencies:\n  - name: kafka-trace-proxy\n    version: 0.1.0\n"
    )
    (parent / "values.yaml").write_text(
        """
kafka-trace-proxy:
  app:
    enabled: false
  upstream:
    bootstrapServers: kafka.shop:9092
  serviceName: shop-api
  secretFiles:
    secretName: otlp-ca
"""
    )
    (parent / "templates" / "deployment.yaml").write_text(
        """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-api
spec:
  selector:
    matchLabels: {app: shop-api}
  template:
    metadata:
      labels: {app: shop-api}
    spec:
      containers:
        - name: shop-api
          image: registry.example.com/shop/api:1.0.0
        {{- $ktp := index .Subcharts "kafka-trace-proxy" }}
        {{- include "kafka-trace-proxy.container" $ktp | nindent 8 }}
      {{- with include "kafka-trace-proxy.volumes" $ktp }}
      volumes:
        {{- . | nindent 8 }}
      {{- end }}
"""
    )
    docs = render(helm_env, chart=parent, release="shop")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment"]
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["containers"]] == ["shop-api", SIDECAR]
    configmap = one(docs, "ConfigMap")
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in sidecar(spec)["envFrom"]
    assert configmap["data"]["OTEL_SERVICE_NAME"] == "shop-api"
    assert configmap["data"]["KTP_UPSTREAM_BOOTSTRAP_SERVERS"] == "kafka.shop:9092"
    assert spec["volumes"][0]["secret"]["secretName"] == "otlp-ca"
    validate(docs)
