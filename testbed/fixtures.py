"""pytest plugin with session-scoped real Kafka clusters and a real Jaeger.

Enable it with `pytest_plugins = ["testbed.fixtures"]` in tests/conftest.py. Each cluster starts
the first time a test asks for it (JVM start-up costs seconds, so one cluster serves the whole
session) and stops at the end of the session, never leaving a JVM behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testbed.jaeger import Jaeger, JaegerNotInstalledError, jaeger_binary
from testbed.kafka import KafkaCluster


def _run_cluster(
    tmp_path_factory: pytest.TempPathFactory, name: str, version: str, brokers: int
) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(version, brokers, tmp_path_factory.mktemp(name))
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One combined broker+controller node of the pinned Kafka 4.x (node id 1)."""
    yield from _run_cluster(tmp_path_factory, "kafka4", "4", 1)


@pytest.fixture(scope="session")
def kafka_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three Kafka 4.x brokers (node ids 1, 2, 3) behind one dedicated controller."""
    yield from _run_cluster(tmp_path_factory, "kafka4x3", "4", 3)


@pytest.fixture(scope="session")
def kafka39(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One combined node of the pinned Kafka 3.9."""
    yield from _run_cluster(tmp_path_factory, "kafka39", "3.9", 1)


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """One Jaeger v2 (OTLP gRPC + HTTP in, memory storage, query API) for the whole session.

    Tests share its storage, so each should use its own service names (or trace ids) and look
    only at those. Skipped when scripts/setup ran with KTP_SKIP_JAEGER=1 and built no binary.
    """
    try:
        jaeger_binary()
    except JaegerNotInstalledError as exc:
        if os.environ.get("KTP_SKIP_JAEGER") == "1":
            pytest.skip(str(exc))
        raise
    with Jaeger(tmp_path_factory.mktemp("jaeger")) as server:
        yield server
