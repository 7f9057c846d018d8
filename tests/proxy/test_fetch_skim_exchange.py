"""The fetch skim, seen from the exchange: when tracing's FetchTracer is the only fetch
interceptor and skims whole responses, a connection forwards the same bytes, finishes the same
spans (redelivered marks included) and counts the same as with the skim off, for the same
conversations; clean responses never reach `on_fetch_response`, and everything the skim
declines still does."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import random
import types
import uuid
from collections.abc import Callable, Collection
from importlib import import_module
from typing import Any

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.api_versions.v3.response import ApiVersion, ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.schema.join_group.v5 import request as join_request
from kio.schema.join_group.v5 import response as join_response
from kio.static.primitive import i8, i16, i32, i64
from opentelemetry.sdk.resources import Resource

import proxy.tracing.consumer as consumer_module
from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec import native
from proxy.exchange import SKIM_WHOLE_RESPONSES_UP_TO, KafkaExchange
from proxy.groups import GroupDirectory
from proxy.interceptors import (
    BrokerEndpoint,
    ConnectionContext,
    FetchedPartition,
    Interceptors,
    SkimmedFetch,
    SkimmingFetchInterceptor,
)
from proxy.metrics import Metrics
from proxy.tracing.consumer import REDELIVERED_ATTRIBUTE, FetchTracer
from proxy.tracing.core import TracingCore
from proxy.tracing.producer import ProduceTracer
from proxy.tracing.propagation import Propagation
from proxy.tracing.sampling import sampler_from_env
from proxy.tracing.skim import skim_fetch_frame_python
from proxy.tracing.traceparent import format_traceparent

from ..tracing.test_interceptors import build_batch, transactional_batch
from .collected import CollectedSpans, span_fields
from .messages import request_frame, response_frame

compiled = pytest.mark.skipif(native.compiled is None, reason="extension not built")

KNOWN_ID = uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF)
UNKNOWN_ID = uuid.UUID(int=0xFEED)
#: The wall clock the consumer reads, fixed so that spans' times and ages compare equal.
NOW_NS = 1_700_000_500_000_000_000
TRACE_BASE = 0xABC0_0000_0000_0000_0000_0000_0000_0000
SPAN_BASE = 0x5000_0000_0000_0000
PRODUCER_ID = 7
ZERO = datetime.timedelta(0)
REDELIVERED = REDELIVERED_ATTRIBUTE
OFFSET = "messaging.kafka.offset"
TWINS = ["compiled", "python"]

Topic = str | uuid.UUID


# -- records and frames ---------------------------------------------------------------------


def _batch(
    base: int,
    count: int,
    *,
    sampled: Collection[int] = (),
    bare: Collection[int] = (),
    codec: int = 0,
    producer_id: int = -1,
) -> bytes:
    """`count` records from offset `base`: those in `sampled` carry a sampled traceparent,
    those in `bare` none, the others an unsampled one (ids derived from the offset, so that
    every run draws the same contexts); every third one has a key."""
    records = []
    for offset in range(base, base + count):
        headers = []
        if offset not in bare:
            context = format_traceparent(TRACE_BASE + offset, SPAN_BASE + offset, offset in sampled)
            headers = [("traceparent", context)]
        key = b"key-%d" % offset if offset % 3 == 0 else None
        records.append((key, b"value-%d" % offset, headers))
    return build_batch(records, codec, producer_id=producer_id, base_offset=base)


def _control(base: int) -> bytes:
    """Producer 7's transaction marker at `base`."""
    return transactional_batch(base, 1, control=True)


@dataclasses.dataclass(frozen=True)
class Part:
    """One partition of a Fetch response."""

    topic: Topic
    partition: int
    records: bytes | None
    #: (producer id, first offset) of aborted transactions; None for a null array.
    aborted: tuple[tuple[int, int], ...] | None = None
    error: int = 0
    #: Whether the skim may take it: no record to read, nothing it declines.
    clean: bool = True


