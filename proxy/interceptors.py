"""The interface tracing (or any other add-on) plugs into.

An interceptor is any object with some of the hook methods below; the framework only decodes the
messages some interceptor has a hook for, so an add-on that ignores fetches costs nothing on the
fetch path. Hooks see typed record views and a per-connection context, never raw frames. A produce
hook may add headers to records; the framework re-encodes only the batches that changed and
forwards everything else as the original bytes. An exception in a hook is logged and counted, and
the traffic it was looking at is forwarded unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .codec.compression import Codec
from .codec.records import (
    BatchView,
    EncodedHeaders,
    RecordView,
    add_headers,
    append_header_to_each,
    iter_batches,
)

#: For one record, the headers to append to it (may be empty), as pairs or already encoded.
HeaderSource = Callable[[RecordView], Sequence[tuple[str, bytes]] | EncodedHeaders]


class BulkHeaderSource(Protocol):
    """One header for every record of a batch at once: the fast path of `inject`.

    `headers` gives one header in wire form per record and the indices of records it wants to
    see (or None to use the per-record source for this batch). If they went in, `added` gets
    those records; if the batch does not suit the fast path (a record already has headers),
    `rejected` is called and the per-record source sees the batch's records instead.
    """

    def headers(self, batch: BatchView) -> tuple[Sequence[bytes], Sequence[int]] | None: ...

    def added(self, batch: BatchView, records: list[RecordView]) -> None: ...

    def rejected(self, batch: BatchView) -> None: ...

    def skipped(self, batch: BatchView) -> None:
        """The batch stays as it was (too large with the headers): its records got none."""


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """The real broker a connection is relayed to; node id -1 for a bootstrap connection."""

    node_id: int
    host: str
    port: int


@dataclass(slots=True)
class ConnectionContext:
    """What is known about one client connection; updated as the proxy learns more."""

    connection_id: int
    client_address: tuple[str, int]
    broker: BrokerEndpoint
    client_id: str | None = None
    #: The consumer group named in this connection's group requests, once seen.
    group_id: str | None = None
    #: Free space for interceptors to keep per-connection state in, keyed by their own name.
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ProducePartition:
    """The records of one partition of a Produce request, open for adding headers."""

    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    acks: int
    transactional_id: str | None
    records: bytes | memoryview
    #: Set by `inject` when a batch was re-encoded; the framework sends these bytes instead.
    replaced_records: bytes | None = None
    max_batch_bytes: int = 1_048_588

    def batches(self) -> Iterator[BatchView]:
        return iter_batches(self.replaced_records or self.records)

    def inject(
        self, headers_for: HeaderSource, bulk: BulkHeaderSource | None = None
    ) -> list[BatchInjection]:
        """Append headers to records, batch by batch, and say what happened to each batch.

        With a `bulk` source, batches whose records have no headers yet get one header each
        without per-record calls; `calls` of such a batch is its record count.

        A batch that would grow past the broker's size limit is kept as it was rather than
        turned into a produce failure; so are all batches when the records field holds bytes
        that are not whole batches (never risk dropping them).
        """
        source = self.replaced_records or self.records
        pieces: list[bytes | memoryview] = []
        outcomes: list[BatchInjection] = []
        calls = 0

        def counted(record: RecordView) -> Sequence[tuple[str, bytes]] | EncodedHeaders:
            nonlocal calls
            calls += 1
            return headers_for(record)

        consumed = first_offset = 0
        for batch in iter_batches(source):
            original = batch.raw
            consumed += len(original)
            calls = 0
            rebuilt = None
            reason = None
            if (
                bulk is not None
                and batch.record_count_is_possible()
                and (planned := bulk.headers(batch)) is not None
            ):
                if _surely_too_large(batch, planned[0], self.max_batch_bytes):
                    # Known before any work: the batch goes on untouched (librdkafka's
                    # default batches of ~1 MB, uncompressed, end up here).
                    bulk.skipped(batch)
                    reason, calls = "too_large", batch.record_count
                elif (appended := append_header_to_each(batch, *planned)) is None:
                    bulk.rejected(batch)
                else:
                    rebuilt, wanted_records = appended
                    bulk.added(batch, wanted_records)
                    calls = batch.record_count
            if reason is None:
                if rebuilt is None:
                    rebuilt = add_headers(batch, counted)
                if rebuilt is None:
                    reason = "nothing_to_add"
                elif len(rebuilt) > self.max_batch_bytes:
                    reason, rebuilt = "too_large", None
            pieces.append(original if rebuilt is None else rebuilt)
            outcomes.append(BatchInjection(batch.record_count, first_offset, reason, calls))
            first_offset += batch.last_offset_delta + 1
        if consumed != len(source):
            if not outcomes:
                return [BatchInjection(0, 0, "unparsed_records", 0)]
            return [
                BatchInjection(o.records, o.first_offset, "unparsed_records", o.calls)
                for o in outcomes
            ]
        if any(o.written for o in outcomes):
            self.replaced_records = b"".join(pieces)
        return outcomes


def _surely_too_large(batch: BatchView, encoded: Sequence[bytes], limit: int) -> bool:
    """An uncompressed batch grows by at least the headers added to it."""
    if batch.compression != Codec.NONE:
        return False  # compression may still bring it under the limit
    return len(batch.raw) + sum(map(len, encoded)) > limit


@dataclass(frozen=True, slots=True)
class BatchInjection:
    """What `ProducePartition.inject` did to one batch."""

    records: int
    #: Offset of the batch's first record, counted from the partition's first record in this
    #: request (the broker assigns consecutive offsets from the response's base offset).
    first_offset: int
    #: Why no headers were written (too_large, nothing_to_add, unparsed_records); None if written.
    skipped: str | None
    #: How many times the header source was called for this batch's records.
    calls: int

    @property
    def written(self) -> bool:
        return self.skipped is None


@dataclass(frozen=True, slots=True)
class ProduceResult:
    """The broker's answer for one partition of a Produce request."""

    topic: str | None
    partition: int
    error_code: int
    error_name: str | None
    base_offset: int
    error_message: str | None


