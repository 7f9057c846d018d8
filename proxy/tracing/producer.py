"""The producer side: give every produced record a creation context and a `send` span.

For each record of a Produce request: a record that already carries a context (the application is
instrumented) keeps its headers untouched and the proxy's span becomes a child of that context;
any other record gets a new context written into its headers, sampled or not, so the consumer side
honours the same decision. Only sampled records get span objects, built when the broker answers.
A partition that is one uncompressed batch of records without headers, the usual case, takes a
one-call fast path (`roots`); with W3C propagation, a whole request of such partitions does too,
in the pairing core (`request_lane`), and reaches Python only when one of its records is sampled.
With an OTLP exporter, the send spans are written in OTLP wire form (`SendTemplate`) rather
than built as SDK spans and encoded later.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

import crc32c
from opentelemetry.semconv._incubating.attributes import messaging_attributes as messaging
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanContext, SpanKind

from ..codec.produce import layout_programs
from ..codec.records import BatchView, EncodedHeaders, RecordView
from ..interceptors import (
    BatchInjection,
    ConnectionContext,
    LaneResult,
    ProducePartition,
    ProduceResult,
)
from ..metrics import Metrics
from .core import TracingCore
from .otlp_encoding import (
    EncodedSpans,
    attribute_fields,
    int_attribute,
    key_field,
    parent_span_id,
    span_field,
    span_head,
    span_ids,
    span_tail,
    span_times,
    str_attribute,
)
from .roots import Injected, inject_request_roots, inject_roots
from .spans import SCOPE, finished_span, new_span_id, new_trace_id, printable_key
from .traceparent import new_root_traceparents

log = logging.getLogger(__name__)

#: Send-span templates kept (one per topic partition, client and outcome); emptied when full.
MAX_TEMPLATES = 4096
_INT64_MAX = (1 << 63) - 1


@dataclass(slots=True)
class PendingSend:
    trace_id: int
    span_id: int
    parent: SpanContext | None
    offset_delta: int
    key: str | None


@dataclass(frozen=True, slots=True)
class SendTemplate:
    """What the send spans of one topic partition share, in OTLP wire form (see
    `otlp_encoding.span_template`): name and kind, the common attributes, and the status and
    flags of a span whose parent is local (or that has none) and of one whose parent is
    remote."""

    head: bytes
    common: bytes
    local_tail: bytes
    remote_tail: bytes


@dataclass(slots=True)
class PendingPartition:
    topic: str
    partition: int
    start_ns: int
    sends: list[PendingSend]


class ProduceTracer:
    """Produce interceptor: inject context, then record `send {topic}` spans."""

    def __init__(self, core: TracingCore, metrics: Metrics) -> None:
        self._core = core
        self._metrics = metrics
        self._warned: set[str] = set()
        #: The sampler's bound for roots in hex form, derived once (it never changes).
        self._root_threshold = core.sampler.root_hex_threshold
        # The series every traced request updates, bound once.
        traced = partial(metrics.counter, "records_traced", side="produce")
        self._app_context = traced(outcome="app_context")
        self._unsampled = traced(outcome="unsampled")
        self._invalid_context = traced(outcome="invalid_context")
        self._sampled = traced(outcome="sampled")
        #: Send spans in wire form where the exporter takes them (`_encoded_sends`).
        self._encodes = core.pipeline.takes_encoded_spans
        self._templates: dict[tuple[object, ...], SendTemplate] = {}
        self._key_field = key_field(messaging.MESSAGING_KAFKA_MESSAGE_KEY)
        self._offset_field = key_field(messaging.MESSAGING_KAFKA_OFFSET)

    def request_lane(
        self, max_batch_bytes: int, versions: tuple[int, int]
    ) -> Callable[[bytes | memoryview, int], LaneResult | None] | None:
        """Whole requests given root contexts in one call (`roots.inject_request_roots`); only
        with W3C propagation alone, as `on_produce_request`'s fast path."""
        if not self._core.propagation.tracecontext_only:
            return None
        return self._lane(max_batch_bytes, versions)

    @cache  # noqa: B019 - one per tracer and batch limit, shared by its connections
    def _lane(
        self, max_batch_bytes: int, versions: tuple[int, int]
    ) -> Callable[[bytes | memoryview, int], LaneResult | None]:
        return partial(
            inject_request_roots,
            layout_programs(versions),
            random.randbytes,
            self._root_threshold,
            crc32c.crc32c,
            max_batch_bytes,
        )

    def on_lane_records(self, count: int) -> None:
        self._unsampled.inc(count)

    def on_lane_partition(
        self,
        ctx: ConnectionContext,
        partition: ProducePartition,
        injected: Injected,
        start_ns: int,
    ) -> PendingPartition | None:
        return self._roots_injected(partition, injected, start_ns)

    def on_produce_request(
        self, ctx: ConnectionContext, partition: ProducePartition
    ) -> PendingPartition | None:
        core = self._core
        start_ns = time.time_ns()
        if core.propagation.tracecontext_only and partition.replaced_records is None:
            injected = inject_roots(
                partition.records,
                random.randbytes,
                self._root_threshold,
                crc32c.crc32c,
                partition.max_batch_bytes,
            )
            if injected is not None:
                return self._roots_injected(partition, injected, start_ns)
        injection = _RequestInjection(core, self._root_threshold)
        bulk = injection if core.propagation.tracecontext_only else None
        outcomes = partition.inject(injection, bulk)
        kept_sends = self._sends_that_went_out(outcomes, injection.sends)
        metrics = self._metrics
        for outcome in outcomes:
            if outcome.skipped in ("too_large", "unparsed_records"):
                metrics.inc("header_injections_skipped", reason=outcome.skipped)
                metrics.inc("records_traced", outcome.calls, side="produce", outcome="skipped")
                self._warn_once(outcome.skipped, partition)
        if injection.kept:
            self._app_context.inc(injection.kept)
        if injection.unsampled:
            self._unsampled.inc(injection.unsampled)
        if injection.invalid:
            self._invalid_context.inc(injection.invalid)
        if kept_sends:
            self._sampled.inc(len(kept_sends))
        if not kept_sends:
            return None
        topic = partition.topic or str(partition.topic_id)
        return PendingPartition(topic, partition.partition, start_ns, kept_sends)

    def _roots_injected(
        self, partition: ProducePartition, injected: Injected, start_ns: int
    ) -> PendingPartition | None:
        """The fast path's outcome, as the general path would report it: every record got a
        new root context; the sampled ones will have spans."""
        rebuilt, count, sampled = injected
        partition.replaced_records = rebuilt
        if len(sampled) < count:
            self._unsampled.inc(count - len(sampled))
        if not sampled:
            return None
        self._sampled.inc(len(sampled))
        sends = [
            PendingSend(trace_id, span_id, None, offset, printable_key(key))
            for _, trace_id, span_id, _, offset, key in sampled
        ]
        topic = partition.topic or str(partition.topic_id)
        return PendingPartition(topic, partition.partition, start_ns, sends)

    @staticmethod
    def _sends_that_went_out(
        outcomes: list[BatchInjection], sends: list[tuple[int, PendingSend]]
    ) -> list[PendingSend]:
        """Pending spans of records whose batch really carries the headers, with offsets made
        relative to the partition's first record in the request."""
        kept: list[PendingSend] = []
        position = first_call = 0
        for outcome in outcomes:
            last_call = first_call + outcome.calls
            while position < len(sends) and sends[position][0] < last_call:
                send = sends[position][1]
                position += 1
                if outcome.skipped in (None, "nothing_to_add"):
                    send.offset_delta += outcome.first_offset
                    kept.append(send)
            first_call = last_call
        return kept

    def _warn_once(self, reason: str, partition: ProducePartition) -> None:
        if reason in self._warned:
            return
        self._warned.add(reason)
        if reason == "too_large":
            log.warning(
                "a batch for %s-%d would exceed %d bytes with trace headers; forwarded without "
                "them (counted in ktp_header_injections_skipped_total; raise "
                "KTP_MAX_BATCH_BYTES if the topic's max.message.bytes allows)",
                partition.topic,
                partition.partition,
                partition.max_batch_bytes,
            )
        else:
            log.warning(
                "records of %s-%d are not whole batches; forwarded without trace headers",
                partition.topic,
                partition.partition,
            )

    def on_produce_response(
        self, ctx: ConnectionContext, state: PendingPartition | None, result: ProduceResult | None
    ) -> None:
        if state is None:
            return
        end_ns = time.time_ns()
        core = self._core
        error = None
        if result is not None and result.error_code:
            error = result.error_name or str(result.error_code)
        base_offset = result.base_offset if result is not None and not error else -1
        if self._encodes:
            fields = self._encoded_sends(ctx, state, error, base_offset, end_ns)
            if fields is not None:
                spans = EncodedSpans(core.resource, SCOPE, fields, len(state.sends))
                core.pipeline.submit_encoded(spans)
                return
        common = _send_attributes(ctx, state, error)
        name = f"send {state.topic}"
        for send in state.sends:
            attributes = dict(common)
            if send.key is not None:
                attributes[messaging.MESSAGING_KAFKA_MESSAGE_KEY] = send.key
            if base_offset >= 0:
                attributes[messaging.MESSAGING_KAFKA_OFFSET] = base_offset + send.offset_delta
            core.pipeline.submit(
                finished_span(
                    name=name,
                    kind=SpanKind.PRODUCER,
                    trace_id=send.trace_id,
                    span_id=send.span_id,
                    parent=send.parent,
                    start_ns=state.start_ns,
                    end_ns=end_ns,
                    attributes=attributes,
                    resource=core.resource,
                    error=error,
                )
            )

    def _encoded_sends(
        self,
        ctx: ConnectionContext,
        state: PendingPartition,
        error: str | None,
        base_offset: int,
        end_ns: int,
    ) -> bytes | None:
        """The send spans of `state` as `ScopeSpans.spans` fields: byte for byte what the export
        encoder writes for the spans the loop above makes. None (the loop's way) for an offset
        beyond int64, which the encoder would leave out and log."""
        if not 0 < state.start_ns <= _INT64_MAX or end_ns > _INT64_MAX:
            return None
        template = self._template(ctx, state, error)
        times = span_times(state.start_ns, max(end_ns, state.start_ns))
        head = template.head + times + template.common
        key_field_, offset_field = self._key_field, self._offset_field
        fields = []
        for send in state.sends:
            parent = send.parent
            if parent is None:
                parts = [span_ids(send.trace_id, send.span_id), head]
                tail = template.local_tail
            else:
                parts = [
                    span_ids(send.trace_id, send.span_id),
                    parent_span_id(parent.span_id),
                    head,
                ]
                tail = template.remote_tail if parent.is_remote else template.local_tail
            if send.key is not None:
                parts.append(str_attribute(key_field_, send.key.encode()))
            if base_offset >= 0:
                offset = base_offset + send.offset_delta
                if not -_INT64_MAX - 1 <= offset <= _INT64_MAX:
                    return None
                parts.append(int_attribute(offset_field, offset))
            parts.append(tail)
            fields.append(span_field(b"".join(parts)))
        return b"".join(fields)

    def _template(
        self, ctx: ConnectionContext, state: PendingPartition, error: str | None
    ) -> SendTemplate:
        """The wire form the send spans of this partition share, made once per partition,
        client and outcome."""
        broker = ctx.broker
        identity = (state.topic, state.partition, broker.host, broker.port, ctx.client_id, error)
        template = self._templates.get(identity)
        if template is None:
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[identity] = SendTemplate(
                head=span_head(f"send {state.topic}", SpanKind.PRODUCER),
                common=attribute_fields(_send_attributes(ctx, state, error)),
                local_tail=span_tail(error, remote_parent=False),
                remote_tail=span_tail(error, remote_parent=True),
            )
        return template


