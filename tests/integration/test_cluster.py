"""A 3-broker cluster through the proxy: every client works and none ever reaches a broker itself.

A proxy that misses one broker address in some response still "works" because the client quietly
connects to the broker directly; so besides the round trip, a ConnectionWatcher samples the TCP
table and every connection to a broker port must belong to the proxy or a Kafka JVM.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient

from testbed.clients import (
    CLIENT_NAMES,
    assert_round_trip,
    create_topic,
    driver,
    make_records,
    unique_name,
)
from testbed.connections import ConnectionWatcher
from testbed.kafka import KafkaCluster
from testbed.proxy import ProxyProcess

pytestmark = pytest.mark.integration

PARTITIONS = 6
RECORDS = 300
BROKERS = {1, 2, 3}


def _create_spread_topic(proxy: ProxyProcess) -> str:
    """A 6-partition topic (RF 3) whose leaders are brokers 1,2,3,1,2,3; asserts the spread."""
    topic = unique_name("spread")
    assignment = [[1 + (p + i) % 3 for i in range(3)] for p in range(PARTITIONS)]
    leaders = create_topic(proxy.bootstrap_servers, topic, replica_assignment=assignment)
    assert set(leaders.values()) == BROKERS, f"leaders not spread over 3 brokers: {leaders}"
    assert sorted(leaders) == list(range(PARTITIONS))
    return topic


def _jvm_pids(cluster: KafkaCluster) -> set[int]:
    return {node.process.pid for node in cluster.nodes.values() if node.process is not None}


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_client_never_reaches_a_broker_directly(
    kafka_cluster3: KafkaCluster, cluster3_proxy: ProxyProcess, client: str
) -> None:
    """Produce and consume RECORDS records over 6 partitions led by all 3 brokers."""
    d = driver(client)
    topic = _create_spread_topic(cluster3_proxy)
    sent = make_records(
        RECORDS, binary=d.binary, header_block=None if d.per_record_headers else 100, seed=7
    )
    broker_ports = set(kafka_cluster3.broker_ports.values())
    allowed = {cluster3_proxy.pid, *_jvm_pids(kafka_cluster3)}
    with ConnectionWatcher(broker_ports, likely_pids=allowed) as watcher:
        d.produce(cluster3_proxy.bootstrap_servers, topic, sent)
        received = d.consume(
            cluster3_proxy.bootstrap_servers, topic, unique_name("group"), RECORDS, 60
        )
    assert_round_trip(sent, received)
    assert {r.partition for r in received} == set(range(PARTITIONS))

    intruders = watcher.intruders(allowed)
    assert not intruders, (
        "connected to a broker port without the proxy:\n"
        + "\n".join(intruders)
        + f"\n(allowed: proxy {cluster3_proxy.pid}, Kafka JVMs {sorted(_jvm_pids(kafka_cluster3))})"
    )
    proxy_ports = watcher.ports_by_pid().get(cluster3_proxy.pid, set())
    assert proxy_ports == broker_ports, (
        f"the watcher saw the proxy connected to {sorted(proxy_ports)}, expected every broker "
        f"port {sorted(broker_ports)} ({watcher.samples} samples)"
    )


def test_metadata_lists_only_proxy_addresses(
    kafka_cluster3: KafkaCluster, cluster3_proxy: ProxyProcess
) -> None:
    """Metadata (librdkafka) and DescribeCluster (kafka-python) name the proxy's ports only."""
    expected = {n: ("127.0.0.1", cluster3_proxy.broker_port(n)) for n in BROKERS}
    real_ports = set(kafka_cluster3.broker_ports.values())

    metadata = AdminClient({"bootstrap.servers": cluster3_proxy.bootstrap_servers}).list_topics(
        timeout=10
    )
    seen = {b.id: (b.host, b.port) for b in metadata.brokers.values()}
    assert seen == expected, f"Metadata brokers {seen}; real broker ports {real_ports}"

    admin = KafkaAdminClient(bootstrap_servers=cluster3_proxy.bootstrap_servers)
    try:
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    described = {b["broker_id"]: (b["host"], b["port"]) for b in cluster["brokers"]}
    assert described == expected, f"DescribeCluster brokers {described}"


def test_watcher_flags_a_direct_connection(
    kafka_cluster3: KafkaCluster, cluster3_proxy: ProxyProcess
) -> None:
    """The check itself can fail: a client dialling a broker directly is reported."""
    import os

    broker_ports = set(kafka_cluster3.broker_ports.values())
    allowed = {cluster3_proxy.pid, *_jvm_pids(kafka_cluster3)}
    with ConnectionWatcher(broker_ports, likely_pids=allowed) as watcher:
        admin = AdminClient({"bootstrap.servers": kafka_cluster3.bootstrap_servers})
        assert set(admin.list_topics(timeout=10).brokers) == BROKERS
        time.sleep(0.2)
        del admin
    intruders = watcher.intruders(allowed)
    assert any(f"pid {os.getpid()} " in line for line in intruders), intruders