@dataclass(frozen=True, slots=True)
class FetchedPartition:
    """The records of one partition of a Fetch response; read-only (consumers check CRCs)."""

    topic: str | None
    topic_id: uuid.UUID | None
    partition: int
    error_code: int
    high_watermark: int
    records: bytes | memoryview
    #: (producer id, first offset) of aborted transactions, for read_committed consumers.
    aborted_transactions: tuple[tuple[int, int], ...]

    def batches(self) -> Iterator[BatchView]:
        return iter_batches(self.records)


@runtime_checkable
class ProduceInterceptor(Protocol):
    def on_produce_request(self, ctx: ConnectionContext, partition: ProducePartition) -> Any:
        """A Produce request's partition is about to be forwarded. The return value is handed
        back to `on_produce_response` for the same partition; None means the answer is of no
        interest (then `on_produce_response` is not called, and the response is not decoded)."""

    def on_produce_response(
        self, ctx: ConnectionContext, state: Any, result: ProduceResult | None
    ) -> None:
        """The broker answered for a partition; `result` is None for acks=0, called once the
        request was written upstream (no response will come)."""


#: What a request lane made of a Produce request: (the frame to send, the records it passed on
#: with nothing more to do, the transactional id, and for each partition with more to do (topic
#: name, or raw topic id from v13 on, partition, start and end of its original records in the
#: frame, the lane's own result for it)).
LaneResult = tuple[
    bytes | memoryview, int, str | None, list[tuple[str | bytes, int, int, int, Any]]
]