def _make(cls: Any, **values: Any) -> Any:
    """A kio message of `cls` from those of `values` that this version has."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in values.items() if name in names})


def _topic_field(version: int, topic: Topic) -> dict[str, Any]:
    """Topics are named by id from v13 on, by name before."""
    if version >= 13:
        assert isinstance(topic, uuid.UUID)
        return {"topic_id": topic}
    assert isinstance(topic, str)
    return {"topic": topic}


def _by_topic(parts: list[Part]) -> dict[Topic, list[Part]]:
    grouped: dict[Topic, list[Part]] = {}
    for part in parts:
        grouped.setdefault(part.topic, []).append(part)
    return grouped


def _fetch_request(version: int, parts: list[Part], isolation: int) -> Any:
    module = import_module(f"kio.schema.fetch.v{version}.request")
    topics = tuple(
        _make(
            module.FetchTopic,
            **_topic_field(version, topic),
            partitions=tuple(
                _make(
                    module.FetchPartition,
                    partition=i32(part.partition),
                    fetch_offset=i64(0),
                    partition_max_bytes=i32(1 << 20),
                )
                for part in group
            ),
        )
        for topic, group in _by_topic(parts).items()
    )
    return _make(
        module.FetchRequest,
        replica_id=i32(-1),
        max_wait=datetime.timedelta(milliseconds=500),
        min_bytes=i32(1),
        max_bytes=i32(1 << 24),
        isolation_level=i8(isolation),
        session_id=i32(0),
        session_epoch=i32(-1),
        topics=topics,
        forgotten_topics_data=(),
        rack_id="",
    )


def _fetch_response(version: int, parts: list[Part], endpoints: bool) -> Any:
    module = import_module(f"kio.schema.fetch.v{version}.response")
    topics = tuple(
        _make(
            module.FetchableTopicResponse,
            **_topic_field(version, topic),
            partitions=tuple(
                _make(
                    module.PartitionData,
                    partition_index=i32(part.partition),
                    error_code=ErrorCode(part.error),
                    high_watermark=i64(100_000),
                    last_stable_offset=i64(100_000),
                    log_start_offset=i64(0),
                    aborted_transactions=None
                    if part.aborted is None
                    else tuple(
                        module.AbortedTransaction(producer_id=i64(p), first_offset=i64(o))
                        for p, o in part.aborted
                    ),
                    records=part.records,
                )
                for part in group
            ),
        )
        for topic, group in _by_topic(parts).items()
    )
    values: dict[str, Any] = {
        "throttle_time": ZERO,
        "error_code": ErrorCode.none,
        "session_id": i32(0),
        "responses": topics,
    }
    if endpoints:
        values["node_endpoints"] = (
            module.NodeEndpoint(node_id=i32(7), host="10.0.0.7", port=i32(9092), rack=None),
        )
    return _make(module.FetchResponse, **values)


@dataclasses.dataclass(frozen=True)
class Step:
    """One request on a connection and its response, the response cut into reads."""

    connection: str
    request: bytes
    response: bytes
    cuts: tuple[int, ...] = ()
    #: For a Fetch: whether the skim takes it (True) or declines it (False); None otherwise.
    skims: bool | None = None
    #: For a Fetch: whether the skim is not even tried (node endpoints: the decode path).
    decoded: bool = False

    def reads(self) -> list[bytes]:
        points = [0, *self.cuts, len(self.response)]
        return [self.response[a:b] for a, b in itertools.pairwise(points)]


class Conversation:
    """Steps across connections, each connection with its own client id and correlation ids."""

    def __init__(self, seed: int = 0) -> None:
        self.steps: list[Step] = []
        self._correlation: dict[str, int] = {}
        self._clients: dict[str, str] = {}
        self._rng = random.Random(seed)

    def _next(self, connection: str) -> int:
        self._correlation[connection] = self._correlation.get(connection, 0) + 1
        return self._correlation[connection]

    def connect(self, connection: str, client_id: str) -> None:
        """ApiVersions first, as clients do: the exchange learns the client id from it."""
        self._clients[connection] = client_id
        correlation_id = self._next(connection)
        request = ApiVersionsRequest(client_software_name="test", client_software_version="1")
        response = ApiVersionsResponse(
            error_code=ErrorCode.none,
            api_keys=(
                ApiVersion(api_key=i16(1), min_version=i16(4), max_version=i16(18)),
                ApiVersion(api_key=i16(11), min_version=i16(0), max_version=i16(9)),
            ),
            throttle_time=ZERO,
        )
        self.steps.append(
            Step(
                connection,
                request_frame(request, correlation_id, client_id),
                response_frame(response, correlation_id),
            )
        )

    def join(self, connection: str, group: str) -> None:
        """A JoinGroup naming `group`: the group of every connection of this client id."""
        correlation_id = self._next(connection)
        request = join_request.JoinGroupRequest(
            group_id=group,  # type: ignore[arg-type]
            session_timeout=datetime.timedelta(seconds=10),
            rebalance_timeout=datetime.timedelta(seconds=30),
            member_id="",
            group_instance_id=None,
            protocol_type="consumer",
            protocols=(join_request.JoinGroupRequestProtocol(name="range", metadata=b""),),
        )
        response = join_response.JoinGroupResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.none,
            generation_id=i32(1),
            protocol_name="range",
            leader="member-1",
            member_id="member-1",
            members=(),
        )
        self.steps.append(
            Step(
                connection,
                request_frame(request, correlation_id, self._clients[connection]),
                response_frame(response, correlation_id),
            )
        )

    def fetch(
        self,
        connection: str,
        version: int,
        parts: list[Part],
        *,
        isolation: int = 0,
        endpoints: bool = False,
        reads: int = 0,
    ) -> None:
        """A Fetch and its response with `parts`, cut into `reads` extra pieces."""
        correlation_id = self._next(connection)
        client_id = self._clients.get(connection)
        request = request_frame(
            _fetch_request(version, parts, isolation), correlation_id, client_id
        )
        response = response_frame(_fetch_response(version, parts, endpoints), correlation_id)
        cuts = tuple(sorted({self._rng.randrange(1, len(response)) for _ in range(reads)}))
        skims = (
            not endpoints and all(p.clean and not p.aborted for p in parts) and not _large(response)
        )
        self.steps.append(Step(connection, request, response, cuts, skims=skims, decoded=endpoints))

    def pipelined_fetches(self, connection: str, version: int, responses: list[list[Part]]) -> None:
        """Fetches sent one after the other before any answer, the responses then arriving in
        one read: one step (its `skims` None, as the routes of several responses are checked by
        the test itself)."""
        requests, answers = [], []
        for parts in responses:
            correlation_id = self._next(connection)
            client_id = self._clients.get(connection)
            requests.append(
                request_frame(_fetch_request(version, parts, 0), correlation_id, client_id)
            )
            answers.append(response_frame(_fetch_response(version, parts, False), correlation_id))
        self.steps.append(Step(connection, b"".join(requests), b"".join(answers)))

    def fetches(self) -> list[Step]:
        return [step for step in self.steps if step.skims is not None]


# -- running a conversation through exchanges -------------------------------------------------


@dataclasses.dataclass
class Run:
    """What the connections did with a conversation: everything the skim must not change."""

    #: Per step, the bytes forwarded to the broker and to the client.
    forwarded: list[tuple[bytes, bytes]]
    spans: list[tuple[Any, ...]]
    #: Every series of `Metrics.samples()` after the exchanges' counts were flushed.
    samples: list[tuple[str, str, tuple[tuple[str, str], ...], float]]
    #: Per connection: (client id, group id, requests in flight, still holding group requests).
    connections: dict[str, tuple[str | None, str | None, int, bool]]
    #: Per step, the FetchTracer hooks its response reached, in order ("skim": a skim that
    #: took it, "declined": one that did not, "skimmed", "response"): not part of the equality.
    routes: list[tuple[str, ...]] = dataclasses.field(compare=False)
    #: The partitions `on_fetch_skimmed` was given, call by call.
    skimmed: list[list[SkimmedFetch]] = dataclasses.field(compare=False)
    #: Whether the interceptors had a skim.
    skim_on: bool = dataclasses.field(compare=False, default=False)

    def traced(self, outcome: str) -> float:
        return self.counter("records_traced", side="fetch", outcome=outcome)

    def counter(self, name: str, **labels: str) -> float:
        wanted = tuple(sorted(labels.items()))
        return sum(v for kind, n, got, v in self.samples if n == name and got == wanted)

    def span_offsets(self) -> list[tuple[str, int, bool]]:
        """(span name, offset, redelivered) per span."""
        found = []
        for span in self.spans:
            attributes = dict(span[7])
            found.append((span[0], attributes[OFFSET], attributes.get(REDELIVERED, False)))
        return found


Build = Callable[[TracingCore, Metrics], list[object]]


def _tracers(core: TracingCore, metrics: Metrics) -> list[object]:
    return [ProduceTracer(core, metrics), FetchTracer(core, metrics)]


def _run(
    conversation: Conversation,
    *,
    skim: bool | None,
    twin: str = "compiled",
    topics: dict[uuid.UUID, str] | None = None,
    build: Build = _tracers,
    sampler: tuple[str, str] = ("parentbased_traceidratio", "0.01"),
    propagators: tuple[str, ...] = ("tracecontext", "baggage"),
    mode: str = "parent",
    skimmed_raises: bool = False,
    seed: int = 1,
) -> Run:
    """Feed `conversation` through fresh exchanges sharing one set of interceptors, group and
    topic directories (as one proxy process does). `skim` False turns the skim off by making
    FetchTracer say it cannot skim while `Interceptors` is built (its own per-partition skim
    stays as it is); True checks that the configuration skims; None leaves it as configured."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(consumer_module, "time", types.SimpleNamespace(time_ns=lambda: NOW_NS))
        if twin == "python":
            patch.setattr(consumer_module, "skim_fetch_frame", skim_fetch_frame_python)
        metrics = Metrics()
        pipeline = CollectedSpans(metrics)
        core = TracingCore(
            sampler=sampler_from_env(*sampler),
            propagation=Propagation(propagators),
            pipeline=pipeline,
            resource=Resource.create({"service.name": "orders"}),
            consumer_span_mode=mode,
        )
        instances = build(core, metrics)
        with pytest.MonkeyPatch.context() as building:
            if skim is False:
                building.setattr(FetchTracer, "skims_fetch_responses", lambda self: False)
            interceptors = Interceptors(instances)
        skim_on = interceptors.fetch_skim is not None
        assert skim is None or skim_on is skim, "the skim is on exactly when asked for"
        calls: list[str] = []
        skimmed: list[list[SkimmedFetch]] = []
        _spy(patch, calls, skimmed, skimmed_raises)
        names = TopicNames()
        names.update(topics or {})
        groups = GroupDirectory()
        exchanges: dict[str, KafkaExchange] = {}
        forwarded: list[tuple[bytes, bytes]] = []
        routes: list[tuple[str, ...]] = []
        random.seed(seed)
        for step in conversation.steps:
            exchange = exchanges.get(step.connection)
            if exchange is None:
                exchange = exchanges[step.connection] = KafkaExchange(
                    ConnectionContext(
                        len(exchanges) + 1,
                        ("127.0.0.1", 5000 + len(exchanges)),
                        BrokerEndpoint(1, "broker-1", 9092),
                    ),
                    brokers=BrokerDirectory("127.0.0.1", PortMapping(19000, {7: 20007})),
                    topics=names,
                    interceptors=interceptors,
                    groups=groups,
                    metrics=metrics,
                    max_frame_size=1 << 24,
                )
            del calls[:]
            sent = _deliver(exchange.from_client(step.request))
            answered = b"".join(_deliver(exchange.from_server(data)) for data in step.reads())
            forwarded.append((sent, answered))
            routes.append(tuple(calls))
        for exchange in exchanges.values():
            exchange.flush_metrics()
        connections = {
            name: (
                exchange.context.client_id,
                exchange.context.group_id,
                exchange.in_flight,
                exchange._holding_group_requests,
            )
            for name, exchange in exchanges.items()
        }
        return Run(
            forwarded,
            [span_fields(span) for span in pipeline.spans],
            list(metrics.samples()),
            connections,
            routes,
            skimmed,
            skim_on,
        )


