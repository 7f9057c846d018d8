"""Fixtures for the integration tests: the real proxy process in front of real Kafka clusters.

Each proxy is module-scoped (a process start costs ~0.5 s; tests use fresh topics and groups, so
they do not disturb each other). After every test the proxies it used must still be alive and
must not have logged a traceback or an ERROR line; when a test fails, the tail of each proxy's
log is attached to the report (section "proxy log ...").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.kafka import KafkaCluster
from testbed.proxy import ProxyProcess

TRACING_OFF = {"KTP_TRACING_ENABLED": "false"}
TRACING_ON = {"KTP_TRACING_ENABLED": "true", "OTEL_TRACES_EXPORTER": "none"}

_LOG_TAIL_LINES = 150

# proxy -> log size already checked for errors, so each test is blamed only for its own lines.
_checked: dict[int, int] = {}
# The proxies these fixtures started: only they get the health check (other test modules may
# run proxies that are meant to log errors).
_ours: set[int] = set()


def _start(
    cluster: KafkaCluster,
    factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str],
) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(cluster.bootstrap_servers, factory.mktemp(name), env=env, name=name)
    proxy.start()
    _ours.add(id(proxy))
    try:
        yield proxy
    finally:
        proxy.stop()
        _checked.pop(id(proxy), None)
        _ours.discard(id(proxy))


@pytest.fixture(scope="module")
def proxy(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """Proxy in front of the single 4.x broker, tracing off: must be fully transparent."""
    yield from _start(kafka, tmp_path_factory, "proxy", TRACING_OFF)


@pytest.fixture(scope="module")
def traced_proxy(
    kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """Proxy in front of the single 4.x broker with tracing on (spans dropped: exporter none)."""
    yield from _start(kafka, tmp_path_factory, "traced-proxy", TRACING_ON)


@pytest.fixture(scope="module")
def cluster3_proxy(
    kafka_cluster3: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """Proxy in front of the 3-broker 4.x cluster, tracing off."""
    yield from _start(kafka_cluster3, tmp_path_factory, "cluster3-proxy", TRACING_OFF)


@pytest.fixture(scope="module")
def kafka39_proxy(
    kafka39: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """Proxy in front of the Kafka 3.9 broker, tracing off."""
    yield from _start(kafka39, tmp_path_factory, "kafka39-proxy", TRACING_OFF)


def _proxies(item: pytest.Item) -> dict[str, ProxyProcess]:
    funcargs = getattr(item, "funcargs", {})
    return {name: value for name, value in funcargs.items() if isinstance(value, ProxyProcess)}


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the end of every proxy log a failed test used to its report."""
    report = yield
    if report.failed:
        for name, proxy in _proxies(item).items():
            report.sections.append(
                (f"proxy log ({name}, {proxy.log_path})", _tail(proxy.log()) or "(empty)")
            )
    return report


@pytest.fixture(autouse=True)
def _proxy_health(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: the proxies it used are alive and logged no traceback or ERROR line."""
    yield
    problems = []
    for name, proxy in _proxies(request.node).items():
        if id(proxy) not in _ours:
            continue
        if not proxy.alive():
            problems.append(f"{name} exited during the test")
        text = proxy.log()
        new = text[_checked.get(id(proxy), 0) :]
        _checked[id(proxy)] = len(text)
        bad = [
            line
            for line in new.splitlines()
            if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
        ]
        if bad:
            problems.append(f"{name} logged errors:\n" + "\n".join(bad[:20]))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
