"""KafkaExchange playbooks: client bytes in, broker bytes in, check exactly what goes out."""

from __future__ import annotations

import datetime
import struct
import uuid

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.api_versions.v3.response import ApiVersion, ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.schema.find_coordinator.v3 import request as fc3_req
from kio.schema.find_coordinator.v3 import response as fc3
from kio.schema.find_coordinator.v4 import request as fc4_req
from kio.schema.find_coordinator.v4 import response as fc4
from kio.schema.metadata.v12 import response as md
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.produce.v9 import request as pr
from kio.schema.produce.v11 import request as pr11
from kio.schema.produce.v11 import response as pres11
from kio.static.primitive import i16, i32, i64

from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec.errors import ProtocolError
from proxy.codec.fetch import locate_fetched_partitions
from proxy.codec.framing import SIZE_PREFIX
from proxy.codec.messages import decode_response
from proxy.exchange import KafkaExchange
from proxy.interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from proxy.metrics import Metrics

from .messages import fetch_response, request_frame, response_frame

ZERO = datetime.timedelta(0)


@pytest.fixture
def seen() -> list[int]:
    return []


@pytest.fixture
def exchange(seen: list[int]) -> KafkaExchange:
    brokers = BrokerDirectory("127.0.0.1", PortMapping(19000, {7: 20007}), seen.append)
    return KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 5555), BrokerEndpoint(-1, "kafka", 9092)),
        brokers=brokers,
        topics=TopicNames(),
        interceptors=Interceptors(),
        metrics=Metrics(),
        max_frame_size=1 << 20,
    )


def _with_interceptors(exchange: KafkaExchange, *interceptors: object) -> KafkaExchange:
    """The same connection's exchange with interceptors (they decide what it holds)."""
    return KafkaExchange(
        exchange.context,
        brokers=exchange._brokers,
        topics=exchange._topics,
        interceptors=Interceptors(interceptors),
        metrics=exchange._metrics,
        max_frame_size=1 << 20,
    )


def _sent(outcome) -> bytes:
    return b"".join(bytes(p) for p in outcome.send)


def _decode(api_key: int, version: int, sent: bytes):
    return decode_response(api_key, version, memoryview(sent)[SIZE_PREFIX:])[1]


def _metadata_response() -> md.MetadataResponse:
    topic = md.MetadataResponseTopic(
        error_code=ErrorCode.none,
        name="orders",
        topic_id=uuid.UUID(int=42),
        partitions=(),
        topic_authorized_operations=i32(-2147483648),
    )
    return md.MetadataResponse(
        throttle_time=ZERO,
        brokers=(
            md.MetadataResponseBroker(node_id=i32(1), host="10.0.0.1", port=i32(9092)),
            md.MetadataResponseBroker(node_id=i32(7), host="10.0.0.7", port=i32(9092)),
        ),
        cluster_id="c",
        controller_id=i32(1),
        topics=(topic,),
    )


def test_requests_the_proxy_does_not_need_pass_through_as_the_same_object(
    exchange: KafkaExchange,
) -> None:
    data = request_frame(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
        ),
        5,
    )
    outcome = exchange.from_client(data)
    (sent,) = outcome.send
    # The bytes read, or a view of them: never a copy.
    assert sent is data or (isinstance(sent, memoryview) and sent.obj is data)
    assert exchange.in_flight == 1


def test_metadata_brokers_are_rewritten_to_local_listeners(
    exchange: KafkaExchange, seen: list[int]
) -> None:
    exchange.from_client(
        request_frame(
            MetadataRequest(
                topics=None,
                allow_auto_topic_creation=True,
                include_topic_authorized_operations=False,
            ),
            5,
        )
    )
    sent = _sent(exchange.from_server(response_frame(_metadata_response(), 5)))
    brokers = _decode(3, 12, sent).brokers
    assert [(b.node_id, b.host, b.port) for b in brokers] == [
        (1, "127.0.0.1", 19001),
        (7, "127.0.0.1", 20007),
    ]
    assert seen == [1, 7]
    assert exchange.in_flight == 0


def test_metadata_teaches_topic_ids(exchange: KafkaExchange) -> None:
    exchange.from_client(
        request_frame(
            MetadataRequest(
                topics=None,
                allow_auto_topic_creation=True,
                include_topic_authorized_operations=False,
            ),
            1,
        )
    )
    exchange.from_server(response_frame(_metadata_response(), 1))
    assert exchange._topics.name(uuid.UUID(int=42)) == "orders"


