"""A slow or black-holed OTLP collector must not slow or break the traffic it traces.

The same produce + consume run (3000 records through one proxy, tracing on) against: no exporter
(the reference), a collector that takes 3 s per export, and one that accepts TCP and never
answers. Every record must arrive with its trace context, in comparable time, and the spans that
could not be exported are counted in `ktp_spans_dropped_total`. SIGTERM must still stop the proxy
(exit 0) without waiting on the collector.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, TopicPartition

from testbed.clients import ConfluentDriver, Record, create_topic, is_valid_traceparent, unique_name
from testbed.collector import StubCollector
from testbed.kafka import KafkaCluster

from .conftest import Proxies
from .support import TRACING_ON, BlackHole, assert_healthy

pytestmark = pytest.mark.integration

RECORDS = 3000
PARTITIONS = 3
EXPORT_SECONDS = 3.0


@contextmanager
def slow_collector() -> Iterator[str]:
    with StubCollector(delay=EXPORT_SECONDS) as collector:
        yield collector.endpoint


@contextmanager
def black_hole_collector() -> Iterator[str]:
    with BlackHole() as hole:
        yield f"http://127.0.0.1:{hole.port}"


@contextmanager
def no_collector() -> Iterator[None]:
    yield None


def _consume_all(bootstrap: str, topic: str, count: int) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique_name("g"), "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        received: list = []
        deadline = time.monotonic() + 60
        while len(received) < count and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                assert m.error() is None, m.error()
                received.append(m)
        return received
    finally:
        consumer.close()


def _run(kafka: KafkaCluster, proxies: Proxies, collector: str | None, name: str) -> dict:
    env = dict(TRACING_ON)
    if collector is not None:
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_BSP_MAX_QUEUE_SIZE="512",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="128",
        )
    proxy = proxies.start(kafka.bootstrap_servers, name, **env)
    topic = unique_name(name)
    create_topic(proxy.bootstrap_servers, topic, PARTITIONS)
    sent = [Record(b"k%d" % (i % 50), b"%s-%06d" % (name.encode(), i)) for i in range(RECORDS)]
    started = time.monotonic()
    ConfluentDriver().produce(proxy.bootstrap_servers, topic, sent, idempotent=True)
    received = _consume_all(proxy.bootstrap_servers, topic, RECORDS)
    seconds = time.monotonic() - started
    values = sorted(m.value() for m in received)
    assert values == sorted(r.value for r in sent), (
        f"{name}: sent {len(sent)} records, received {len(received)} ({len(set(values))} distinct)"
    )
    untraced = [
        m.offset()
        for m in received
        if not any(k == "traceparent" and is_valid_traceparent(v) for k, v in m.headers() or ())
    ]
    assert not untraced, f"{name}: {len(untraced)} records without a traceparent"
    time.sleep(0.5)  # a few export attempts
    result = {
        "seconds": seconds,
        "dropped": proxy.metric("ktp_spans_dropped_total"),
        "exported": proxy.metric("ktp_spans_exported_total"),
        "metrics_ok": proxy.admin_get("/metrics", timeout=2)[0] == 200,
    }
    assert_healthy(proxy)
    stop_started = time.monotonic()
    result["exit"] = proxy.stop(timeout=20)
    result["stop_seconds"] = time.monotonic() - stop_started
    return result


@pytest.mark.parametrize(
    "collector",
    [pytest.param(slow_collector, id="slow"), pytest.param(black_hole_collector, id="black-hole")],
)
def test_collector_trouble_does_not_touch_traffic(
    collector: object, kafka: KafkaCluster, proxies: Proxies, figures: list[str]
) -> None:
    reference = _run(kafka, proxies, None, "otlp-none")
    with collector() as endpoint:  # type: ignore[operator]
        faulty = _run(kafka, proxies, endpoint, "otlp-faulty")
    figures.append(
        f"{RECORDS} records produced+consumed in {faulty['seconds']:.1f}s "
        f"(exporter none: {reference['seconds']:.1f}s); spans dropped {faulty['dropped']:.0f}, "
        f"exported {faulty['exported']:.0f}; SIGTERM exit {faulty['exit']} after "
        f"{faulty['stop_seconds']:.1f}s"
    )
    assert faulty["seconds"] <= 3 * reference["seconds"] + 5, (
        f"traffic took {faulty['seconds']:.1f}s with the collector in trouble, "
        f"{reference['seconds']:.1f}s without one"
    )
    assert faulty["metrics_ok"]
    # 2 spans per record (send and receive); a 512-span queue in front of a collector that
    # takes >= 3 s per batch of 128 must drop most of them.
    assert faulty["dropped"] >= RECORDS, f"ktp_spans_dropped_total = {faulty['dropped']}"
    assert faulty["dropped"] + faulty["exported"] <= 2 * RECORDS
    assert faulty["exit"] == 0, f"SIGTERM exit code {faulty['exit']}"
    assert faulty["stop_seconds"] < 15, f"SIGTERM took {faulty['stop_seconds']:.1f}s"