def _spy(
    patch: pytest.MonkeyPatch,
    calls: list[str],
    skimmed: list[list[SkimmedFetch]],
    raises: bool,
) -> None:
    """Note which FetchTracer hooks each response reaches (with `raises`, `on_fetch_skimmed`
    fails after noting it)."""
    fetch_lane = FetchTracer.fetch_lane
    on_skimmed = FetchTracer.on_fetch_skimmed
    on_response = FetchTracer.on_fetch_response

    def lane(self: FetchTracer, versions: tuple[int, int]) -> Any:
        skim = fetch_lane(self, versions)

        def noted(frame: bytes | memoryview, version: int) -> Any:
            result = skim(frame, version)
            calls.append("declined" if result is None else "skim")
            return result

        return noted

    def on_fetch_skimmed(
        self: FetchTracer, ctx: ConnectionContext, partitions: list[SkimmedFetch]
    ) -> None:
        calls.append("skimmed")
        skimmed.append(list(partitions))
        if raises:
            raise RuntimeError("a tracer failing on a skimmed response")
        on_skimmed(self, ctx, partitions)

    def on_fetch_response(
        self: FetchTracer, ctx: ConnectionContext, fetched: FetchedPartition
    ) -> None:
        calls.append("response")
        on_response(self, ctx, fetched)

    patch.setattr(FetchTracer, "fetch_lane", lane)
    patch.setattr(FetchTracer, "on_fetch_skimmed", on_fetch_skimmed)
    patch.setattr(FetchTracer, "on_fetch_response", on_fetch_response)


