"""Idempotent and transactional producers through the proxy with tracing on.

Rebuilding a batch must keep producer id, epoch, base sequence and the transactional flag, or the
broker rejects idempotent batches and read_committed consumers cannot tell committed records from
aborted ones.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from testbed.clients import (
    Record,
    assert_round_trip,
    create_topic,
    driver,
    make_records,
    unique_name,
)
from testbed.proxy import ProxyProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("producer", ["kafka-python", "confluent-kafka", "aiokafka", "java"])
def test_idempotent_producer(traced_proxy: ProxyProcess, producer: str) -> None:
    """enable.idempotence: every record arrives exactly once, in order, with a traceparent."""
    d = driver(producer)
    topic = unique_name(f"idempotent-{producer}")
    create_topic(traced_proxy.bootstrap_servers, topic, 3)
    sent = make_records(2000, binary=d.binary, seed=21, tag=producer)
    d.produce(traced_proxy.bootstrap_servers, topic, sent, idempotent=True, compression="lz4")
    received = driver("confluent-kafka").consume(
        traced_proxy.bootstrap_servers, topic, unique_name("group"), len(sent), 60
    )
    assert_round_trip(sent, received, traceparent=True)


def _transactional_produce(
    bootstrap: str, topic: str, transactions: list[tuple[list[Record], bool]]
) -> None:
    """Run one transaction per (records, commit?) item with confluent-kafka."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": unique_name("txn"),
            "linger.ms": 5,
            "compression.type": "zstd",
            "partitioner": "murmur2_random",
        }
    )
    producer.init_transactions(30)
    for records, commit in transactions:
        producer.begin_transaction()
        for r in records:
            producer.produce(topic, r.value, r.key, headers=list(r.headers))
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)  # the aborted records really reach the log first
            producer.abort_transaction(30)


@pytest.mark.parametrize("consumer", ["confluent-kafka", "kafka-python", "java"])
def test_read_committed_sees_only_committed(traced_proxy: ProxyProcess, consumer: str) -> None:
    """Commit, abort, commit: read_committed gets the committed records only, read_uncommitted
    gets all of them (so the aborted ones did reach the log)."""
    binary = consumer != "java"
    first = make_records(300, binary=binary, seed=31, tag="commit1")
    aborted = make_records(200, binary=binary, seed=32, tag="abort")
    second = make_records(300, binary=binary, seed=33, tag="commit2")
    topic = unique_name("txn")
    create_topic(traced_proxy.bootstrap_servers, topic, 3)
    _transactional_produce(
        traced_proxy.bootstrap_servers, topic, [(first, True), (aborted, False), (second, True)]
    )
    d = driver(consumer)
    committed = d.consume(
        traced_proxy.bootstrap_servers,
        topic,
        unique_name("committed"),
        len(first) + len(second),
        60,
        isolation="read_committed",
    )
    assert_round_trip(first + second, committed, traceparent=True)
    everything = driver("confluent-kafka").consume(
        traced_proxy.bootstrap_servers,
        topic,
        unique_name("uncommitted"),
        len(first) + len(aborted) + len(second),
        60,
    )
    assert_round_trip(first + aborted + second, everything, traceparent=True)