def _send_attributes(
    ctx: ConnectionContext, state: PendingPartition, error: str | None
) -> dict[str, str | int | bool]:
    """The attributes every `send` span of one partition's answer shares."""
    common: dict[str, str | int | bool] = {
        messaging.MESSAGING_SYSTEM: "kafka",
        messaging.MESSAGING_OPERATION_TYPE: "send",
        messaging.MESSAGING_OPERATION_NAME: "send",
        messaging.MESSAGING_DESTINATION_NAME: state.topic,
        messaging.MESSAGING_DESTINATION_PARTITION_ID: str(state.partition),
        server_attributes.SERVER_ADDRESS: ctx.broker.host,
        server_attributes.SERVER_PORT: ctx.broker.port,
    }
    if ctx.client_id:
        common[messaging.MESSAGING_CLIENT_ID] = ctx.client_id
    if error:
        common[error_attributes.ERROR_TYPE] = error
    return common


class _RequestInjection:
    """Header decisions for one partition of one Produce request, record by record or, for
    batches of records without headers, a whole batch at once (`BulkHeaderSource`).

    Every call of either kind gets consecutive indices, so `sends` can be matched to the
    batches `inject` reports.
    """

    def __init__(self, core: TracingCore, root_threshold: bytes | None) -> None:
        self._sampler = core.sampler
        self._propagation = core.propagation
        self._threshold = root_threshold
        #: (index of the header-source call, pending span) for sampled records, in call order.
        self.sends: list[tuple[int, PendingSend]] = []
        self.calls = self.kept = self.unsampled = self.invalid = 0
        #: (index in batch, trace id, span id) of the sampled records of the current batch.
        self._sampled: list[tuple[int, int, int]] = []

    def __call__(self, record: RecordView) -> EncodedHeaders | tuple[()]:
        """The per-record path: records that may already carry a context."""
        index = self.calls
        self.calls += 1
        propagation = self._propagation
        headers = record.headers
        existing = propagation.extract(headers) if headers else None
        if existing is None and headers and propagation.carries_context(headers):
            # A trace header we cannot read: never add a second, conflicting one.
            self.invalid += 1
            return ()
        if existing is not None:
            self.kept += 1
            if self._sampler.sample_child(existing.trace_id, existing.sampled):
                self.sends.append(
                    (
                        index,
                        PendingSend(
                            existing.trace_id,
                            new_span_id(),
                            existing.span_context(),
                            record.offset,
                            printable_key(record.key),
                        ),
                    )
                )
            return ()
        trace_id, span_id = new_trace_id(), new_span_id()
        if self._sampler.sample_root(trace_id):
            self.sends.append(
                (
                    index,
                    PendingSend(trace_id, span_id, None, record.offset, printable_key(record.key)),
                )
            )
            return propagation.inject_encoded(trace_id, span_id, True)
        self.unsampled += 1
        return propagation.inject_encoded(trace_id, span_id, False)

    def headers(self, batch: BatchView) -> tuple[list[bytes], list[int]] | None:
        """A new root traceparent for every record of the batch (W3C propagation only); the
        sampled records are the ones to see again, for their offsets and keys."""
        count = batch.record_count
        if count <= 0:
            return None
        encoded, self._sampled = new_root_traceparents(count, self._threshold)
        return encoded, [index for index, _, _ in self._sampled]

    def added(self, batch: BatchView, records: list[RecordView]) -> None:
        base = self.calls
        self.calls += batch.record_count
        self.unsampled += batch.record_count - len(records)
        for (index, trace_id, span_id), record in zip(self._sampled, records, strict=True):
            key = printable_key(record.key)
            self.sends.append(
                (base + index, PendingSend(trace_id, span_id, None, record.offset, key))
            )

    def skipped(self, batch: BatchView) -> None:
        """Too large for headers: the batch's records count as seen, none will have a span."""
        self.calls += batch.record_count
        self._sampled = []

    def rejected(self, batch: BatchView) -> None:
        """The batch's records have headers: the per-record path decides for them."""
        self._sampled = []