def _deliver(outcome: Any) -> bytes:
    """What goes out for one read; then what runs once it went out (the hooks run there)."""
    sent = b"".join(bytes(piece) for piece in outcome.send)
    for action in outcome.after_send:
        action()
    return sent


def _large(response: bytes) -> bool:
    """Too large to be skimmed whole: the general path takes it at once."""
    return len(response) - 4 > SKIM_WHOLE_RESPONSES_UP_TO


def _check_routes(conversation: Conversation, run: Run) -> None:
    """With the skim, a clean response reaches only `on_fetch_skimmed` and a declined one
    `on_fetch_response`; without it, no response is skimmed."""
    for step, route in zip(conversation.steps, run.routes, strict=True):
        if step.skims is None:
            assert route == (), "only Fetch responses reach the FetchTracer"
        elif not run.skim_on:
            assert "skim" not in route and "declined" not in route and "skimmed" not in route
        elif step.decoded:
            assert "skim" not in route and "declined" not in route, "decoded, never skimmed"
            assert "skimmed" not in route
        elif _large(step.response):
            assert route == ("response",), "a large response is never skimmed whole"
        elif step.skims:
            assert route == ("skim", "skimmed"), "a clean response is only skimmed"
        else:
            assert route[0] == "declined" and "skimmed" not in route
            assert "response" in route, "a declined response takes the general path"


def _both(conversation: Conversation, **options: Any) -> tuple[Run, Run]:
    """The run with the skim and the run without it, checked equal."""
    on = _run(conversation, skim=True, **options)
    off = _run(conversation, skim=False, **options)
    assert on.forwarded == off.forwarded, "the same bytes go out"
    assert on.spans == off.spans, "the same spans, ids, parents and attributes"
    assert on.samples == off.samples, "the same counts"
    assert on.connections == off.connections, "the same groups and client ids learned"
    assert on == off
    _check_routes(conversation, on)
    _check_routes(conversation, off)
    return on, off


# -- (a) clean responses update the delivered offsets -----------------------------------------


@compiled
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("version", [4, 7, 11, 12])
def test_records_skimmed_earlier_mark_a_sampled_record_fetched_again_redelivered(
    version: int, twin: str
) -> None:
    """Forty clean responses go only through `on_fetch_skimmed`; a sampled record at an
    offset among them, fetched again, is marked redelivered with the skim as without it
    (which it only can be if the skim recorded the offsets); a new one is not."""
    talk = Conversation()
    talk.connect("consumer", "app-1")
    for n in range(40):
        bare = {5 * n + 1} if n % 4 == 0 else set()
        talk.fetch("consumer", version, [Part("orders", 0, _batch(5 * n, 5, bare=bare))])
    talk.fetch("consumer", version, [Part("orders", 0, _batch(10, 5, sampled={12}), clean=False)])
    # The highest offset skimmed, and the first one after it.
    talk.fetch("consumer", version, [Part("orders", 0, _batch(199, 1, sampled={199}), clean=False)])
    talk.fetch("consumer", version, [Part("orders", 0, _batch(200, 3, sampled={200}), clean=False)])
    on, off = _both(talk, twin=twin)
    assert on.span_offsets() == [
        ("receive orders", 12, True),
        ("receive orders", 199, True),
        ("receive orders", 200, False),
    ]
    assert on.routes[1:41] == [("skim", "skimmed")] * 40
    assert on.routes[41:] == [("declined", "response")] * 3
    assert off.routes[1:] == [("response",)] * 43
    assert on.skimmed[-1] == [("orders", 0, 199, 5)]
    # Every record but the three sampled ones is skimmed, on either path.
    assert on.traced("skimmed") == 200 + 5 + 1 + 3 - 3
    assert on.traced("context") == 3
    assert on.connections["consumer"][:3] == ("app-1", None, 0)


def test_the_redelivered_mark_needs_the_skimmed_offsets() -> None:
    """The control: with the skimmed figures dropped, the mark the general path gives is
    missing, so the equality above depends on them."""
    talk = Conversation()
    talk.connect("consumer", "app-1")
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(0, 10))])
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(4, 2, sampled={5}), clean=False)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FetchTracer, "on_fetch_skimmed", lambda self, ctx, partitions: None)
        dropped = _run(talk, skim=True)
    off = _run(talk, skim=False)
    assert off.span_offsets() == [("receive orders", 5, True)]
    assert dropped.span_offsets() == [("receive orders", 5, False)]
    assert dropped.spans != off.spans


