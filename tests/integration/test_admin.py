"""Admin operations through the proxy: topics, cluster description, consumer groups.

Admin APIs hand out broker addresses of their own (DescribeCluster, FindCoordinator for groups),
so besides working they must name only the proxy's addresses.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import KafkaAdminClient
from kafka.admin import NewTopic as KafkaPythonNewTopic

from testbed.clients import create_topic, driver, make_records, unique_name, wait_for_leaders
from testbed.proxy import ProxyProcess

pytestmark = pytest.mark.integration


def _admin(proxy: ProxyProcess) -> AdminClient:
    return AdminClient({"bootstrap.servers": proxy.bootstrap_servers})


def _topics(proxy: ProxyProcess) -> dict[str, int]:
    """Topic -> partition count, as Metadata through the proxy says."""
    metadata = _admin(proxy).list_topics(timeout=10)  # synchronous: the handle may go
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def _wait_gone(proxy: ProxyProcess, topic: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while topic in _topics(proxy):
        assert time.monotonic() < deadline, f"{topic} still listed {timeout}s after deletion"
        time.sleep(0.2)


def test_create_and_delete_topic_confluent(proxy: ProxyProcess) -> None:
    """CreateTopics / DeleteTopics via librdkafka's admin client."""
    topic = unique_name("admin-cf")
    admin = _admin(proxy)
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    assert wait_for_leaders(proxy.bootstrap_servers, topic, 4)
    assert _topics(proxy)[topic] == 4
    admin.delete_topics([topic])[topic].result(30)
    _wait_gone(proxy, topic)


def test_create_and_delete_topic_kafka_python(proxy: ProxyProcess) -> None:
    """CreateTopics / DeleteTopics via kafka-python's admin client (its own protocol code)."""
    topic = unique_name("admin-kp")
    admin = KafkaAdminClient(bootstrap_servers=proxy.bootstrap_servers)
    try:
        admin.create_topics([KafkaPythonNewTopic(topic, 2, 1)])
        assert wait_for_leaders(proxy.bootstrap_servers, topic, 2)
        assert topic in admin.list_topics()
        admin.delete_topics([topic])
        _wait_gone(proxy, topic)
    finally:
        admin.close()


def test_describe_cluster_lists_proxy_addresses(proxy: ProxyProcess) -> None:
    """DescribeCluster through both admin clients names broker 1 at the proxy's port."""
    expected = ("127.0.0.1", proxy.broker_port(1))
    admin_cf = _admin(proxy)  # keep the handle alive until the future is done
    described = admin_cf.describe_cluster(request_timeout=10).result(20)
    assert [(n.id, n.host, n.port) for n in described.nodes] == [(1, *expected)]
    assert (described.controller.host, described.controller.port) == expected

    admin = KafkaAdminClient(bootstrap_servers=proxy.bootstrap_servers)
    try:
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(1, *expected)]


def test_list_and_describe_consumer_group(proxy: ProxyProcess) -> None:
    """After a consumer ran and committed: the group is listed, described (coordinator at the
    proxy, no members left) and its committed offsets add up to what it consumed."""
    topic = unique_name("admin-group")
    group = unique_name("group")
    create_topic(proxy.bootstrap_servers, topic, 2)
    records = make_records(200, binary=True, seed=41)
    driver("kafka-python").produce(proxy.bootstrap_servers, topic, records)
    assert len(driver("kafka-python").consume(proxy.bootstrap_servers, topic, group, 200)) == 200

    admin = _admin(proxy)
    listed = admin.list_consumer_groups(request_timeout=10).result(20)
    assert group in {g.group_id for g in listed.valid}, listed.errors
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(20)
    assert description.group_id == group
    assert description.members == []
    coordinator = description.coordinator
    assert (coordinator.host, coordinator.port) == ("127.0.0.1", proxy.broker_port(1))
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    committed = offsets[group].result(20).topic_partitions
    assert {(tp.topic, tp.partition) for tp in committed} == {(topic, 0), (topic, 1)}
    assert sum(tp.offset for tp in committed) == 200

    kp = KafkaAdminClient(bootstrap_servers=proxy.bootstrap_servers)
    try:
        assert group in {g[0] if isinstance(g, tuple) else g["group_id"] for g in kp.list_groups()}
        described = kp.describe_groups([group])
    finally:
        kp.close()
    assert group in str(described)
