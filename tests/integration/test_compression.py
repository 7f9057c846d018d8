"""Every codec survives the proxy's re-encoding (tracing on, so every produced batch is rebuilt).

Adding the traceparent header means decompressing, rewriting and recompressing each batch; the
broker's stored batches must still use the producer's codec, consumers must get every byte back,
and the Java consumer, which verifies CRCs, must accept the rebuilt batches.
"""

from __future__ import annotations

import pytest

from testbed.clients import (
    CODECS,
    JavaDriver,
    assert_round_trip,
    batch_codecs,
    create_topic,
    driver,
    make_records,
    unique_name,
)
from testbed.kafka import KafkaCluster
from testbed.proxy import ProxyProcess

pytestmark = pytest.mark.integration

RECORDS = 500
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("producer", ["kafka-python", "confluent-kafka"])
def test_codec_round_trip(
    kafka: KafkaCluster, traced_proxy: ProxyProcess, producer: str, codec: str
) -> None:
    """Binary records keep their bytes, gain one traceparent, and stay in `codec` on disk."""
    topic = unique_name(f"codec-{codec}")
    create_topic(traced_proxy.bootstrap_servers, topic, 1)
    sent = make_records(RECORDS, binary=True, seed=11, tag=codec)
    driver(producer).produce(traced_proxy.bootstrap_servers, topic, sent, compression=codec)
    received = driver("confluent-kafka").consume(
        traced_proxy.bootstrap_servers, topic, unique_name("group"), RECORDS, 60
    )
    assert_round_trip(sent, received, traceparent=True)
    # kafka-python sends a lone record that does not shrink (the 64 KiB random value) without
    # compression (so may a small batch of random bytes), so only batches of 20+ records are sure
    # to carry the codec.
    batches = batch_codecs(kafka.nodes[1].directory / "data" / f"{topic}-0")
    stored = {c for c, count in batches if count >= 20}
    assert stored == {CODEC_IDS[codec]}, f"broker stored {batches} (codec, count), sent {codec}"


def test_java_consumer_accepts_rebuilt_batches(traced_proxy: ProxyProcess) -> None:
    """One topic with batches of all five codecs from two producers; the Java consumer (CRC
    checks on) reads them all back intact, each with a traceparent."""
    topic = unique_name("codec-java")
    create_topic(traced_proxy.bootstrap_servers, topic, 1)
    sent = []
    for producer in ("kafka-python", "confluent-kafka"):
        for codec in CODECS:
            records = make_records(60, binary=False, seed=len(sent), tag=f"{producer}-{codec}")
            driver(producer).produce(
                traced_proxy.bootstrap_servers, topic, records, compression=codec
            )
            sent += records
    received = JavaDriver(extra={"check.crcs": "true"}).consume(
        traced_proxy.bootstrap_servers, topic, unique_name("group"), len(sent), 60
    )
    assert_round_trip(sent, received, traceparent=True)