@compiled
@pytest.mark.parametrize("twin", TWINS)
def test_responses_in_one_read_are_handed_on_in_their_order(twin: str) -> None:
    """A skimmed response and, in the same read, one with a sampled record it had already
    delivered: the skimmed offsets are recorded first, so the record is marked redelivered, as
    without the skim; in the other order it is not."""
    talk = Conversation()
    talk.connect("consumer", "app-1")
    talk.pipelined_fetches(
        "consumer",
        12,
        [
            [Part("orders", 0, _batch(0, 10))],
            [Part("orders", 0, _batch(4, 2, sampled={5}), clean=False)],
            [Part("orders", 0, _batch(10, 5))],
            [Part("orders", 0, _batch(12, 2, sampled={13}), clean=False)],
        ],
    )
    on = _run(talk, skim=True, twin=twin)
    off = _run(talk, skim=False, twin=twin)
    assert on == off
    assert on.span_offsets() == [("receive orders", 5, True), ("receive orders", 13, True)]
    skims_before_the_send = ("skim", "declined", "skim", "declined")
    handed_on_in_order = ("skimmed", "response", "skimmed", "response")
    assert on.routes[1] == (*skims_before_the_send, *handed_on_in_order)
    talk = Conversation()
    talk.connect("consumer", "app-1")
    talk.pipelined_fetches(
        "consumer",
        12,
        [
            [Part("orders", 0, _batch(4, 2, sampled={5}), clean=False)],
            [Part("orders", 0, _batch(0, 10))],
        ],
    )
    assert _run(talk, skim=True, twin=twin).span_offsets() == [("receive orders", 5, False)]


# -- (b) the consumer group, learned from another connection ----------------------------------


@compiled
@pytest.mark.parametrize("twin", TWINS)
def test_a_group_learned_from_another_connection_keys_the_skimmed_offsets(twin: str) -> None:
    """A consumer whose only responses are skimmed still learns its group from the JoinGroup
    on its client's coordinator connection: a record it had is redelivered to another member
    of the group (marked, with the group's name); a consumer of another group is not."""
    talk = Conversation()
    talk.connect("coordinator-1", "app-1")
    talk.join("coordinator-1", "billing")
    talk.connect("fetch-1", "app-1")
    for n in range(10):
        talk.fetch("fetch-1", 12, [Part("orders", 1, _batch(5 * n, 5))], reads=1)
    talk.connect("coordinator-2", "app-2")
    talk.join("coordinator-2", "billing")
    talk.connect("coordinator-3", "app-3")
    talk.join("coordinator-3", "audit")
    talk.connect("fetch-2", "app-2")
    talk.fetch("fetch-2", 12, [Part("orders", 1, _batch(20, 5, sampled={22}), clean=False)])
    talk.connect("fetch-3", "app-3")
    talk.fetch("fetch-3", 12, [Part("orders", 1, _batch(20, 5, sampled={23}), clean=False)])
    on, off = _both(talk, twin=twin)
    assert on.connections["fetch-1"] == ("app-1", "billing", 0, False)
    assert on.connections["fetch-2"] == ("app-2", "billing", 0, False)
    assert on.connections["fetch-3"] == ("app-3", "audit", 0, False)
    assert on.span_offsets() == [("receive orders", 22, True), ("receive orders", 23, False)]
    groups = [dict(span[7])["messaging.consumer.group.name"] for span in on.spans]
    assert groups == ["billing", "audit"]
    for run, route in ((on, ("skim", "skimmed")), (off, ("response",))):
        fetch_1 = [
            r for s, r in zip(talk.steps, run.routes, strict=True) if s.connection == "fetch-1"
        ]
        assert fetch_1 == [(), *[route] * 10]


def test_without_the_group_the_redelivery_to_another_member_goes_unmarked() -> None:
    """The control: with the group never learned on the skimmed connection (its client id
    keys the offsets), the other member's record is not marked, unlike without the skim."""
    talk = Conversation()
    talk.connect("coordinator-1", "app-1")
    talk.join("coordinator-1", "billing")
    talk.connect("fetch-1", "app-1")
    talk.fetch("fetch-1", 12, [Part("orders", 1, _batch(0, 10))])
    talk.connect("coordinator-2", "app-2")
    talk.join("coordinator-2", "billing")
    talk.connect("fetch-2", "app-2")
    talk.fetch("fetch-2", 12, [Part("orders", 1, _batch(4, 2, sampled={4}), clean=False)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KafkaExchange, "_learn_group", lambda self: None)
        forgetful = _run(talk, skim=True)
    off = _run(talk, skim=False)
    assert off.span_offsets() == [("receive orders", 4, True)]
    assert forgetful.span_offsets() == [("receive orders", 4, False)]


# -- (c) topics named by id -------------------------------------------------------------------


@compiled
@pytest.mark.parametrize("twin", TWINS)
def test_topics_named_by_id_are_skimmed_under_their_names_or_ids(twin: str) -> None:
    """From v13 on the skim hands over raw topic ids: a known one becomes its name (so a
    later fetch by name, v12, sees its offsets), an unknown one the id's text, as the general
    path names them."""
    talk = Conversation()
    talk.connect("consumer", "app-1")
    for n, version in enumerate(itertools.islice(itertools.cycle(range(13, 19)), 12)):
        talk.fetch(
            "consumer",
            version,
            [
                Part(KNOWN_ID, 0, _batch(4 * n, 4)),
                Part(UNKNOWN_ID, 1, _batch(3 * n, 3)),
                Part(KNOWN_ID, 2, None),
            ],
            reads=n % 3,
        )
    talk.fetch(
        "consumer",
        15,
        [
            Part(KNOWN_ID, 0, _batch(8, 2, sampled={9}), clean=False),
            Part(UNKNOWN_ID, 1, _batch(6, 2, sampled={6}), clean=False),
        ],
    )
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(40, 1, sampled={40}), clean=False)])
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(48, 1, sampled={48}), clean=False)])
    on, _ = _both(talk, twin=twin, topics={KNOWN_ID: "orders"})
    unknown = f"receive {UNKNOWN_ID}"
    assert on.span_offsets() == [
        ("receive orders", 9, True),
        (unknown, 6, True),
        ("receive orders", 40, True),
        ("receive orders", 48, False),
    ]
    assert on.skimmed[0] == [("orders", 0, 3, 4), (str(UNKNOWN_ID), 1, 2, 3)]
    assert on.skimmed[-1] == [("orders", 0, 47, 4), (str(UNKNOWN_ID), 1, 35, 3)]
    assert all(type(topic) is str for call in on.skimmed for topic, *_ in call)


