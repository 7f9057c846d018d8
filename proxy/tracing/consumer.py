"""The consumer side: a `receive` span for each fetched record that carries a context.

Runs after the Fetch response was handed to the client, so it adds no latency; it only reads
(consumers verify CRCs, the bytes are never changed). Control batches, records of aborted
transactions (for read_committed fetches), partial trailing batches and legacy message formats are
skipped. A record at an offset the same group (or client) already received is marked redelivered.
With an OTLP exporter, a partition's spans are written in OTLP wire form by one compiled
call (`receive.receive_spans`); what it declines goes the general way below, through SDK spans.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache, partial

from opentelemetry.semconv._incubating.attributes import messaging_attributes as messaging
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.trace import Link, SpanKind

from ..codec.compression import CompressionError, decompress
from ..codec.fetch import layout_program
from ..codec.records import (
    CONTROL_FLAG,
    RECORDS_OFFSET,
    TRANSACTIONAL_FLAG,
    BatchHeader,
    BatchView,
    RecordBatchError,
    RecordView,
    iter_batch_headers,
)
from ..interceptors import ConnectionContext, FetchedPartition, SkimmedFetch, SkimmedPartition
from ..metrics import Metrics
from .core import TracingCore
from .otlp_encoding import EncodedSpans, SpanTemplate, span_template
from .receive import receive_spans
from .skim import (
    sampled_record_starts,
    skim_batches,
    skim_fetch_frame,
    skim_headers,
)
from .spans import SCOPE, finished_span, new_span_id, new_trace_id, printable_key

log = logging.getLogger(__name__)

AGE_ATTRIBUTE = "ktp.record.age_ms"
REDELIVERED_ATTRIBUTE = "ktp.redelivered"
#: Partitions whose delivered offsets are remembered, process-wide, oldest forgotten first.
MAX_TRACKED_PARTITIONS = 100_000
MAX_LINKS = 128
#: Span templates kept (one per topic partition and connection kind); emptied when full.
MAX_TEMPLATES = 4096


class DeliveredOffsets:
    """Highest offset delivered per (group, topic, partition), bounded in size."""

    def __init__(self, limit: int = MAX_TRACKED_PARTITIONS) -> None:
        self._high: collections.OrderedDict[tuple[str, str, int], int] = collections.OrderedDict()
        self._limit = limit

    def high(self, key: tuple[str, str, int]) -> int:
        return self._high.get(key, -1)

    def update(self, key: tuple[str, str, int], offset: int) -> None:
        if offset > self._high.get(key, -1):
            self._high[key] = offset
            self._high.move_to_end(key)
            if len(self._high) > self._limit:
                self._high.popitem(last=False)


def _visible_batches(fetched: FetchedPartition) -> list[BatchHeader]:
    """Data batches a consumer will see: no legacy or control batches, no aborted
    transactions."""
    aborted = sorted(fetched.aborted_transactions, key=lambda a: a[1])
    aborting: set[int] = set()
    visible = []
    for header in iter_batch_headers(fetched.records):
        if header.magic < 2:
            continue
        while aborted and aborted[0][1] <= header.base_offset:
            aborting.add(aborted.pop(0)[0])
        if header.attributes & CONTROL_FLAG:
            aborting.discard(header.producer_id)  # an abort marker ends that transaction
            continue
        if header.attributes & TRANSACTIONAL_FLAG and header.producer_id in aborting:
            continue
        visible.append(header)
    return visible


def _skim(fetched: FetchedPartition) -> tuple[list[RecordView], int, int]:
    """The records that may carry a sampled traceparent, the highest offset delivered, and how
    many records were passed over unparsed.

    Uncompressed batches are read in place, record by record up to their headers; compressed
    ones after decompressing. Usually nothing is parsed at all.
    """
    records = fetched.records
    if fetched.aborted_transactions:
        highest, record_count, wanted = skim_headers(records, _visible_batches(fetched))
    else:
        highest, record_count, wanted = skim_batches(records)
    view = memoryview(records)
    found: list[RecordView] = []
    for start, end, starts in wanted:
        batch = BatchView(view[start:end])
        if starts is None:  # compressed: find the records once they are unpacked
            body = batch.body()
            starts = sampled_record_starts(body, 0, len(body), batch.record_count)
            found += batch.records_at(memoryview(body), starts)
        else:
            found += batch.records_at(view[start + RECORDS_OFFSET : end], starts)
    return found, highest, record_count - len(found)


def _visible_records(fetched: FetchedPartition) -> Iterator[RecordView]:
    """Every record of the visible batches, parsed."""
    view = memoryview(fetched.records)
    for header in _visible_batches(fetched):
        yield from BatchView(view[header.start : header.end]).records()


def _receive_attributes(
    ctx: ConnectionContext, topic: str, partition: int
) -> dict[str, str | int | bool]:
    """The attributes every `receive` span of one fetched partition shares."""
    common: dict[str, str | int | bool] = {
        messaging.MESSAGING_SYSTEM: "kafka",
        messaging.MESSAGING_OPERATION_TYPE: "receive",
        messaging.MESSAGING_OPERATION_NAME: "poll",
        messaging.MESSAGING_DESTINATION_NAME: topic,
        messaging.MESSAGING_DESTINATION_PARTITION_ID: str(partition),
        server_attributes.SERVER_ADDRESS: ctx.broker.host,
        server_attributes.SERVER_PORT: ctx.broker.port,
    }
    if ctx.group_id:
        common[messaging.MESSAGING_CONSUMER_GROUP_NAME] = ctx.group_id
    if ctx.client_id:
        common[messaging.MESSAGING_CLIENT_ID] = ctx.client_id
    return common


class FetchTracer:
    """Fetch interceptor: extract record contexts and record `receive {topic}` spans."""

    def __init__(self, core: TracingCore, metrics: Metrics) -> None:
        self._core = core
        self._metrics = metrics
        self._delivered = DeliveredOffsets()
        # The series every traced response updates, bound once.
        traced = partial(metrics.counter, "records_traced", side="fetch")
        self._skimmed = traced(outcome="skimmed")
        self._with_context = traced(outcome="context")
        self._without_context = traced(outcome="no_context")
        #: Receive spans in wire form (`receive_spans`) where the exporter takes them.
        self._encodes = core.pipeline.takes_encoded_spans and self.skims_fetch_responses()
        self._templates: dict[tuple[object, ...], SpanTemplate] = {}

    def skims_fetch_responses(self) -> bool:
        """With W3C propagation, parent-based sampling and a span per record, only records with
        a sampled context get anything: the others are skimmed, never read."""
        core = self._core
        return (
            core.propagation.tracecontext_only
            and core.sampler.parent_based
            and core.consumer_span_mode == "parent"
        )

    @cache  # noqa: B019 - one per tracer and versions, shared by its connections
    def fetch_lane(
        self, versions: tuple[int, int]
    ) -> Callable[[bytes | memoryview, int], list[SkimmedPartition] | None]:
        """`skim_fetch_frame` with the layout programs of `versions`: one compiled call per
        response, made by the pairing core itself."""
        low, high = versions
        programs = {version: layout_program(version) for version in range(low, high + 1)}
        return partial(skim_fetch_frame, programs)

    def on_fetch_skimmed(self, ctx: ConnectionContext, partitions: list[SkimmedFetch]) -> None:
        """What `_trace` records for partitions whose skim found nothing to read: the highest
        offset delivered (for the redelivered mark) and the records skimmed."""
        owner = ctx.group_id or ctx.client_id or f"connection-{ctx.connection_id}"
        skimmed = 0
        for topic, partition, highest, count in partitions:
            self._delivered.update((owner, topic, partition), highest)
            skimmed += count
        if skimmed:
            self._skimmed.inc(skimmed)

    def on_fetch_response(self, ctx: ConnectionContext, fetched: FetchedPartition) -> None:
        try:
            self._trace(ctx, fetched)
        except (RecordBatchError, CompressionError) as exc:
            self._metrics.inc("fetch_records_unreadable")
            log.debug("cannot read fetched records of %s: %s", fetched.topic, exc)

    def _trace(self, ctx: ConnectionContext, fetched: FetchedPartition) -> None:
        core = self._core
        now_ns = time.time_ns()
        now_ms = now_ns // 1_000_000
        topic = fetched.topic if fetched.topic is not None else str(fetched.topic_id)
        owner = ctx.group_id or ctx.client_id or f"connection-{ctx.connection_id}"
        key = (owner, topic, fetched.partition)
        high = self._delivered.high(key)
        if (
            self._encodes
            and not fetched.aborted_transactions
            and self._receive_encoded(ctx, fetched, topic, key, high, now_ns, now_ms)
        ):
            return
        # Built with the first span: most responses at low sampling rates have none.
        common: dict[str, str | int | bool] | None = None
        name = f"receive {topic}"
        links: list[Link] = []
        highest = high
        with_context = without_context = 0
        # With W3C headers and parent-based sampling only records whose traceparent says
        # "sampled" get a span: a byte scan finds the few records that may carry one and only
        # those are parsed; the others are never decoded (the common case at low sampling rates).
        skim = self.skims_fetch_responses()
        skimmed = 0
        records: Iterable[RecordView]
        if skim:
            records, skim_highest, skimmed = _skim(fetched)
            highest = max(highest, skim_highest)
        else:
            records = _visible_records(fetched)
        for record in records:
            highest = max(highest, record.offset)
            context = core.propagation.extract(record.headers)
            if context is None:
                without_context += 1
                continue
            with_context += 1
            if not core.sampler.sample_child(context.trace_id, context.sampled):
                continue
            if core.consumer_span_mode == "link":
                if len(links) < MAX_LINKS:
                    links.append(Link(context.span_context()))
                continue
            if common is None:
                common = _receive_attributes(ctx, topic, fetched.partition)
            attributes = dict(common)
            attributes[messaging.MESSAGING_KAFKA_OFFSET] = record.offset
            attributes[AGE_ATTRIBUTE] = max(now_ms - record.timestamp, 0)
            if record.offset <= high:
                attributes[REDELIVERED_ATTRIBUTE] = True
            key_text = printable_key(record.key)
            if key_text is not None:
                attributes[messaging.MESSAGING_KAFKA_MESSAGE_KEY] = key_text
            core.pipeline.submit(
                finished_span(
                    name=name,
                    kind=SpanKind.CONSUMER,
                    trace_id=context.trace_id,
                    span_id=new_span_id(),
                    parent=context.span_context(),
                    start_ns=now_ns,
                    end_ns=time.time_ns(),
                    attributes=attributes,
                    resource=core.resource,
                )
            )
        if links:
            attributes = _receive_attributes(ctx, topic, fetched.partition)
            attributes[messaging.MESSAGING_BATCH_MESSAGE_COUNT] = len(links)
            core.pipeline.submit(
                finished_span(
                    name=name,
                    kind=SpanKind.CONSUMER,
                    trace_id=new_trace_id(),
                    span_id=new_span_id(),
                    parent=None,
                    start_ns=now_ns,
                    end_ns=time.time_ns(),
                    attributes=attributes,
                    resource=core.resource,
                    links=links,
                )
            )
        self._delivered.update(key, highest)
        self._count(skimmed, with_context, without_context)

    def _receive_encoded(
        self,
        ctx: ConnectionContext,
        fetched: FetchedPartition,
        topic: str,
        key: tuple[str, str, int],
        high: int,
        now_ns: int,
        now_ms: int,
    ) -> bool:
        """`_trace`'s work for the usual partition, in one call that writes the spans in wire
        form (`receive_spans`); False when it declines them, for the general way."""
        received = receive_spans(
            fetched.records,
            self._template(ctx, topic, fetched.partition),
            high,
            now_ns,
            time.time_ns(),
            now_ms,
            random.randbytes,
            printable_key,
            decompress,
        )
        if received is None:
            return False
        highest, record_count, with_context, without_context, fields, spans = received
        if spans:
            core = self._core
            core.pipeline.submit_encoded(EncodedSpans(core.resource, SCOPE, fields, spans))
        self._delivered.update(key, max(high, highest))
        self._count(record_count - with_context - without_context, with_context, without_context)
        return True

    def _template(self, ctx: ConnectionContext, topic: str, partition: int) -> SpanTemplate:
        """The wire form the receive spans of this partition share, made once per partition
        and what the connection tells about its consumer."""
        broker = ctx.broker
        identity = (topic, partition, broker.host, broker.port, ctx.group_id, ctx.client_id)
        template = self._templates.get(identity)
        if template is None:
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[identity] = span_template(
                f"receive {topic}",
                SpanKind.CONSUMER,
                _receive_attributes(ctx, topic, partition),
                messaging.MESSAGING_KAFKA_OFFSET,
                AGE_ATTRIBUTE,
                messaging.MESSAGING_KAFKA_MESSAGE_KEY,
                REDELIVERED_ATTRIBUTE,
            )
        return template

    def _count(self, skimmed: int, with_context: int, without_context: int) -> None:
        if skimmed:
            self._skimmed.inc(skimmed)
        if with_context:
            self._with_context.inc(with_context)
        if without_context:
            self._without_context.inc(without_context)
