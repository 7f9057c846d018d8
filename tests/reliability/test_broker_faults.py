"""Brokers stopping, restarting and dying under continuous traffic through the proxy.

Its own 3-broker cluster (the shared one must not be abused). A topic with replication factor 3,
min.insync.replicas 2 and 6 partitions; an idempotent acks=all producer sends unique sequential
values through the proxy without pause while a consumer group reads through it. Faults: broker 2
stopped gracefully then restarted; broker 3 killed (SIGKILL) then restarted. After each fault and
recovery, the whole log is read back through the proxy: every acknowledged record is at the offset
it was acknowledged with, intact and with a traceparent header, and no value is there twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from testbed.clients import create_topic, is_valid_traceparent, unique_name
from testbed.kafka import KafkaCluster
from testbed.proxy import ProxyProcess

from .conftest import Proxies
from .support import TRACING_ON, assert_healthy, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6
VALUE_RE = re.compile(rb"^seq-(\d{9})-(\d+)-(x*)$")
QUIET = logging.getLogger("tests.reliability.librdkafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three brokers of our own: replicated internal topics, so groups survive a broker."""
    extra = {
        "offsets.topic.replication.factor": 3,
        "transaction.state.log.replication.factor": 3,
        "transaction.state.log.min.isr": 2,
    }
    with KafkaCluster("4", 3, tmp_path_factory.mktemp("faults-kafka"), extra) as running:
        yield running


def make_value(seq: int) -> bytes:
    """Unique, self-checking: the sequence number, its length-check suffix and padding."""
    pad = b"x" * (seq % 50)
    return b"seq-%09d-%d-" % (seq, len(pad)) + pad


def value_intact(value: bytes | None) -> bool:
    match = VALUE_RE.match(value or b"")
    if not match:
        return False
    seq, pad = int(match.group(1)), match.group(3)
    return int(match.group(2)) == len(pad) == seq % 50


@dataclass
class Traffic:
    """A producer thread and a consumer-group thread, both through the proxy."""

    bootstrap: str
    topic: str
    acked: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    consumed: list[tuple[int, int, bytes]] = field(default_factory=list)
    consumer_errors: list[str] = field(default_factory=list)
    sent = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._stop_consuming = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._produce, name="producer", daemon=True),
            threading.Thread(target=self._consume, name="consumer", daemon=True),
        ]

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop producing (flushing what is queued), let the consumer catch up, stop it."""
        self._stop.set()
        self._threads[0].join(150)
        consumed = lambda: {value for _, _, value in self.consumed}  # noqa: E731
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(self.acked_snapshot()) <= consumed():
            time.sleep(0.2)
        self._stop_consuming.set()
        self._threads[1].join(30)

    def acked_snapshot(self) -> dict[bytes, tuple[int, int | None]]:
        with self._lock:
            return dict(self.acked)

    def _on_delivery(self, err: KafkaError | None, msg: object) -> None:
        if err is not None:
            self.failed.append(str(err))
            return
        with self._lock:
            self.acked[msg.value()] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

    def _produce(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
                "logger": QUIET,
            }
        )
        seq = 0
        while not self._stop.is_set():
            try:
                producer.produce(self.topic, make_value(seq), on_delivery=self._on_delivery)
                seq += 1
                self.sent = seq
            except BufferError:
                pass
            producer.poll(0.002)
        left = producer.flush(130)
        if left:
            self.failed.append(f"{left} records never acknowledged at the end")

    def _consume(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": unique_name("faults-group"),
                "auto.offset.reset": "earliest",
                "logger": QUIET,
            }
        )
        consumer.subscribe([self.topic])
        try:
            while not self._stop_consuming.is_set():
                for message in consumer.consume(500, 0.2):
                    if message.error() is not None:
                        self.consumer_errors.append(str(message.error()))
                        continue
                    self.consumed.append((message.partition(), message.offset(), message.value()))
        finally:
            consumer.close()


def read_back(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple[bytes, tuple]]:
    """Every record of every partition, from offset 0 to the high watermark, via the proxy."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("read-back"),
            "enable.auto.commit": False,
            "logger": QUIET,
        }
    )
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), 15)[1]
            for p in range(PARTITIONS)
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        records: dict[tuple[int, int], tuple[bytes, tuple]] = {}
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.5):
                assert m.error() is None, m.error()
                if m.offset() < ends[m.partition()]:
                    records[(m.partition(), m.offset())] = (m.value(), tuple(m.headers() or ()))
                if m.offset() >= ends[m.partition()] - 1:
                    remaining.discard(m.partition())
        assert not remaining, f"partitions {remaining} not read to their end {ends}"
        return records
    finally:
        consumer.close()