# -- (d) responses the skim declines, mixed in ------------------------------------------------


def _mixed(seed: int, count: int) -> Conversation:
    """Fetches on two connections of one group, every version, one to three partitions each:
    mostly clean, some with a sampled record, compressed batches, aborted transactions
    (read_committed), transaction markers, partial trailing batches, unreadable records,
    records that are null or empty, errors, a non-ASCII topic name, node endpoints; offsets
    that go forwards and, often, back (redeliveries)."""
    rng = random.Random(seed)
    talk = Conversation(seed)
    talk.connect("coordinator", "app-1")
    talk.join("coordinator", "billing")
    for connection in ("fetch-1", "fetch-2"):
        talk.connect(connection, "app-1")
    next_offset: dict[tuple[Topic, int], int] = {}
    for _ in range(count):
        version = rng.randrange(4, 19)
        names: list[Topic] = [KNOWN_ID, UNKNOWN_ID] if version >= 13 else ["orders", "payments"]
        parts: list[Part] = []
        isolation = 0
        endpoints = version >= 16 and rng.random() < 0.08
        for index in rng.sample(range(4), rng.randrange(1, 4)):
            topic = names[index % 2]
            key = (topic if isinstance(topic, str) else "orders", index)
            start = next_offset.get(key, 0)
            if start and rng.random() < 0.3:
                start = rng.randrange(0, start)  # fetched again
            size = rng.randrange(1, 6)
            kind = rng.choices(
                [
                    "clean",
                    "sampled",
                    "compressed",
                    "aborted",
                    "marker",
                    "partial",
                    "garbage",
                    "none",
                    "empty",
                    "error",
                    "non-ascii",
                ],
                [30, 6, 4, 4, 3, 3, 1, 2, 2, 1, 1],
            )[0]
            records: bytes | None = _batch(start, size, bare={start} if size > 2 else ())
            clean = True
            aborted = None
            if kind == "sampled":
                records = _batch(start, size, sampled={start + size - 1})
                clean = False
            elif kind == "compressed":
                records = _batch(start, size, codec=rng.randrange(1, 5))
                clean = False
            elif kind == "aborted":
                records = _batch(start, size, producer_id=PRODUCER_ID, sampled={start})
                records += _control(start + size) + _batch(start + size + 1, 2)
                aborted = ((PRODUCER_ID, start),)
                isolation = 1
                size += 3
            elif kind == "marker":
                records = _batch(start, size, producer_id=PRODUCER_ID) + _control(start + size)
                size += 1
            elif kind == "partial":
                tail = _batch(start + size, 3, sampled={start + size})
                records += tail[: len(tail) // 2]
            elif kind == "garbage":
                records = b"\x00" * 12 + b"\xff" * 80
                clean = False
            elif kind in ("none", "empty"):
                records = None if kind == "none" else b""
                size = 0
            elif kind == "error":
                records, size = None, 0
            elif kind == "non-ascii" and version < 13:
                topic = "commandes-\u00e9"
                clean = False
            next_offset[key] = max(next_offset.get(key, 0), start + size)
            error = 6 if kind == "error" else 0
            parts.append(Part(topic, index, records, aborted, error, clean))
        connection = rng.choice(["fetch-1", "fetch-2"])
        talk.fetch(
            connection,
            version,
            parts,
            isolation=isolation,
            endpoints=endpoints,
            reads=rng.randrange(0, 3),
        )
    return talk


@compiled
def test_a_mixed_conversation_has_the_same_outcome_with_either_skim_twin() -> None:
    """Hundreds of responses, clean ones and all the kinds the skim declines, with
    redeliveries across two connections of one group: the same bytes, spans, marks and
    counts with the skim (compiled or Python twin) as without; each response took the route
    its content calls for, and both twins hand over the same figures."""
    talk = _mixed(seed=3, count=220)
    on, off = _both(talk, topics={KNOWN_ID: "orders"})
    python = _run(talk, skim=True, twin="python", topics={KNOWN_ID: "orders"})
    assert python == off
    assert python.routes == on.routes and python.skimmed == on.skimmed
    steps = talk.fetches()
    clean = sum(step.skims is True for step in steps)
    declined = sum(step.skims is False and not step.decoded for step in steps)
    decoded = sum(step.decoded for step in steps)
    assert clean > 100 and declined > 40 and decoded > 2, (clean, declined, decoded)
    assert len(on.skimmed) == clean
    marks = [redelivered for _, _, redelivered in on.span_offsets()]
    assert True in marks and False in marks, "spans with and without the redelivered mark"
    assert on.traced("skimmed") > 100
    assert on.counter("fetch_records_unreadable") > 0
    assert on.counter("interceptor_errors", hook="on_fetch_skimmed") == 0
    assert {c[1] for name, c in on.connections.items() if name.startswith("fetch")} == {"billing"}


@pytest.mark.parametrize("seed", [11, 12])
def test_mixed_conversations_at_every_sampling_ratio_match(seed: int) -> None:
    """The same at 100% and 0% root sampling (parent-based: records' own flags decide, so
    the skim is on either way), with the Python twin where the extension is not built."""
    talk = _mixed(seed=seed, count=60)
    twin = "compiled" if native.compiled is not None else "python"
    ratio = "1" if seed % 2 else "0"
    on, _ = _both(
        talk, twin=twin, topics={KNOWN_ID: "orders"}, sampler=("parentbased_traceidratio", ratio)
    )
    assert on.spans


# -- (e) which hooks a response reaches -------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
def test_only_declined_responses_reach_on_fetch_response(twin: str) -> None:
    """Step by step: clean responses (one with no records at all) are skimmed; a sampled
    record, a compressed batch, an aborted transaction and node endpoints take the general
    path, once per partition with records."""
    if twin == "compiled" and native.compiled is None:
        pytest.skip("extension not built")
    talk = Conversation()
    talk.connect("consumer", "app-1")
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(0, 4)), Part("orders", 1, _batch(0, 2))])
    talk.fetch("consumer", 12, [Part("orders", 0, None), Part("payments", 3, b"")])
    talk.fetch(
        "consumer",
        12,
        [Part("orders", 0, _batch(4, 2, sampled={5}), clean=False), Part("orders", 1, None)],
    )
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(6, 3, codec=3), clean=False)])
    talk.fetch(
        "consumer",
        12,
        [
            Part(
                "orders",
                1,
                _batch(2, 2, producer_id=PRODUCER_ID) + _control(4),
                aborted=((PRODUCER_ID, 2),),
            ),
            Part("orders", 0, _batch(9, 2)),
        ],
        isolation=1,
    )
    talk.fetch("consumer", 17, [Part(KNOWN_ID, 0, _batch(11, 2))], endpoints=True)
    talk.fetch("consumer", 17, [Part(KNOWN_ID, 0, _batch(13, 2))])
    on, off = _both(talk, twin=twin, topics={KNOWN_ID: "orders"})
    assert on.routes == [
        (),
        ("skim", "skimmed"),
        ("skim", "skimmed"),
        ("declined", "response"),
        ("declined", "response"),
        ("declined", "response", "response"),
        ("response",),
        ("skim", "skimmed"),
    ]
    assert off.routes == [
        (),
        ("response", "response"),
        (),
        ("response",),
        ("response",),
        ("response", "response"),
        ("response",),
        ("response",),
    ]
    assert on.skimmed == [[("orders", 0, 3, 4), ("orders", 1, 1, 2)], [], [("orders", 0, 14, 2)]]
    # The partition of the aborted transaction delivered offsets 2..4 to the general path.
    assert on.span_offsets() == [("receive orders", 5, False)]