def test_find_coordinator_v3_top_level_address_is_rewritten(exchange: KafkaExchange) -> None:
    exchange.from_client(request_frame(fc3_req.FindCoordinatorRequest(key="g", key_type=i8(0)), 9))
    response = fc3.FindCoordinatorResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        error_message=None,
        node_id=i32(2),
        host="10.0.0.2",
        port=i32(9092),
    )
    decoded = _decode(10, 3, _sent(exchange.from_server(response_frame(response, 9))))
    assert (decoded.host, decoded.port) == ("127.0.0.1", 19002)


def test_find_coordinator_v4_skips_the_no_coordinator_entry(exchange: KafkaExchange) -> None:
    exchange.from_client(
        request_frame(
            fc4_req.FindCoordinatorRequest(key_type=i8(0), coordinator_keys=("a", "b")), 3
        )
    )
    response = fc4.FindCoordinatorResponse(
        throttle_time=ZERO,
        coordinators=(
            fc4.Coordinator(
                key="a",
                node_id=i32(3),
                host="10.0.0.3",
                port=i32(9092),
                error_code=ErrorCode.none,
                error_message=None,
            ),
            fc4.Coordinator(
                key="b",
                node_id=i32(-1),
                host="",
                port=i32(-1),
                error_code=ErrorCode.coordinator_not_available,
                error_message=None,
            ),
        ),
    )
    decoded = _decode(10, 4, _sent(exchange.from_server(response_frame(response, 3))))
    assert [(c.node_id, c.host, c.port) for c in decoded.coordinators] == [
        (3, "127.0.0.1", 19003),
        (-1, "", -1),
    ]


def _api_versions(entries: list[tuple[int, int, int]]) -> ApiVersionsResponse:
    return ApiVersionsResponse(
        error_code=ErrorCode.none,
        api_keys=tuple(
            ApiVersion(api_key=i16(k), min_version=i16(lo), max_version=i16(hi))
            for k, lo, hi in entries
        ),
        throttle_time=ZERO,
    )


def test_api_versions_advertise_only_what_the_proxy_can_parse(exchange: KafkaExchange) -> None:
    exchange.from_client(
        request_frame(ApiVersionsRequest(client_software_name="t", client_software_version="1"), 1)
    )
    response = _api_versions([(0, 0, 99), (1, 0, 99), (3, 0, 13), (9999, 1, 5), (78, 0, 0)])
    decoded = _decode(18, 3, _sent(exchange.from_server(response_frame(response, 1))))
    ranges = {v.api_key: (v.min_version, v.max_version) for v in decoded.api_keys}
    assert ranges[0] == (0, 13)  # Produce keeps the broker's minimum (librdkafka)
    assert ranges[1] == (4, 18)
    assert ranges[3] == (0, 13)
    assert ranges[9999] == (1, 5)  # never decoded: passed through
    assert 78 not in ranges  # ShareFetch v0 only: nothing in common, removed


def test_api_versions_already_within_range_are_forwarded_byte_for_byte(
    exchange: KafkaExchange,
) -> None:
    exchange.from_client(
        request_frame(ApiVersionsRequest(client_software_name="t", client_software_version="1"), 1)
    )
    data = response_frame(_api_versions([(0, 3, 12), (1, 4, 17), (3, 0, 12)]), 1)
    assert _sent(exchange.from_server(data)) == data


def test_client_id_is_learned_from_requests(exchange: KafkaExchange) -> None:
    exchange.from_client(
        request_frame(
            ApiVersionsRequest(client_software_name="t", client_software_version="1"),
            1,
            client_id="billing-app",
        )
    )
    assert exchange.context.client_id == "billing-app"


def test_requests_and_responses_are_counted_per_api(exchange: KafkaExchange) -> None:
    metrics = exchange._metrics
    request = MetadataRequest(
        topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
    )
    sizes = []
    for correlation_id in (1, 2):
        sent, answer = (
            request_frame(request, correlation_id),
            response_frame(_metadata_response(), correlation_id),
        )
        exchange.from_client(sent)
        exchange.from_server(answer)
        sizes.append((len(sent), len(answer)))
    # An API the proxy never reads (ListOffsets) has its own series too. Keys Kafka does not
    # define are forwarded (the broker judges them) and counted together as "other": a client
    # making keys up cannot add a series per key.
    for correlation_id, api_key in ((3, 9999), (4, 12345), (5, 2)):
        exchange.from_client(struct.pack(">ihhih", 10, api_key, 0, correlation_id, -1))
        exchange.from_server(struct.pack(">ii", 4, correlation_id))

    assert metrics.value("requests", api_key=3) == 2
    assert metrics.value("request_bytes", api_key=3) == sum(s for s, _ in sizes)
    assert metrics.value("response_bytes", api_key=3) == sum(a for _, a in sizes)
    assert metrics.value("requests", api_key="other") == 2
    assert metrics.value("request_bytes", api_key="other") == 28
    assert metrics.value("response_bytes", api_key="other") == 16
    assert metrics.value("requests", api_key=2) == 1
    counts = {dict(labels)["api_key"]: count for _, labels, _, _, count in metrics.histograms()}
    assert counts == {"2": 1, "3": 2, "other": 2}