def check_log(proxy: ProxyProcess, topic: str, acked: dict[bytes, tuple[int, int | None]]) -> int:
    """Assert the log holds every acknowledged record intact, once; returns records checked."""
    log = read_back(proxy.bootstrap_servers, topic)
    counts = Counter(value for value, _ in log.values())
    duplicates = [v for v, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} values written twice, e.g. {duplicates[:3]}"
    problems = []
    where = {(partition, value) for (partition, _), (value, _) in log.items()}
    for value, (partition, offset) in acked.items():
        if offset is None:
            # Acknowledged without an offset: librdkafka reports some messages of an idempotent
            # producer as delivered with no offset (seen here once, after a broker was killed).
            # Such a message must still be in its partition, once (duplicates: see above).
            if (partition, value) not in where:
                problems.append(f"{value!r} acknowledged in partition {partition}: not there")
            continue
        stored = log.get((partition, offset))
        if stored is None:
            problems.append(f"{value!r} acknowledged at {(partition, offset)}: nothing there")
        elif stored[0] != value:
            problems.append(f"{value!r} acknowledged at {(partition, offset)}: found {stored[0]!r}")
    for (partition, offset), (value, headers) in log.items():
        if not value_intact(value):
            problems.append(f"corrupted value at {partition}/{offset}: {value!r}")
        trace = [v for k, v in headers if k == "traceparent"]
        if len(trace) != 1 or not is_valid_traceparent(trace[0]):
            problems.append(f"record at {partition}/{offset}: traceparent headers {trace}")
        if len(problems) > 20:
            break
    assert not problems, "\n".join(problems[:20])
    return len(acked)


def wait_in_sync(admin: AdminClient, topic: str, timeout: float = 60) -> None:
    def all_in_sync() -> bool:
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        return len(meta.partitions) == PARTITIONS and all(
            len(p.isrs) == 3 for p in meta.partitions.values()
        )

    wait_until(all_in_sync, timeout, 0.5, what=f"all 3 replicas of {topic} back in sync")


def wait_progress(traffic: Traffic, records: int, timeout: float, what: str) -> None:
    start = len(traffic.acked)
    wait_until(lambda: len(traffic.acked) >= start + records, timeout, 0.1, what=what)


def test_broker_restart_and_loss_under_traffic(
    cluster: KafkaCluster, proxies: Proxies, figures: list[str]
) -> None:
    proxy = proxies.start(cluster.bootstrap_servers, "faults", **TRACING_ON)
    topic = unique_name("faults")
    create_topic(
        proxy.bootstrap_servers,
        topic,
        PARTITIONS,
        replication=3,
        config={"min.insync.replicas": "2"},
    )
    admin = AdminClient({"bootstrap.servers": proxy.bootstrap_servers, "logger": QUIET})
    traffic = Traffic(proxy.bootstrap_servers, topic).start()
    timeline: list[str] = []
    started = time.monotonic()

    def mark(event: str) -> None:
        timeline.append(
            f"{time.monotonic() - started:5.1f}s {event} (acked {len(traffic.acked)}, "
            f"consumed {len(traffic.consumed)})"
        )

    try:
        wait_progress(traffic, 500, 30, "the first 500 acknowledgements")
        wait_until(lambda: len(traffic.consumed) > 100, 30, what="the consumer to start reading")
        mark("steady")

        cluster.stop_broker(2)  # graceful: controlled shutdown moves its leaderships
        mark("broker 2 stopped")
        wait_progress(traffic, 1000, 30, "acknowledgements while broker 2 is down")
        consumed = len(traffic.consumed)
        wait_until(
            lambda: len(traffic.consumed) > consumed + 500, 30, what="consuming without broker 2"
        )
        cluster.start_broker(2)
        mark("broker 2 restarted")
        wait_in_sync(admin, topic)
        wait_progress(traffic, 200, 30, "acknowledgements after broker 2 is back")
        mark("in sync")
        checked_graceful = check_log(proxy, topic, traffic.acked_snapshot())
        mark(f"checked {checked_graceful}")

        cluster.stop_broker(3, graceful=False)  # SIGKILL: its leaderships fail over later
        mark("broker 3 killed")
        wait_progress(traffic, 1000, 60, "acknowledgements while broker 3 is dead")
        consumed = len(traffic.consumed)
        wait_until(
            lambda: len(traffic.consumed) > consumed + 500, 60, what="consuming without broker 3"
        )
        mark("produced and consumed without broker 3")
        cluster.start_broker(3)
        mark("broker 3 restarted")
        wait_in_sync(admin, topic)
        wait_progress(traffic, 200, 30, "acknowledgements after broker 3 is back")
        mark("in sync")
    finally:
        traffic.stop()
        for node_id in (2, 3):
            if not cluster.is_running(node_id):
                cluster.start_broker(node_id)
    mark("traffic stopped")
    acked = traffic.acked_snapshot()
    checked_kill = check_log(proxy, topic, acked)
    assert not traffic.failed, f"{len(traffic.failed)} records not delivered: {traffic.failed[:5]}"
    consumed_values = {value for _, _, value in traffic.consumed}
    missing = [v for v in acked if v not in consumed_values]
    assert not missing, f"the consumer group never got {len(missing)} acknowledged records"
    positions: dict[tuple[int, int], bytes] = {}
    for partition, offset, value in traffic.consumed:
        assert positions.setdefault((partition, offset), value) == value, (partition, offset)
    assert_healthy(proxy)
    figures.append(
        f"graceful stop+restart of broker 2: {checked_graceful} acknowledged records checked; "
        f"SIGKILL+restart of broker 3: {checked_kill} checked "
        f"({sum(offset is None for _, offset in acked.values())} acknowledged without an "
        f"offset); {traffic.sent} sent, "
        f"{len(traffic.consumed)} consumed (incl. redeliveries), "
        f"{len(traffic.consumer_errors)} consumer errors; timeline: " + "; ".join(timeline)
    )
