"""The test bed itself works: real brokers start, Python and Java clients round-trip records."""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin import NewTopic as ConfluentNewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from testbed.java_tools import (
    NULL_MARKER,
    ConsoleRecord,
    console_consumer,
    console_producer,
    format_producer_line,
    parse_consumer_line,
    tool_class,
)
from testbed.kafka import KAFKA_VERSIONS, KafkaCluster
from testbed.ports import free_port, free_port_block


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def partition_leaders(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Partition -> leader node id, polled until every partition has a leader."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    while True:
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        leaders = {p.id: p.leader for p in meta.partitions.values()}
        if meta.error is None and len(leaders) == partitions and -1 not in leaders.values():
            return leaders
        assert time.monotonic() < deadline, f"no leaders for {topic}: {meta.error} {leaders}"
        time.sleep(0.2)


# -- unit tests (no broker) ----------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_block_is_bindable() -> None:
    base = free_port_block(4)
    socks = [socket.socket() for _ in range(4)]
    try:
        for i, sock in enumerate(socks):
            sock.bind(("127.0.0.1", base + i))
    finally:
        for sock in socks:
            sock.close()


def test_console_line_round_trip() -> None:
    record = ConsoleRecord("v1\tx", key="k1", headers=(("trace", "abc"), ("empty", None)))
    assert format_producer_line(record) == f"trace:abc,empty:{NULL_MARKER}\tk1\tv1\tx"
    parsed = parse_consumer_line(f"Partition:2\tOffset:7\ttrace:abc,empty:{NULL_MARKER}\tk1\tv1\tx")
    assert parsed == ConsoleRecord("v1\tx", "k1", record.headers, partition=2, offset=7)
    assert (
        format_producer_line(ConsoleRecord(None)) == f"{NULL_MARKER}\t{NULL_MARKER}\t{NULL_MARKER}"
    )
    with pytest.raises(ValueError):
        format_producer_line(ConsoleRecord("v", headers=(("a,b", "c"),)))


def test_tool_classes_per_version() -> None:
    assert tool_class("3.9", "ConsoleProducer") == "kafka.tools.ConsoleProducer"
    assert tool_class("4", "ConsoleProducer") == "org.apache.kafka.tools.ConsoleProducer"
    assert tool_class("4", "org.example.Main") == "org.example.Main"


# -- real brokers --------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_single_node_starts(kafka: KafkaCluster) -> None:
    assert list(kafka.broker_ports) == [1]
    assert kafka.bootstrap_servers == f"127.0.0.1:{kafka.broker_ports[1]}"
    with socket.create_connection(("127.0.0.1", kafka.broker_ports[1]), timeout=5):
        pass


@pytest.mark.integration
@pytest.mark.slow
def test_kafka_python_round_trip_with_header(kafka: KafkaCluster) -> None:
    topic = unique("kp")
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)], wait_for_metadata=True)
        assert topic in admin.list_topics()
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    try:
        producer.send(topic, key=b"k", value=b"hello", headers=[("traceparent", b"00-ab-cd-01")])
        producer.flush(30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=unique("g"),
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
    )
    try:
        records = [next(iter(consumer))]
    finally:
        consumer.close()
    assert records[0].key == b"k"
    assert records[0].value == b"hello"
    assert list(records[0].headers) == [("traceparent", b"00-ab-cd-01")]


CONSOLE_RECORDS = [
    ConsoleRecord("v1", key="k1", headers=(("traceparent", "00-01-02-01"),)),
    ConsoleRecord("v2 with spaces", key="k2", headers=(("a", "1"), ("b", None))),
    ConsoleRecord("v3", key=None),
]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("cluster_fixture", ["kafka", "kafka39"])
def test_java_console_round_trip(cluster_fixture: str, request: pytest.FixtureRequest) -> None:
    cluster: KafkaCluster = request.getfixturevalue(cluster_fixture)
    topic = unique("console")
    console_producer(cluster.bootstrap_servers, topic, CONSOLE_RECORDS, version=cluster.version)
    result = console_consumer(
        cluster.bootstrap_servers,
        topic,
        version=cluster.version,
        group=unique("g"),
        max_messages=len(CONSOLE_RECORDS),
    )
    assert result.records == [
        ConsoleRecord(r.value, r.key, r.headers, partition=0, offset=i)
        for i, r in enumerate(CONSOLE_RECORDS)
    ], result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_three_brokers_spread_leaders(kafka_cluster3: KafkaCluster) -> None:
    assert sorted(kafka_cluster3.broker_ports) == [1, 2, 3]
    assert len(kafka_cluster3.bootstrap_servers.split(",")) == 3
    topic = unique("spread")
    admin = AdminClient({"bootstrap.servers": kafka_cluster3.bootstrap_servers})
    admin.create_topics([ConfluentNewTopic(topic, 6, 1)])[topic].result(30)
    leaders = partition_leaders(kafka_cluster3.bootstrap_servers, topic, 6)
    assert set(leaders.values()) == {1, 2, 3}


@pytest.mark.integration
@pytest.mark.slow
def test_stop_and_restart_broker(kafka_cluster3: KafkaCluster) -> None:
    port = kafka_cluster3.broker_ports[3]
    kafka_cluster3.stop_broker(3)
    assert not kafka_cluster3.is_running(3)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    kafka_cluster3.start_broker(3)
    assert kafka_cluster3.broker_ports[3] == port
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    assert set(admin.list_topics(timeout=10).brokers) == {1, 2, 3}


@pytest.mark.integration
@pytest.mark.slow
def test_kafka39_starts(kafka39: KafkaCluster) -> None:
    assert kafka39.version.startswith("3.9.")
    admin = AdminClient({"bootstrap.servers": kafka39.bootstrap_servers})
    assert set(admin.list_topics(timeout=10).brokers) == {1}


def test_versions_match_setup_script() -> None:
    """scripts/setup fetches exactly the versions testbed.kafka looks for."""
    script = (Path(__file__).parents[2] / "scripts" / "setup").read_text()
    pinned = dict(re.findall(r"^KAFKA_(4|39)_VERSION=(\S+)$", script, re.MULTILINE))
    assert pinned == {"4": KAFKA_VERSIONS["4"], "39": KAFKA_VERSIONS["3.9"]}