# -- (f) configurations without the skim ------------------------------------------------------


class _Recorder:
    """A second fetch interceptor: notes the partitions it is shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, int, int]] = []

    def on_fetch_response(self, ctx: ConnectionContext, fetched: FetchedPartition) -> None:
        self.seen.append((fetched.topic, fetched.partition, len(fetched.records)))


class _Declining:
    """A skimming interceptor that says it cannot skim in its configuration."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def skims_fetch_responses(self) -> bool:
        return False

    def fetch_lane(self, versions: tuple[int, int]) -> Any:
        def skim(frame: bytes | memoryview, version: int) -> list[Any]:
            self.calls.append("skim")
            return []

        return skim

    def on_fetch_skimmed(self, ctx: ConnectionContext, partitions: list[SkimmedFetch]) -> None:
        self.calls.append("skimmed")

    def on_fetch_response(self, ctx: ConnectionContext, fetched: FetchedPartition) -> None:
        self.calls.append("response")


def _clean_talk() -> Conversation:
    talk = Conversation()
    talk.connect("consumer", "app-1")
    for n in range(6):
        talk.fetch("consumer", 12, [Part("orders", 0, _batch(3 * n, 3))])
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(4, 2, sampled={4}), clean=False)])
    return talk


@pytest.mark.parametrize(
    "config",
    [
        {"mode": "link"},
        {"propagators": ("tracecontext", "b3multi")},
        {"propagators": ("b3multi",)},
        {"sampler": ("traceidratio", "0.5")},
        {"sampler": ("always_on", "")},
    ],
    ids=["link-mode", "tracecontext-and-b3", "b3", "not-parent-based", "always-on"],
)
def test_a_tracer_that_cannot_skim_gets_no_skim(config: dict[str, Any]) -> None:
    """Link mode, other propagators or a sampler that is not parent-based: no skim, every
    response reaches `on_fetch_response`, the same as with the skim forced off."""
    talk = _clean_talk()
    probe = _run(talk, skim=None, **config)
    assert not probe.skim_on
    assert probe.routes[1:] == [("response",)] * 7
    assert probe.skimmed == []
    core = TracingCore(
        sampler=sampler_from_env(*config.get("sampler", ("parentbased_always_on", ""))),
        propagation=Propagation(config.get("propagators", ("tracecontext",))),
        pipeline=CollectedSpans(Metrics()),
        resource=Resource.create({}),
        consumer_span_mode=config.get("mode", "parent"),
    )
    assert Interceptors([FetchTracer(core, Metrics())]).fetch_skim is None


