"""Black-box tracing end to end: producer -> proxy A -> Kafka -> proxy B -> consumer -> Jaeger.

Everything is real: the broker, the clients, both proxies as processes, and Jaeger; the assertions
read what Jaeger stored through its query API.
"""

from __future__ import annotations

import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.clients import ConfluentDriver, KafkaPythonDriver, Received, Record, driver
from testbed.jaeger import Jaeger, parent_span_id, span_service, span_tags
from testbed.kafka import KafkaCluster
from testbed.ports import free_port
from testbed.proxy import ProxyProcess

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer

pytestmark = pytest.mark.integration


def sidecar(
    kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory, service: str, **env: str
) -> ProxyProcess:
    return ProxyProcess(
        kafka.bootstrap_servers,
        tmp_path_factory.mktemp(service),
        name=service,
        env={"OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "200", **env},
    )


class Pair:
    """A producer-side and a consumer-side sidecar with their own service names."""

    def __init__(self, orders: ProxyProcess, billing: ProxyProcess) -> None:
        self.orders = orders
        self.billing = billing

    @property
    def orders_service(self) -> str:
        return self.orders.name

    @property
    def billing_service(self) -> str:
        return self.billing.name


@pytest.fixture
def pair(
    kafka: KafkaCluster, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """`orders-<id>` exports over OTLP/HTTP, `billing-<id>` over OTLP/gRPC."""
    suffix = uuid.uuid4().hex[:6]
    orders = sidecar(
        kafka,
        tmp_path_factory,
        f"orders-{suffix}",
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_http_endpoint,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,team=shop",
    )
    billing = sidecar(
        kafka,
        tmp_path_factory,
        f"billing-{suffix}",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_grpc_endpoint,
    )
    with orders, billing:
        yield Pair(orders, billing)


def trace_id_of(record: Received) -> str:
    value = dict(record.headers)["traceparent"].decode()
    return value.split("-")[1]


def spans_by_name(trace: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    named: dict[str, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        named.setdefault(span["operationName"], []).append(span)
    return named


def complete_trace(jaeger: Jaeger, trace_id: str, names: set[str]) -> dict[str, Any]:
    """Poll until the trace holds spans of all `names` (each side exports asynchronously)."""

    def ready() -> dict[str, Any] | None:
        trace = jaeger.trace(trace_id)
        return trace if trace and names <= set(spans_by_name(trace)) else None

    return jaeger.wait_for(ready, timeout=30, interval=0.2)


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka", "java"])
def test_every_message_is_one_trace_from_orders_to_billing(
    client: str, pair: Pair, jaeger: Jaeger, kafka: KafkaCluster
) -> None:
    topic = f"traced-{client}-{uuid.uuid4().hex[:6]}"
    records = [
        Record(f"order-{i}".encode(), f"value {i}".encode(), (("app", b"1"),)) for i in range(40)
    ]
    chosen = driver(client)
    chosen.produce(pair.orders.bootstrap_servers, topic, records)
    received = chosen.consume(pair.billing.bootstrap_servers, topic, f"group-{topic}", len(records))
    assert len(received) == len(records)
    broker_host, broker_port = kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)
    send_name, receive_name = f"send {topic}", f"receive {topic}"
    for record in received:
        trace = complete_trace(jaeger, trace_id_of(record), {send_name, receive_name})
        named = spans_by_name(trace)
        (send,), (receive,) = named[send_name], named[receive_name]
        assert span_service(trace, send) == pair.orders_service
        process = trace["processes"][send["processID"]]
        process_tags = {tag["key"]: tag["value"] for tag in process["tags"]}
        assert process_tags["deployment.environment"] == "test"  # OTEL_RESOURCE_ATTRIBUTES
        assert process_tags["team"] == "shop"
        assert span_service(trace, receive) == pair.billing_service
        assert parent_span_id(receive) == send["spanID"]
        assert parent_span_id(send) is None
        send_tags, receive_tags = span_tags(send), span_tags(receive)
        assert send_tags["span.kind"] == "producer" and receive_tags["span.kind"] == "consumer"
        for tags in (send_tags, receive_tags):
            assert tags["messaging.system"] == "kafka"
            assert tags["messaging.destination.name"] == topic
            assert tags["messaging.destination.partition.id"] == str(record.partition)
            assert tags["messaging.kafka.offset"] == record.offset
            assert tags["messaging.kafka.message.key"] == record.key.decode()
            assert tags["server.address"] == broker_host
            assert tags["server.port"] == int(broker_port)
        assert send_tags["messaging.operation.type"] == "send"
        assert receive_tags["messaging.operation.type"] == "receive"
        assert receive_tags["messaging.consumer.group.name"] == f"group-{topic}"
        assert send_tags["messaging.client.id"] and receive_tags["messaging.client.id"]
        assert receive_tags["ktp.record.age_ms"] >= 0
    edges = {(d["parent"], d["child"]) for d in jaeger.wait_for(jaeger.dependencies, timeout=10)}
    assert (pair.orders_service, pair.billing_service) in edges


def test_an_instrumented_producer_gets_one_trace_through_both_proxies(
    pair: Pair, jaeger: Jaeger
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.propagate import inject
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    app_service = f"app-{uuid.uuid4().hex[:6]}"
    provider = TracerProvider(resource=Resource.create({"service.name": app_service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=jaeger.otlp_http_endpoint + "/v1/traces"))
    )
    tracer = provider.get_tracer("test-app")
    topic = f"instrumented-{uuid.uuid4().hex[:6]}"
    producer = KafkaProducer(bootstrap_servers=pair.orders.bootstrap_servers)
    with tracer.start_as_current_span("place order") as app_span:
        carrier: dict[str, str] = {}
        inject(carrier)
        producer.send(topic, b"order", headers=[(k, v.encode()) for k, v in carrier.items()])
        producer.flush()
    producer.close()
    provider.shutdown()
    received = driver("kafka-python").consume(pair.billing.bootstrap_servers, topic, "g", 1)
    assert [k for k, _ in received[0].headers] == ["traceparent"]  # no duplicate header
    trace_id = f"{app_span.get_span_context().trace_id:032x}"
    assert trace_id_of(received[0]) == trace_id
    trace = complete_trace(jaeger, trace_id, {"place order", f"send {topic}", f"receive {topic}"})
    named = spans_by_name(trace)
    (app,), (send,), (receive,) = (
        named["place order"],
        named[f"send {topic}"],
        named[f"receive {topic}"],
    )
    assert span_service(trace, app) == app_service
    assert parent_span_id(send) == app["spanID"]
    assert parent_span_id(receive) == app["spanID"]  # the record's creation context


def test_ratio_sampling_is_about_ten_percent_and_the_same_on_both_sides(
    kafka: KafkaCluster, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> None:
    suffix = uuid.uuid4().hex[:6]
    common = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint,
        "OTEL_BSP_MAX_QUEUE_SIZE": "20000",
    }
    topic = f"sampled-{suffix}"
    orders = sidecar(kafka, tmp_path_factory, f"orders-s-{suffix}", **common)
    billing = sidecar(kafka, tmp_path_factory, f"billing-s-{suffix}", **common)
    with orders, billing:
        records = [Record(None, b"x" * 100) for _ in range(10_000)]
        # Batches well under the broker's size limit, so every one has room for the headers.
        confluent = ConfluentDriver(extra={"batch.size": 200_000})
        confluent.produce(orders.bootstrap_servers, topic, records)
        received = confluent.consume(billing.bootstrap_servers, topic, f"g-{suffix}", 10_000)
    assert len(received) == 10_000
    flags = Counter(dict(r.headers)["traceparent"].decode()[-2:] for r in received)
    assert set(flags) <= {"00", "01"}
    sampled_ids = {trace_id_of(r) for r in received if dict(r.headers)["traceparent"][-2:] == b"01"}
    assert 800 <= len(sampled_ids) <= 1200, flags

    def traced(service: str, operation: str) -> set[str]:
        traces = jaeger.traces(service, operation=operation, limit=5000)
        return {t["traceID"].rjust(32, "0") for t in traces}

    jaeger.wait_for(
        lambda: len(traced(billing.name, f"receive {topic}")) >= len(sampled_ids),
        timeout=60,
        interval=1,
    )
    assert traced(orders.name, f"send {topic}") == sampled_ids
    assert traced(billing.name, f"receive {topic}") == sampled_ids


def test_collector_down_changes_nothing_for_clients_and_drops_are_counted(
    kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    suffix = uuid.uuid4().hex[:6]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    orders = sidecar(kafka, tmp_path_factory, f"orders-d-{suffix}", **env)
    billing = sidecar(kafka, tmp_path_factory, f"billing-d-{suffix}", **env)
    topic = f"collector-down-{suffix}"
    with orders, billing:
        records = [Record(f"k{i}".encode(), b"v" * 200) for i in range(3000)]
        confluent = ConfluentDriver(extra={"batch.size": 200_000})
        confluent.produce(orders.bootstrap_servers, topic, records)
        received = confluent.consume(billing.bootstrap_servers, topic, f"g-{suffix}", 3000)
        assert sorted(r.key for r in received) == sorted(r.key for r in records)

        def dropped(proxy: ProxyProcess) -> float:
            return proxy.metric("ktp_spans_dropped_total")

        from testbed.jaeger import wait_for

        wait_for(lambda: dropped(orders) > 0 and dropped(billing) > 0, timeout=60, interval=0.5)
        assert orders.metric("ktp_spans_exported_total") == 0
        assert orders.alive() and billing.alive()


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_tombstones_null_keys_and_many_headers_survive_injection(
    codec: str, traced_proxy: ProxyProcess, kafka: KafkaCluster
) -> None:
    topic = f"shapes-{codec}-{uuid.uuid4().hex[:6]}"
    many = tuple((f"h{i}", bytes([i]) * i) for i in range(40))
    sent = [
        (b"key", None, ()),  # tombstone
        (None, b"value", ()),
        (None, b"", (("empty", b""),)),
        (b"k" * 300, b"v" * 5000, many),
    ] * 5
    producer = KafkaProducer(
        bootstrap_servers=traced_proxy.bootstrap_servers,
        compression_type=None if codec == "none" else codec,
        linger_ms=20,
    )
    for key, value, headers in sent:
        producer.send(topic, key=key, value=value, headers=list(headers))
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=15_000,
    )
    got = []
    for message in consumer:  # straight from the broker: what the proxy really wrote
        got.append(message)
        if len(got) == len(sent):
            break
    consumer.close()
    assert len(got) == len(sent)
    for message, (key, value, headers) in zip(got, sent, strict=True):
        assert (message.key, message.value) == (key, value)
        assert [tuple(h) for h in message.headers[:-1]] == list(headers)
        name, traceparent = message.headers[-1]
        assert name == "traceparent" and len(traceparent) == 55


def test_a_batch_headers_would_push_past_the_size_limit_is_forwarded_untouched(
    traced_proxy: ProxyProcess,
) -> None:
    """librdkafka fills batches up to ~1 MB: trace headers must not turn them into failures."""
    topic = f"big-batches-{uuid.uuid4().hex[:6]}"
    records = [Record(f"{i}".encode(), b"x" * 100) for i in range(20_000)]
    before = traced_proxy.metric("ktp_header_injections_skipped_total", reason="too_large")
    confluent = ConfluentDriver(extra={"linger.ms": 200, "batch.size": 1_000_000})
    confluent.produce(traced_proxy.bootstrap_servers, topic, records)
    received = confluent.consume(traced_proxy.bootstrap_servers, topic, f"g-{topic}", len(records))
    assert sorted(int(r.key) for r in received) == list(range(len(records)))
    untraced = [r for r in received if "traceparent" not in dict(r.headers)]
    assert untraced, "expected at least one batch too large for headers"
    assert all(r.headers == () and r.value == b"x" * 100 for r in untraced)
    after = traced_proxy.metric("ktp_header_injections_skipped_total", reason="too_large")
    assert after > before


def test_receive_spans_over_otlp_http_carry_the_record_and_its_redelivery(
    kafka: KafkaCluster, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With OTLP/HTTP the consumer side writes its spans in wire form: Jaeger must show what
    the SDK's spans show (offset, key, group, age), and the second read of a record by the same
    group marked `ktp.redelivered`."""
    suffix = uuid.uuid4().hex[:6]
    topic, group = f"wire-{suffix}", f"g-{suffix}"
    http = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint}
    orders = sidecar(kafka, tmp_path_factory, f"orders-w-{suffix}", **http)
    billing = sidecar(kafka, tmp_path_factory, f"billing-w-{suffix}", **http)
    with orders, billing:
        records = [Record(f"key-{i}".encode(), f"value {i}".encode()) for i in range(10)]
        driver("kafka-python").produce(orders.bootstrap_servers, topic, records)
        reader = KafkaPythonDriver()
        first = reader.consume(billing.bootstrap_servers, topic, group, 10, commit=False)
        again = reader.consume(billing.bootstrap_servers, topic, group, 10)
    assert [r.offset for r in first] == [r.offset for r in again] == list(range(10))
    send_name, receive_name = f"send {topic}", f"receive {topic}"
    for record in again:
        trace_id = trace_id_of(record)

        def both_reads(trace_id: str = trace_id) -> dict[str, Any] | None:
            trace = jaeger.trace(trace_id)
            named = spans_by_name(trace) if trace else {}
            return trace if len(named.get(receive_name, ())) == 2 and send_name in named else None

        trace = jaeger.wait_for(both_reads, timeout=30, interval=0.2)
        named = spans_by_name(trace)
        (send,) = named[send_name]
        receives = [span_tags(span) for span in named[receive_name]]
        assert {parent_span_id(span) for span in named[receive_name]} == {send["spanID"]}
        assert {span_service(trace, span) for span in named[receive_name]} == {billing.name}
        for tags in receives:
            assert tags["span.kind"] == "consumer"
            assert tags["messaging.kafka.offset"] == record.offset
            assert tags["messaging.kafka.message.key"] == record.key.decode()
            assert tags["messaging.consumer.group.name"] == group
            assert tags["messaging.destination.partition.id"] == str(record.partition)
            assert tags["ktp.record.age_ms"] >= 0
        assert sorted(tags.get("ktp.redelivered", False) for tags in receives) == [False, True]