def test_a_response_to_no_outstanding_request_is_a_protocol_error(
    exchange: KafkaExchange,
) -> None:
    with pytest.raises(ProtocolError):
        exchange.from_server(response_frame(_metadata_response(), 77))


def test_out_of_order_response_is_a_protocol_error(exchange: KafkaExchange) -> None:
    exchange.from_client(
        request_frame(
            MetadataRequest(
                topics=None,
                allow_auto_topic_creation=True,
                include_topic_authorized_operations=False,
            ),
            1,
        )
    )
    with pytest.raises(ProtocolError):
        exchange.from_server(response_frame(_metadata_response(), 2))


def _produce(acks: int, version: int = 9):
    module = pr if version == 9 else pr11
    return module.ProduceRequest(
        acks=i16(acks),
        timeout=datetime.timedelta(seconds=1),
        topic_data=(
            module.TopicProduceData(
                name="t", partition_data=(module.PartitionProduceData(index=i32(0), records=None),)
            ),
        ),
    )


def test_acks_zero_produce_is_not_left_in_flight(exchange: KafkaExchange) -> None:
    for correlation_id in range(5):
        exchange.from_client(request_frame(_produce(acks=0), correlation_id))
    assert exchange.in_flight == 0


def test_acks_zero_produce_expects_no_response(exchange: KafkaExchange) -> None:
    data = request_frame(_produce(acks=0), 1) + request_frame(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=True, include_topic_authorized_operations=False
        ),
        2,
    )
    assert _sent(exchange.from_client(data)) == data
    exchange.from_server(response_frame(_metadata_response(), 2))
    assert exchange.in_flight == 0


def test_produce_response_node_endpoints_are_rewritten(exchange: KafkaExchange) -> None:
    exchange.from_client(request_frame(_produce(acks=-1, version=11), 4))
    response = pres11.ProduceResponse(
        responses=(),
        throttle_time=ZERO,
        node_endpoints=(pres11.NodeEndpoint(node_id=i32(5), host="10.0.0.5", port=i32(9092)),),
    )
    decoded = _decode(0, 11, _sent(exchange.from_server(response_frame(response, 4))))
    assert [(e.node_id, e.host, e.port) for e in decoded.node_endpoints] == [
        (5, "127.0.0.1", 19005)
    ]


def test_produce_response_without_endpoints_is_forwarded_unchanged(
    exchange: KafkaExchange,
) -> None:
    exchange.from_client(request_frame(_produce(acks=1, version=11), 4))
    data = response_frame(pres11.ProduceResponse(responses=(), throttle_time=ZERO), 4)
    assert _sent(exchange.from_server(data)) == data


def i8(value: int):
    from kio.static.primitive import i8 as _i8

    return _i8(value)


_ = i64


class _Tagger:
    """A produce interceptor that adds one header to every record."""

    def on_produce_request(self, ctx: ConnectionContext, partition: object) -> None:
        partition.inject(lambda record: [("x-tag", b"1")])  # type: ignore[attr-defined]

    def on_produce_response(self, ctx: ConnectionContext, state: object, result: object) -> None:
        pass


@pytest.mark.parametrize("version", [9, 11])
def test_injected_records_are_spliced_into_an_otherwise_identical_request(
    exchange: KafkaExchange, version: int
) -> None:
    import warnings

    from proxy.codec.headers import parse_request_header
    from proxy.codec.messages import decode_request
    from proxy.codec.records import iter_batches

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka.record.default_records import DefaultRecordBatchBuilder

    def batch(value: bytes) -> bytes:
        builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
        builder.append(0, timestamp=1, key=None, value=value, headers=[])
        return bytes(builder.build())

    module = pr if version == 9 else pr11
    request = module.ProduceRequest(
        transactional_id="tx",
        acks=i16(-1),
        timeout=datetime.timedelta(seconds=1),
        topic_data=(
            module.TopicProduceData(
                name="t",
                partition_data=(
                    module.PartitionProduceData(index=i32(0), records=batch(b"a")),
                    module.PartitionProduceData(index=i32(1), records=None),
                    module.PartitionProduceData(index=i32(2), records=batch(b"b")),
                ),
            ),
        ),
    )
    exchange = _with_interceptors(exchange, _Tagger())
    original = request_frame(request, 42, client_id="spliced")
    sent = memoryview(_sent(exchange.from_client(original)))
    assert int.from_bytes(sent[:4], "big") == len(sent) - 4
    header = parse_request_header(sent[4:])
    assert (header.api_key, header.correlation_id, header.client_id) == (0, 42, "spliced")
    decoded = decode_request(0, version, sent[4:], header.size)
    assert decoded.transactional_id == "tx"
    partitions = decoded.topic_data[0].partition_data
    assert partitions[1].records is None
    for partition, value in ((partitions[0], b"a"), (partitions[2], b"b")):
        (record,) = [r for b in iter_batches(partition.records) for r in b.records()]
        assert (record.value, record.headers) == (value, (("x-tag", b"1"),))