@runtime_checkable
class RequestLaneInterceptor(ProduceInterceptor, Protocol):
    """A produce interceptor whose work on a plain Produce request can be done whole, in one
    compiled call, before any Python runs for the request (tracing's root contexts). The
    framework uses the lane when this is the only produce interceptor; requests the lane
    declines still go to `on_produce_request`."""

    def request_lane(
        self, max_batch_bytes: int, versions: tuple[int, int]
    ) -> Callable[[bytes | memoryview, int], LaneResult | None] | None:
        """The lane for Produce requests of `versions`, (frame, version) -> result or None
        (see `tracing.roots.inject_request_roots`); None: no lane in this configuration."""

    def on_lane_partition(
        self, ctx: ConnectionContext, partition: ProducePartition, injected: Any, start_ns: int
    ) -> Any:
        """The lane rebuilt a partition that has sampled records (`injected` is what it made
        of them), and the request went out; `start_ns` is when it was read. Returns the state
        for `on_produce_response`, as `on_produce_request` does."""

    def on_lane_records(self, count: int) -> None:
        """`count` records went out through the lane with nothing more to do (counted in bulk,
        when the metrics are read)."""


@runtime_checkable
class FetchInterceptor(Protocol):
    def on_fetch_response(self, ctx: ConnectionContext, fetched: FetchedPartition) -> None:
        """A Fetch response's partition was forwarded to the client (it already has the bytes)."""


#: A Fetch response's partition as the skim finds it, with nothing to read: (topic name, or the
#: raw 16-byte topic id from v13 on, partition, highest offset of its data batches or -1, how
#: many records they hold).
SkimmedPartition = tuple[str | bytes, int, int, int]
#: The same, as the interceptor gets it: the topic by name (or its id's text when unknown).
SkimmedFetch = tuple[str, int, int, int]


@runtime_checkable
class SkimmingFetchInterceptor(FetchInterceptor, Protocol):
    """A fetch interceptor with nothing to do for records without a sampled context (tracing
    with W3C propagation and parent-based sampling): the framework runs its `fetch_lane` on a
    Fetch response before sending it and, when no record may carry such a context, sends it at
    once and hands the interceptor only the figures of each partition. It uses that when this
    is the only fetch interceptor; responses with something to read still go to
    `on_fetch_response`."""

    def skims_fetch_responses(self) -> bool:
        """Whether, in this configuration, records without a sampled context need nothing."""

    def fetch_lane(
        self, versions: tuple[int, int]
    ) -> Callable[[bytes | memoryview, int], list[SkimmedPartition] | None]:
        """The lane for Fetch responses of `versions` (the framework gives it those up to a
        size): (frame, version) -> per partition (topic name, or raw topic id from v13 on,
        partition, highest offset, record count) when no record needs reading; None when some
        does, or for anything unusual (it must never raise). It runs before the response is
        sent (see `tracing.skim.skim_fetch_frame`)."""

    def on_fetch_skimmed(self, ctx: ConnectionContext, partitions: list[SkimmedFetch]) -> None:
        """A Fetch response was forwarded and no record of it may carry a sampled context."""


class Interceptors:
    """The registered interceptors, grouped by the hooks they implement."""

    def __init__(self, interceptors: Sequence[object] = ()) -> None:
        self.produce: list[ProduceInterceptor] = [
            i for i in interceptors if isinstance(i, ProduceInterceptor)
        ]
        self.fetch: list[FetchInterceptor] = [
            i for i in interceptors if isinstance(i, FetchInterceptor)
        ]
        self.want_group_ids = bool(self.produce or self.fetch)
        #: The produce interceptor whose lane the framework runs: the only one, if it has one.
        self.lane: RequestLaneInterceptor | None = (
            self.produce[0]
            if len(self.produce) == 1 and isinstance(self.produce[0], RequestLaneInterceptor)
            else None
        )
        #: The fetch interceptor the framework skims whole responses for: the only one, if it
        #: can take them.
        self.fetch_skim: SkimmingFetchInterceptor | None = (
            self.fetch[0]
            if len(self.fetch) == 1
            and isinstance(self.fetch[0], SkimmingFetchInterceptor)
            and self.fetch[0].skims_fetch_responses()
            else None
        )
