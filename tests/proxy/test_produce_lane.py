"""The produce request lane, seen from the exchange: with tracing's lane on, a connection sends
the same bytes, finishes the same spans and counts the same as with the lane off, for the same
random draws; and most requests at a low sampling ratio never reach the exchange's Python."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from functools import cache
from importlib import import_module
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.static.primitive import i16, i32, i64
from opentelemetry.sdk.resources import Resource

import proxy.exchange as exchange_module
import proxy.tracing.producer as producer_module
from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec import native
from proxy.codec.framing import SIZE_PREFIX
from proxy.codec.headers import parse_request_header
from proxy.codec.messages import decode_request
from proxy.codec.pairing import PairingCorePython
from proxy.codec.records import iter_batches
from proxy.exchange import KafkaExchange
from proxy.interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from proxy.metrics import Metrics
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.core import TracingCore
from proxy.tracing.producer import ProduceTracer
from proxy.tracing.propagation import Propagation
from proxy.tracing.roots import inject_request_roots_python
from proxy.tracing.sampling import sampler_from_env
from proxy.tracing.traceparent import format_traceparent, parse_traceparent

from ..tracing.test_interceptors import build_batch
from .collected import CollectedSpans, span_fields
from .messages import request_frame, response_frame

compiled = pytest.mark.skipif(native.compiled is None, reason="extension not built")

#: Produce versions built here: kio decodes them all, so the lane takes them all (3..13).
VERSIONS = (3, 7, 9, 10, 11, 12, 13)
#: Record counts of the batches; one batch per partition.
COUNTS = (1, 2, 5, 17, 60, 200)
TOPIC_ID = uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF)
UNKNOWN_TOPIC_ID = uuid.UUID(int=0xFEED)
APP_SPAN = 0x1234567890ABCDEF
PRODUCE_OUTCOMES = ("sampled", "unsampled", "app_context", "invalid_context", "skipped")


@cache
def _plain(count: int, size: int = 24) -> bytes:
    """A batch of records without headers, half of them with keys (the lane's case)."""
    return build_batch([(b"k%d" % i if i % 2 else None, b"v" * size, []) for i in range(count)])


@cache
def _instrumented(count: int, seed: int) -> bytes:
    """A batch from an instrumented producer: every record carries its own context, some
    sampled (the lane declines it; the general path keeps the contexts)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        context = format_traceparent(rng.getrandbits(128) | 1, APP_SPAN + i, rng.random() < 0.5)
        records.append((b"a%d" % i, b"w" * 16, [("traceparent", context)]))
    return build_batch(records)


@dataclasses.dataclass
class Produce:
    """One Produce request of a test, and what its response says."""

    version: int
    acks: int
    correlation_id: int
    #: (topic name or id, partition, records or None) in request order.
    partitions: list[tuple[str | uuid.UUID, int, bytes | None]]
    transactional_id: str | None = None

    def request(self) -> bytes:
        """The request frame, as kio encodes it."""
        module = import_module(f"kio.schema.produce.v{self.version}.request")
        topics: dict[str | uuid.UUID, list[Any]] = {}
        for topic, partition, records in self.partitions:
            topics.setdefault(topic, []).append(
                module.PartitionProduceData(index=i32(partition), records=records)
            )
        payload = module.ProduceRequest(
            transactional_id=self.transactional_id,
            acks=i16(self.acks),
            timeout=datetime.timedelta(seconds=30),
            topic_data=tuple(
                module.TopicProduceData(
                    **_topic_field(self.version, topic), partition_data=tuple(p)
                )
                for topic, p in topics.items()
            ),
        )
        return request_frame(payload, self.correlation_id, "app-1")

    def response(self) -> bytes:
        """Its response: every partition stored, at base offset 1000 * (partition + 1)."""
        module = import_module(f"kio.schema.produce.v{self.version}.response")
        names = {field.name for field in dataclasses.fields(module.PartitionProduceResponse)}
        topics: dict[str | uuid.UUID, list[Any]] = {}
        for topic, partition, _ in self.partitions:
            fields: dict[str, Any] = {
                "index": i32(partition),
                "error_code": ErrorCode.none,
                "base_offset": i64(1000 * (partition + 1)),
            }
            if "record_errors" in names:
                fields["record_errors"] = ()
            topics.setdefault(topic, []).append(module.PartitionProduceResponse(**fields))
        payload = module.ProduceResponse(
            responses=tuple(
                module.TopicProduceResponse(
                    **_topic_field(self.version, topic), partition_responses=tuple(p)
                )
                for topic, p in topics.items()
            ),
            throttle_time=datetime.timedelta(0),
        )
        return response_frame(payload, self.correlation_id)


def _topic_field(version: int, topic: str | uuid.UUID) -> dict[str, Any]:
    """Topics are named from v13 on by id, before by name."""
    if version >= 13:
        assert isinstance(topic, uuid.UUID)
        return {"topic_id": topic}
    assert isinstance(topic, str)
    return {"name": topic}


@dataclasses.dataclass
class Run:
    """What one connection did with a conversation: everything the lane must not change."""

    #: The bytes forwarded for each read from the client, and for each read from the broker.
    sent: list[bytes]
    answered: list[bytes]
    #: The finished spans: name, ids, parent, status and attributes, in the order finished.
    spans: list[tuple[Any, ...]]
    #: Every counter the metrics list, with its labels.
    counters: list[tuple[str, tuple[tuple[str, str], ...], float]]
    in_flight: int
    #: How many Produce requests the exchange's Python was handed (not part of the equality).
    handed: int = dataclasses.field(compare=False)


def _no_lane(max_batch_bytes: int, versions: tuple[int, int]) -> None:
    """The tracer, with the lane off: every Produce request takes the general path."""


#: Which twins run: of the pairing core, and of the lane (`inject_request_roots`).
TWINS = [("compiled", "compiled"), ("python", "compiled"), ("compiled", "python")]


def _choose_twins(monkeypatch: pytest.MonkeyPatch, twins: tuple[str, str]) -> None:
    """The twins the exchange and the tracer pick up (where both are built: else Python)."""
    core, lane = twins
    if core == "python":
        monkeypatch.setattr(exchange_module, "pairing_core", PairingCorePython)
    if lane == "python":
        monkeypatch.setattr(producer_module, "inject_request_roots", inject_request_roots_python)


def _run(
    produces: list[Produce],
    *,
    ratio: str,
    lane: bool,
    monkeypatch: pytest.MonkeyPatch,
    seed: int = 1,
    reads: int | None = 0,
    topics: dict[uuid.UUID, str] | None = None,
    twins: tuple[str, str] = ("compiled", "compiled"),
) -> Run:
    """Feed `produces` through a fresh traced exchange (the requests cut into `reads` extra
    pieces, or each request a read of its own with None; then the responses), with
    `random.seed(seed)` first, and say what it did."""
    _choose_twins(monkeypatch, twins)
    exchange, _, pipeline, metrics = _traced_exchange(ratio, lane, topics, monkeypatch)
    handed = 0
    on_request = exchange._on_request

    def counting(held: Any, outcome: Any) -> None:
        nonlocal handed
        handed += held[1] == 0
        on_request(held, outcome)

    monkeypatch.setattr(exchange, "_on_request", counting)
    stream = b"".join(produce.request() for produce in produces)
    responses = b"".join(produce.response() for produce in produces if produce.acks != 0)
    rng = random.Random(seed)
    random.seed(seed)
    if reads is None:
        pieces = [produce.request() for produce in produces]
    else:
        pieces = _cut(stream, rng, reads)
    sent = [_deliver(exchange.from_client(data)) for data in pieces]
    answered = [_deliver(exchange.from_server(data)) for data in _cut(responses, rng, 2)]
    exchange.flush_metrics()
    counters = [
        (name, labels, value)
        for kind, name, labels, value in metrics.samples()
        if kind == "counter"
    ]
    monkeypatch.undo()
    return Run(
        sent,
        answered,
        [span_fields(s, times=False) for s in pipeline.spans],
        counters,
        exchange.in_flight,
        handed,
    )


def _traced_exchange(
    ratio: str,
    lane: bool,
    topics: dict[uuid.UUID, str] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[KafkaExchange, ProduceTracer, CollectedSpans, Metrics]:
    """A fresh connection's exchange traced at `ratio`, with the produce tracer's lane or
    without, and where its spans and counts go."""
    metrics = Metrics()
    pipeline = CollectedSpans(metrics)
    core = TracingCore(
        sampler=sampler_from_env("parentbased_traceidratio", ratio),
        propagation=Propagation(["tracecontext", "baggage"]),
        pipeline=pipeline,
        resource=Resource.create({"service.name": "orders"}),
    )
    tracer = ProduceTracer(core, metrics)
    if not lane:
        monkeypatch.setattr(tracer, "request_lane", _no_lane)
    names = TopicNames()
    names.update(topics or {})
    exchange = KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 5555), BrokerEndpoint(1, "broker-1", 9092)),
        brokers=BrokerDirectory("127.0.0.1", PortMapping(19000, {})),
        topics=names,
        interceptors=Interceptors([tracer, FetchTracer(core, metrics)]),
        metrics=metrics,
        max_frame_size=1 << 24,
    )
    assert (exchange._lane_owner is tracer) is lane
    return exchange, tracer, pipeline, metrics


def _cut(stream: bytes, rng: random.Random, cuts: int) -> list[bytes]:
    points = sorted({rng.randrange(1, len(stream)) for _ in range(cuts)} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def _deliver(outcome: Any) -> bytes:
    """What goes out for one read; then what runs once it went out (spans finish there)."""
    sent = b"".join(bytes(piece) for piece in outcome.send)
    for action in outcome.after_send:
        action()
    return sent


def _both(produces: list[Produce], monkeypatch: pytest.MonkeyPatch, **options: Any) -> Run:
    """The run with the lane, checked equal to the run without it; the former is returned."""
    with_lane = _run(produces, lane=True, monkeypatch=monkeypatch, **options)
    without = _run(produces, lane=False, monkeypatch=monkeypatch, **options)
    assert with_lane.sent == without.sent, "the same bytes go to the broker"
    assert with_lane.answered == without.answered
    assert with_lane.spans == without.spans, "the same spans, ids and attributes"
    assert with_lane.counters == without.counters, "the same counts"
    assert with_lane == without
    assert without.handed == len(produces), "without the lane, every request is handed over"
    return with_lane


def _counter(run: Run, name: str, **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    return sum(value for n, got, value in run.counters if n == name and got == wanted)


def _traced(run: Run) -> dict[str, float]:
    return {
        outcome: _counter(run, "records_traced", side="produce", outcome=outcome)
        for outcome in PRODUCE_OUTCOMES
    }


def _frames(stream: bytes) -> Iterator[memoryview]:
    view, at = memoryview(stream), 0
    while at < len(view):
        size = int.from_bytes(view[at : at + SIZE_PREFIX], "big")
        yield view[at + SIZE_PREFIX : at + SIZE_PREFIX + size]
        at += SIZE_PREFIX + size


def _contexts(run: Run) -> list[tuple[int, int, bool]]:
    """The traceparent of every record forwarded, in stream order (trace, span, sampled)."""
    found = []
    for body in _frames(b"".join(run.sent)):
        header = parse_request_header(body)
        assert header.size is not None and header.api_version is not None
        payload = decode_request(0, header.api_version, body, header.size)
        for topic in payload.topic_data:
            for partition in topic.partition_data:
                for batch in iter_batches(partition.records or b""):
                    assert batch.crc_is_valid()
                    for record in batch.records():
                        context = parse_traceparent(dict(record.headers)["traceparent"])
                        assert context is not None
                        found.append(context)
    return found


def _plain_produces(
    rng: random.Random,
    count: int,
    *,
    counts: tuple[int, ...] = COUNTS,
    acks: tuple[int, ...] = (1, -1),
) -> list[Produce]:
    """Requests of every version, one to four partitions of plain batches, some partitions
    without records, some transactional."""
    produces = []
    for correlation_id in range(1, count + 1):
        version = rng.choice(VERSIONS)
        topics: list[str | uuid.UUID] = (
            [TOPIC_ID, UNKNOWN_TOPIC_ID] if version >= 13 else ["orders", "payments"]
        )
        partitions: list[tuple[str | uuid.UUID, int, bytes | None]] = [
            (
                topics[index % 2],
                index,
                _plain(rng.choice(counts)) if index == 0 or rng.random() < 0.9 else None,
            )
            for index in range(rng.randrange(1, 5))
        ]
        produces.append(
            Produce(
                version,
                rng.choice(acks),
                correlation_id,
                partitions,
                transactional_id=rng.choice([None, "tx-1"]),
            )
        )
    return produces


def _records(produces: list[Produce]) -> int:
    return sum(
        next(iter_batches(records)).record_count
        for produce in produces
        for _, _, records in produce.partitions
        if records is not None
    )


# -- the lane and the general path agree --------------------------------------------------


@compiled
@pytest.mark.parametrize("twins", TWINS, ids=["-".join(t) for t in TWINS])
def test_at_one_percent_most_requests_go_out_without_reaching_the_exchange(
    twins: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many requests, a few with a sampled record: same bytes, spans and counts as the
    general path; only the requests with a sampled record are handed over."""
    produces = _plain_produces(random.Random(5), 150, counts=(1, 2, 3, 5, 8, 13))
    produces[7].partitions[0] = (produces[7].partitions[0][0], 0, _plain(200))
    run = _both(
        produces,
        monkeypatch,
        ratio="0.01",
        reads=40,
        topics={TOPIC_ID: "orders"},
        twins=twins,
    )
    traced = _traced(run)
    total = _records(produces)
    assert traced["sampled"] + traced["unsampled"] == total
    assert 0 < traced["sampled"] == len(run.spans) < total / 20
    contexts = _contexts(run)
    assert len(contexts) == total, "every record got a root context"
    sampled = [(trace, span) for trace, span, flag in contexts if flag]
    assert sampled == [span[2:4] for span in run.spans], "a span for each sampled record"
    assert _counter(run, "produce_requests_rewritten") == len(produces)
    with_sampled = [_has_sampled(body) for body in _frames(b"".join(run.sent))]
    assert run.handed == sum(with_sampled), "only requests with a sampled record reach Python"
    assert 0 < run.handed < len(produces) / 4
    assert run.in_flight == 0


def _has_sampled(body: memoryview) -> bool:
    header = parse_request_header(body)
    assert header.size is not None and header.api_version is not None
    payload = decode_request(0, header.api_version, body, header.size)
    return any(
        (context := parse_traceparent(dict(record.headers)["traceparent"])) is not None
        and context[2]
        for topic in payload.topic_data
        for partition in topic.partition_data
        for batch in iter_batches(partition.records or b"")
        for record in batch.records()
    )


def _offsets(run: Run) -> list[tuple[str, str, int | None, str | None]]:
    """Each span's topic, partition, offset and key, as its attributes say (sorted: spans of
    acks=0 requests end before the responses to the others come)."""
    found = []
    for *_, attributes, _ in run.spans:
        values = dict(attributes)
        found.append(
            (
                values["messaging.destination.name"],
                values["messaging.destination.partition.id"],
                values.get("messaging.kafka.offset"),
                values.get("messaging.kafka.message.key"),
            )
        )
    return sorted(found, key=repr)


def _expected_offsets(produces: list[Produce], names: dict[Any, str]) -> list[Any]:
    """A span per record, at the partition's base offset plus the record's place, keyed as
    `_plain` keys records; none for records of acks=0 requests."""
    expected = []
    for produce in produces:
        for topic, partition, records in produce.partitions:
            if records is None:
                continue
            for index in range(next(iter_batches(records)).record_count):
                expected.append(
                    (
                        names.get(topic, str(topic)),
                        str(partition),
                        None if produce.acks == 0 else 1000 * (partition + 1) + index,
                        f"k{index}" if index % 2 else None,
                    )
                )
    return sorted(expected, key=repr)


@compiled
@pytest.mark.parametrize("twins", TWINS, ids=["-".join(t) for t in TWINS])
def test_at_one_hundred_percent_every_record_has_its_span(
    twins: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request is handed over with the lane's result: spans with the broker's offsets
    and the records' keys, as the general path makes them."""
    produces = _plain_produces(random.Random(8), 12)
    names = {"orders": "orders", "payments": "payments", TOPIC_ID: "orders"}
    run = _both(produces, monkeypatch, ratio="1", reads=6, topics={TOPIC_ID: "orders"}, twins=twins)
    total = _records(produces)
    assert _traced(run)["sampled"] == len(run.spans) == total
    assert _offsets(run) == _expected_offsets(produces, names)
    assert all(flag for _, _, flag in _contexts(run))
    assert [span[2:4] for span in run.spans] == [context[:2] for context in _contexts(run)]
    assert run.handed == len(produces)
    assert _counter(run, "produce_requests_rewritten") == len(produces)


def test_at_zero_percent_no_request_reaches_the_exchange(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every record gets an unsampled root context, and no span."""
    produces = _plain_produces(random.Random(9), 30, acks=(0, 1, -1))
    run = _both(produces, monkeypatch, ratio="0", reads=10, topics={TOPIC_ID: "orders"})
    assert run.spans == [] and run.handed == 0
    assert _traced(run) == {**dict.fromkeys(PRODUCE_OUTCOMES, 0), "unsampled": _records(produces)}
    assert not any(flag for _, _, flag in _contexts(run))
    assert len(_contexts(run)) == _records(produces)
    assert _counter(run, "produce_requests_rewritten") == len(produces)
    assert run.in_flight == 0


@pytest.mark.parametrize("ratio", ["0.01", "1"])
def test_acks_zero_requests_finish_their_spans_without_a_result(
    ratio: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No response will come: the spans end once the request went out, without offsets, and
    the responses to the other requests still pair."""
    produces = _plain_produces(random.Random(10), 60 if ratio == "1" else 200, acks=(0, 0, 1))
    run = _both(produces, monkeypatch, ratio=ratio, reads=20, topics={TOPIC_ID: "orders"})
    assert any(produce.acks == 0 for produce in produces)
    assert run.in_flight == 0
    assert run.spans, "some records were sampled"
    without_result = [o for o in _offsets(run) if o[2] is None]
    assert without_result, "spans of acks=0 requests"
    if ratio == "1":
        names = {"orders": "orders", "payments": "payments", TOPIC_ID: "orders"}
        assert _offsets(run) == _expected_offsets(produces, names)
    assert _traced(run)["sampled"] == len(run.spans)


def _instrumented_produces(rng: random.Random, count: int) -> list[Produce]:
    """Requests of an instrumented producer (every record with its context) interleaved with
    plain ones."""
    produces = _plain_produces(rng, count, counts=(1, 2, 3, 5, 8, 13))
    for produce in produces[::2]:
        produce.partitions = [
            (topic, partition, None if records is None else _instrumented(5, partition))
            for topic, partition, records in produce.partitions
        ]
    return produces


@pytest.mark.parametrize("ratio", ["0.01", "1"])
def test_requests_the_lane_declines_keep_their_contexts(
    ratio: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records that carry their producer's context are the general path's, with or without
    the lane: their headers stay as they are and their spans are children of them. (A read
    of its own for each request: the lane draws for the requests of a read before the
    exchange draws span ids for the declined ones among them, so only then are the draws
    in the same order with and without the lane.)"""
    produces = _instrumented_produces(random.Random(11), 40)
    run = _both(produces, monkeypatch, ratio=ratio, reads=None, topics={TOPIC_ID: "orders"})
    instrumented = _records(produces[::2])
    plain = _records(produces[1::2])
    traced = _traced(run)
    app_spans = [span for span in run.spans if span[4] is not None]
    assert traced["app_context"] == instrumented
    assert traced["sampled"] == len(run.spans)
    assert traced["sampled"] - len(app_spans) + traced["unsampled"] == plain
    assert app_spans and all(APP_SPAN <= span[4][1] < APP_SPAN + 5 for span in app_spans)
    sent = [context for context in _contexts(run) if APP_SPAN <= context[1] < APP_SPAN + 5]
    assert len(sent) == instrumented, "the producer's contexts went out unchanged"
    assert [span[4] for span in app_spans] == [context[:2] for context in sent if context[2]]
    plain_sampled = sum(_has_sampled(body) for body in list(_frames(b"".join(run.sent)))[1::2])
    assert run.handed == len(produces[::2]) + plain_sampled, "the declined and the sampled"
    assert plain_sampled < len(produces) // 8 if ratio == "0.01" else plain_sampled == 20
    assert _counter(run, "produce_requests_rewritten") == len(produces) // 2


def test_a_topic_named_by_id_takes_its_name_from_the_topic_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v13 names topics by id: spans of a known id carry its name, of an unknown one the id."""
    produces = [
        Produce(
            13,
            acks,
            correlation_id,
            [(TOPIC_ID, 0, _plain(3)), (UNKNOWN_TOPIC_ID, 1, _plain(2)), (TOPIC_ID, 2, None)],
            transactional_id="tx-1",
        )
        for correlation_id, acks in enumerate([1, -1, 0, 1], start=1)
    ]
    run = _both(produces, monkeypatch, ratio="1", topics={TOPIC_ID: "orders"})
    names = {TOPIC_ID: "orders", UNKNOWN_TOPIC_ID: str(UNKNOWN_TOPIC_ID)}
    assert _offsets(run) == _expected_offsets(produces, names)
    assert {span[0] for span in run.spans} == {"send orders", f"send {UNKNOWN_TOPIC_ID}"}


def _traced_alike(runs: list[Run], instrumented: int) -> None:
    """What must be the same when the draws come in another order: the counts, the spans'
    number and parents, the contexts the producer set."""
    with_lane, without = runs
    assert with_lane.counters == without.counters
    assert with_lane.in_flight == without.in_flight == 0
    assert len(with_lane.spans) == len(without.spans)
    parents = [sorted(span[4] for span in run.spans if span[4] is not None) for run in runs]
    assert parents[0] == parents[1]
    kept = [
        [context for context in _contexts(run) if APP_SPAN <= context[1] < APP_SPAN + 5]
        for run in runs
    ]
    assert kept[0] == kept[1] and len(kept[0]) == instrumented


def test_declined_requests_sharing_reads_with_plain_ones_are_traced_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several requests a read: the lane draws for the plain ones before the exchange draws
    span ids for the declined ones among them, so the ids differ from the lane-off run's,
    but what is traced, counted and kept is the same."""
    produces = _instrumented_produces(random.Random(12), 30)
    runs = [
        _run(produces, ratio="1", lane=lane, monkeypatch=monkeypatch, reads=8)
        for lane in (True, False)
    ]
    _traced_alike(runs, _records(produces[::2]))
    assert [len(b"".join(run.sent)) for run in runs] == [len(b"".join(runs[1].sent))] * 2
    assert runs[0].handed == len(produces)


@pytest.mark.parametrize("second", ["headers", "compressed"])
def test_a_request_declined_after_its_first_partition_is_traced_alike(
    second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the lane declines in a later partition is found after the earlier ones drew
    their contexts (as the lane's own tests expect); the general path draws again, so the ids
    differ from the lane-off run's, but the rest is the same."""
    declined = (
        _instrumented(2, 0)
        if second == "headers"
        else build_batch([(None, b"v" * 20, [])] * 3, codec=1)
    )
    produces = [
        Produce(11, 1, 1, [("orders", 0, _plain(3)), ("orders", 1, declined)]),
        Produce(11, 1, 2, [("orders", 0, _plain(3))]),
    ]
    runs = [
        _run(produces, ratio="1", lane=lane, monkeypatch=monkeypatch, reads=None)
        for lane in (True, False)
    ]
    _traced_alike(runs, 2 if second == "headers" else 0)
    assert runs[0].handed == 2 and len(runs[0].spans) == 6 + (2 if second == "headers" else 3)


@pytest.mark.parametrize("second", ["non-ASCII topic", "non-ASCII transactional id"])
def test_a_request_with_names_the_lane_declines_traces_as_without_it(
    second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names the lane does not read are declined before any draw: the general path then
    traces the request exactly as without the lane."""
    topic = "ordérs" if second == "non-ASCII topic" else "payments"
    transactional_id = "tx-é" if second == "non-ASCII transactional id" else None
    produces = [
        Produce(11, 1, 1, [("orders", 0, _plain(3)), (topic, 1, _plain(2))], transactional_id),
        Produce(9, 1, 2, [("orders", 0, _plain(4))]),
    ]
    run = _both(produces, monkeypatch, ratio="1", reads=None)
    assert run.handed == 2 and len(run.spans) == 9
    names = {"orders": "orders", topic: topic}
    assert _offsets(run) == _expected_offsets(produces, names)


@compiled
@pytest.mark.parametrize("twins", TWINS, ids=["-".join(t) for t in TWINS])
@pytest.mark.parametrize("acks", [1, 0])
def test_a_sampled_request_goes_out_before_its_spans_are_prepared(
    twins: tuple[str, str], acks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request with a sampled record is handed on as the lane rebuilt it; the spans'
    bookkeeping (the records' offsets and keys) waits until it went out, so the traced request
    does not wait on it. The span still starts when the request was read, and ends with the
    record's offset (acks=1) or, with no response to come (acks=0), without one."""
    _choose_twins(monkeypatch, twins)
    exchange, tracer, pipeline, _ = _traced_exchange("1", True, None, monkeypatch)
    prepared: list[int] = []
    prepare = tracer.on_lane_partition

    def noting(ctx: Any, partition: Any, injected: Any, start_ns: int) -> Any:
        prepared.append(start_ns)
        return prepare(ctx, partition, injected, start_ns)

    monkeypatch.setattr(tracer, "on_lane_partition", noting)
    produce = Produce(11, acks, 7, [("orders", 2, _plain(3))])
    read_at = time.time_ns()
    outcome = exchange.from_client(produce.request())
    assert prepared == [], "nothing is prepared before the request goes out"
    (sent,) = outcome.send
    assert _has_sampled(memoryview(bytes(sent))[SIZE_PREFIX:]), "it goes out traced"
    assert not pipeline.spans
    after = time.time_ns()
    for action in outcome.after_send:
        action()
    assert len(prepared) == 1 and read_at <= prepared[0] <= after, "started when it was read"
    if acks:
        assert exchange.in_flight == 1 and not pipeline.spans
        _deliver(exchange.from_server(produce.response()))
    assert exchange.in_flight == 0
    offsets = [span.attributes.get("messaging.kafka.offset") for span in pipeline.spans]
    assert offsets == ([3000, 3001, 3002] if acks else [None, None, None])
    assert [span.start_time for span in pipeline.spans] == [prepared[0]] * 3