# -- Produce and Fetch responses: forwarded first, decoded for the interceptors afterwards ------


def _fetch_request(version: int = 16):
    from importlib import import_module

    module = import_module(f"kio.schema.fetch.v{version}.request")
    return module.FetchRequest(
        max_wait=datetime.timedelta(milliseconds=500),
        min_bytes=i32(1),
        max_bytes=i32(1 << 20),
        isolation_level=i8(0),
        session_id=i32(0),
        session_epoch=i32(-1),
        topics=(),
        forgotten_topics_data=(),
        rack_id="",
    )


class _FetchRecorder:
    """A fetch interceptor that notes which partitions it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, int, int]] = []

    def on_fetch_response(self, ctx: ConnectionContext, fetched: object) -> None:
        self.seen.append(
            (fetched.topic_id, fetched.partition, fetched.error_code)  # type: ignore[attr-defined]
        )


def test_fetch_response_node_endpoints_are_rewritten(exchange: KafkaExchange) -> None:
    exchange.from_client(request_frame(_fetch_request(), 8))
    sent = _sent(exchange.from_server(response_frame(fetch_response(endpoints=True), 8)))
    decoded = _decode(1, 16, sent)
    assert [(e.node_id, e.host, e.port) for e in decoded.node_endpoints] == [
        (7, "127.0.0.1", 20007)
    ]


def test_a_fetch_response_is_sent_before_it_is_read_for_the_interceptors(
    exchange: KafkaExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy.exchange

    read: list[str] = []

    def counting_locate(*args: object, **kwargs: object) -> object:
        read.append("walk")
        return locate_fetched_partitions(*args, **kwargs)  # type: ignore[arg-type]

    def counting_decode(*args: object, **kwargs: object) -> object:
        read.append("decode")
        return decode_response(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(proxy.exchange, "locate_fetched_partitions", counting_locate)
    monkeypatch.setattr(proxy.exchange, "decode_response", counting_decode)
    recorder = _FetchRecorder()
    exchange = _with_interceptors(exchange, recorder)
    exchange.from_client(request_frame(_fetch_request(), 8))
    data = response_frame(fetch_response(), 8)
    outcome = exchange.from_server(data)
    assert _sent(outcome) == data
    assert read == [] and recorder.seen == [], "read before the response went out"
    for action in outcome.after_send:
        action()
    assert recorder.seen == [(uuid.UUID(int=42), 3, 0)]
    # Found by the schema walk, as views of the frame: kio never decodes it.
    assert read == ["walk"]


def test_a_fetch_response_with_an_error_code_kio_does_not_know_still_reaches_the_interceptors(
    exchange: KafkaExchange,
) -> None:
    recorder = _FetchRecorder()
    exchange = _with_interceptors(exchange, recorder)
    exchange.from_client(request_frame(_fetch_request(), 8))
    data = bytearray(response_frame(fetch_response(error=1), 8))
    # An error code kio's enum does not know (a newer broker): kio would refuse the response,
    # the walk reads the code as it came.
    at = data.index(b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x0a")
    data[at : at + 2] = (32000).to_bytes(2, "big")
    outcome = exchange.from_server(bytes(data))
    assert _sent(outcome) == bytes(data)
    for action in outcome.after_send:
        action()
    assert recorder.seen == [(uuid.UUID(int=42), 3, 32000)]
    assert exchange._metrics.value("responses_undecodable", api_key=1) == 0


def test_a_sent_response_the_proxy_cannot_decode_is_counted_and_skipped(
    exchange: KafkaExchange,
) -> None:
    recorder = _FetchRecorder()
    exchange = _with_interceptors(exchange, recorder)
    exchange.from_client(request_frame(_fetch_request(), 8))
    # A byte after the end of the message: neither the walk nor kio can account for it.
    body = response_frame(fetch_response(), 8)[SIZE_PREFIX:] + b"\x00"
    data = len(body).to_bytes(SIZE_PREFIX, "big") + body
    outcome = exchange.from_server(data)
    assert _sent(outcome) == data
    for action in outcome.after_send:
        action()
    assert recorder.seen == []
    assert exchange._metrics.value("responses_undecodable", api_key=1) == 1