def test_two_fetch_interceptors_get_no_skim() -> None:
    """Next to another fetch interceptor, tracing's is shown every partition as before: the
    same spans and counts as the skim-off run, and the other one sees every partition."""
    recorders: list[_Recorder] = []

    def build(core: TracingCore, metrics: Metrics) -> list[object]:
        recorders.append(_Recorder())
        return [*_tracers(core, metrics), recorders[-1]]

    talk = _clean_talk()
    two = _run(talk, skim=None, build=build)
    assert not two.skim_on
    off = _run(talk, skim=False)
    assert (two.forwarded, two.spans, two.samples) == (off.forwarded, off.spans, off.samples)
    assert two.routes == off.routes
    assert [(topic, partition) for topic, partition, _ in recorders[0].seen] == [("orders", 0)] * 7
    metrics = Metrics()
    core = TracingCore(
        sampler=sampler_from_env("parentbased_always_on", None),
        propagation=Propagation(["tracecontext"]),
        pipeline=CollectedSpans(metrics),
        resource=Resource.create({}),
    )
    tracer = FetchTracer(core, metrics)
    assert Interceptors([tracer]).fetch_skim is tracer
    assert Interceptors([tracer, _Recorder()]).fetch_skim is None
    assert Interceptors([tracer, FetchTracer(core, metrics)]).fetch_skim is None


def test_an_interceptor_that_declines_to_skim_is_never_skimmed_for() -> None:
    """A skimming interceptor whose `skims_fetch_responses()` is False (and tracing next to
    it) gets every response through `on_fetch_response`, never a skim."""
    declining: list[_Declining] = []

    def alone(core: TracingCore, metrics: Metrics) -> list[object]:
        declining.append(_Declining())
        return [declining[-1]]

    talk = _clean_talk()
    run = _run(talk, skim=None, build=alone)
    assert isinstance(declining[0], SkimmingFetchInterceptor)
    assert not run.skim_on
    assert declining[0].calls == ["response"] * 7
    assert run.spans == []


# -- (g) a failing on_fetch_skimmed -----------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
def test_a_failing_on_fetch_skimmed_is_counted_and_the_connection_goes_on(twin: str) -> None:
    """Each skimmed response whose hook raises is counted under its hook's name; the bytes
    still go out as without the skim, later requests still pair, declined responses still
    get their spans."""
    if twin == "compiled" and native.compiled is None:
        pytest.skip("extension not built")
    talk = Conversation()
    talk.connect("consumer", "app-1")
    for n in range(5):
        talk.fetch("consumer", 12, [Part("orders", 0, _batch(2 * n, 2))], reads=n % 2)
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(10, 2, sampled={11}), clean=False)])
    talk.fetch("consumer", 16, [Part(KNOWN_ID, 1, _batch(0, 3))])
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(20, 1, sampled={20}), clean=False)])
    failing = _run(talk, skim=True, twin=twin, skimmed_raises=True)
    off = _run(talk, skim=False, twin=twin)
    assert failing.forwarded == off.forwarded
    assert failing.counter("interceptor_errors", hook="on_fetch_skimmed") == 6
    assert off.counter("interceptor_errors", hook="on_fetch_skimmed") == 0
    assert failing.routes[1:] == [("skim", "skimmed")] * 5 + [
        ("declined", "response"),
        ("skim", "skimmed"),
        ("declined", "response"),
    ]
    assert failing.connections == off.connections
    assert failing.connections["consumer"][2] == 0, "every response paired"
    assert failing.span_offsets() == [("receive orders", 11, False), ("receive orders", 20, False)]
    assert failing.traced("skimmed") == off.traced("skimmed") - 2 * 5 - 3
    assert _counts_without(failing, "interceptor_errors", "records_traced") == _counts_without(
        off, "interceptor_errors", "records_traced"
    )


def _counts_without(run: Run, *names: str) -> list[tuple[Any, ...]]:
    return [sample for sample in run.samples if sample[1] not in names]


# -- a divergence the skim brings -------------------------------------------------------------


def test_an_empty_topic_name_is_keyed_alike() -> None:
    """Offsets skimmed for a topic named '' count for a later sampled record of it, and the
    span names the topic as the response does."""
    talk = Conversation()
    talk.connect("consumer", "app-1")
    talk.fetch("consumer", 12, [Part("", 0, _batch(0, 5))])
    talk.fetch("consumer", 12, [Part("", 0, _batch(2, 1, sampled={2}), clean=False)])
    on, off = _both(talk)
    assert off.span_offsets() == [("receive ", 2, True)]
    assert on.span_offsets() == off.span_offsets()


@compiled
def test_a_large_response_goes_the_general_way_at_once() -> None:
    """A response above SKIM_WHOLE_RESPONSES_UP_TO, clean or not, is not skimmed whole (at the
    usual ratios it nearly always holds a sampled record, and the general path would skim it
    again); its outcome is the one without the skim, and a small one is still skimmed."""
    talk = Conversation()
    talk.connect("consumer", "app-1")
    many = SKIM_WHOLE_RESPONSES_UP_TO // 60
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(0, many))])
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(many, 5))])
    talk.fetch("consumer", 12, [Part("orders", 0, _batch(3, 1, sampled={3}), clean=False)])
    on, off = _both(talk)
    assert _large(talk.steps[1].response) and not _large(talk.steps[2].response)
    assert on.routes[1:] == [("response",), ("skim", "skimmed"), ("declined", "response")]
    assert off.routes[1:] == [("response",)] * 3
    assert on.span_offsets() == [("receive orders", 3, True)]
