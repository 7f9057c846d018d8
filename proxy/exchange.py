"""The Kafka logic of one relayed connection, with no I/O: bytes in, bytes out.

Rules this module enforces:
- Responses on a connection come back in request order, so every request is remembered (api key,
  version, correlation id) until its response arrives; a Produce with acks=0 gets no response and is
  skipped over. A response whose correlation id matches no outstanding request closes the
  connection.
- Only frames that need looking at are held whole: Produce requests (acks, and interceptors),
  ApiVersions (to advertise only versions the proxy can parse), group requests while the
  connection's group is unknown and tracing wants it, and responses that carry broker addresses or
  that an interceptor wants. Everything else is forwarded as the original bytes, without a copy.
- The per-frame part of that (framing, pairing, counting, and reading the acks of Produce
  requests no interceptor wants) is the pairing core's (`codec.pairing`, compiled when built);
  this module sees only the frames `hold_policy` names.
- When the only produce interceptor has a request lane (tracing's root contexts), the core runs
  Produce requests through it: a rebuilt request with nothing sampled goes out without reaching
  this module, which sees the others with what the lane made of them.
- Likewise, when the only fetch interceptor skims (tracing's sampled-context skim), the core
  runs Fetch responses through its fetch lane: one with no record to read goes out without
  reaching this module, which hands the interceptor the lane's figures once it was sent.
- A held frame nobody changed is forwarded as the original bytes too; only a frame with rewritten
  addresses, narrowed versions or injected headers is re-encoded.
- Interceptor hooks on responses run after the response was handed on (`Outcome.after_send`), so
  tracing adds no latency to the client; so does the bookkeeping of a request the lane rebuilt
  with sampled records (its spans' states), which only the request's response needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from kio.schema.errors import ErrorCode

from .brokers import BrokerDirectory, PortMappingError, TopicNames
from .codec.addresses import rewrite_broker_addresses, topic_ids_from_metadata
from .codec.api_versions import decodable_ranges, restrict_api_versions
from .codec.apis import ADDRESS_BEARING, GROUP_NAMING, KNOWN_API_KEYS, ApiKey, response_schema
from .codec.errors import ProtocolError
from .codec.fetch import FetchedRecords, iter_fetched_partitions, locate_fetched_partitions
from .codec.framing import SIZE_PREFIX
from .codec.framing import frame as frame_of
from .codec.guard import captured_uuid, program
from .codec.headers import parse_request_header
from .codec.messages import (
    decode_request,
    decode_response,
    replace_payload,
    response_top_level_tags,
)
from .codec.pairing import OTHER_API, HeldRequest, HeldResponse, HoldPolicy, pairing_core
from .codec.produce import (
    PartitionOutcome,
    iter_response_partitions,
    locate_request_partitions,
    locate_response_partitions,
    produce_acks,
    splice_located,
)
from .groups import GroupDirectory
from .interceptors import (
    ConnectionContext,
    FetchedPartition,
    Interceptors,
    ProduceInterceptor,
    ProducePartition,
    ProduceResult,
    RequestLaneInterceptor,
    SkimmedFetch,
    SkimmedPartition,
    SkimmingFetchInterceptor,
)
from .metrics import LATENCY_BUCKETS, BoundCounter, BoundHistogram, Metrics

log = logging.getLogger(__name__)

DECODABLE = decodable_ranges()
#: Every version an int16 can name.
ALL_VERSIONS = (-(1 << 15), (1 << 15) - 1)

#: Fetch responses carry KIP-951 node endpoints from this version on.
FETCH_NODE_ENDPOINTS_FROM = 16
#: Produce responses carry KIP-951 node endpoints from this version on.
PRODUCE_NODE_ENDPOINTS_FROM = 10
#: Fetch responses up to this size are skimmed whole first, by the core's fetch lane, when the
#: fetch interceptor can (`SkimmingFetchInterceptor`). A larger one nearly always holds a sampled
#: record at the usual ratios (a 1 MiB response of 1 KiB records at 1% has none once in 30,000),
#: so the general path would only skim it again: measured, that cost consume-1k a tenth more CPU
#: at 1%.
SKIM_WHOLE_RESPONSES_UP_TO = 64 * 1024
#: Requests and responses with at least this much still to come are read into place
#: (`request_buffer`, `response_buffer`): a read of the socket's then goes straight into the
#: frame, where it would be copied twice.
READ_IN_PLACE_FROM = 64 * 1024
#: Frames larger than this are joined from their pieces as before: reading in place allocates a
#: frame's whole size up front, so a peer announcing a frame of up to KTP_MAX_FRAME_BYTES (100 MiB
#: by default) and sending a few bytes would make the proxy set that much aside. Fetch responses
#: and Produce requests of the usual client settings (1 MiB a partition, 1 MB a request) are far
#: below it.
READ_IN_PLACE_UP_TO = 16 * 1024 * 1024


def _decodable(api_key: int, version: int) -> bool:
    limits = DECODABLE.get(api_key)
    return limits is not None and limits[0] <= version <= limits[1]


def error_name(code: int) -> str | None:
    """Kafka's name for an error code (`NOT_LEADER_OR_FOLLOWER`), None for no error."""
    if code == 0:
        return None
    try:
        return ErrorCode(code).name.upper()
    except ValueError:
        return f"UNKNOWN_ERROR_{code}"


@dataclass(frozen=True, slots=True)
class ApiMeters:
    """The per-API series the pairing core's counts are added to, bound once per connection."""

    requests: BoundCounter
    request_bytes: BoundCounter
    response_bytes: BoundCounter
    latency: BoundHistogram

    @classmethod
    def bind(cls, metrics: Metrics, api_key: int | str) -> ApiMeters:
        """The four series of one API key (or of "other") in `metrics`."""
        return cls(
            metrics.counter("requests", api_key=api_key),
            metrics.counter("request_bytes", api_key=api_key),
            metrics.counter("response_bytes", api_key=api_key),
            metrics.histogram("request_latency_seconds", api_key=api_key),
        )


#: (interceptor, (topic or topic id, partition), its state) for a traced partition.
ProduceState = tuple[ProduceInterceptor, tuple[Any, int], Any]


class Outcome:
    """What to send on, and what to run once it is sent (a plain class: one is made per read)."""

    __slots__ = ("after_send", "send")

    def __init__(self, send: list[bytes | memoryview] | None = None) -> None:
        self.send: list[bytes | memoryview] = [] if send is None else send
        self.after_send: list[Callable[[], None]] = []


def hold_policy(interceptors: Interceptors) -> HoldPolicy:
    """Which frames the exchange looks at: see the module's docstring. One policy per kind of
    interceptors, shared by every connection (building one imports the kio schemas of every
    Produce and Fetch version, about 0.2 s: `ProxyApp` does it at start)."""
    return _hold_policy(
        bool(interceptors.produce), bool(interceptors.fetch), interceptors.want_group_ids
    )


@cache
def _hold_policy(produce: bool, fetch: bool, want_group_ids: bool) -> HoldPolicy:
    requests: dict[int, tuple[int, int]] = {ApiKey.API_VERSIONS: ALL_VERSIONS}
    if produce:
        requests[ApiKey.PRODUCE] = ALL_VERSIONS
    if want_group_ids:
        requests.update((key, DECODABLE[key]) for key in GROUP_NAMING if key in DECODABLE)
    # Produce and Fetch responses carry node endpoints, in a top-level tagged field, from these
    # versions on: the core forwards those without any itself, after a walk. Those the exchange
    # takes anyway (for the interceptors) are walked too, so it can forward them at once.
    endpoints_from = {
        ApiKey.PRODUCE: PRODUCE_NODE_ENDPOINTS_FROM,
        ApiKey.FETCH: FETCH_NODE_ENDPOINTS_FROM,
    }
    # Produce responses only with attached state or node endpoints; Fetch responses all of
    # them when an interceptor reads them.
    handed_over = ADDRESS_BEARING - {ApiKey.PRODUCE} - (set() if fetch else {ApiKey.FETCH})
    responses = {key: DECODABLE[key] for key in handed_over if key in DECODABLE}
    responses[ApiKey.API_VERSIONS] = ALL_VERSIONS
    walks = {
        (key, version): (program(response_schema(key, version)), version >= first)
        for key, first in endpoints_from.items()
        for version in range(DECODABLE[key][0], DECODABLE[key][1] + 1)
    }
    return HoldPolicy(
        requests=requests,
        responses=responses,
        response_walks=walks,
        produce_acks=DECODABLE[ApiKey.PRODUCE],
        known_api_keys=KNOWN_API_KEYS,
        latency_buckets=LATENCY_BUCKETS,
    )


class KafkaExchange:
    """Protocol state of one client connection relayed to one upstream broker."""

    def __init__(
        self,
        context: ConnectionContext,
        *,
        brokers: BrokerDirectory,
        topics: TopicNames,
        interceptors: Interceptors,
        groups: GroupDirectory | None = None,
        metrics: Metrics,
        max_frame_size: int,
        max_batch_bytes: int = 1_048_588,
    ) -> None:
        self.context = context
        self._brokers = brokers
        self._topics = topics
        self._groups = groups or GroupDirectory()
        self._interceptors = interceptors
        self._metrics = metrics
        self._max_batch_bytes = max_batch_bytes
        self._rewritten_requests = metrics.counter("produce_requests_rewritten")
        #: Meters of the APIs seen on this connection. Keys Kafka does not define share one
        #: entry, labelled "other", so made-up keys grow neither this table nor the series.
        self._meters: dict[int, ApiMeters] = {}
        #: The framing, pairing and counting of every read (`codec.pairing`). The relay calls
        #: it directly for each read and comes here (`request_outcome`, `response_outcome`)
        #: only for what it holds: a Python call fewer on every read of a shared machine's cold
        #: caches.
        self.core = pairing_core(hold_policy(interceptors), max_frame_size)
        #: Where the rest of a large request (a Produce request of big batches, usually) or
        #: response (a Fetch response) being held may be read into in place, saving its copies;
        #: None when the next bytes are read as usual. Called before every read, so bound once.
        self.request_buffer: Callable[[], memoryview | None] = partial(
            self.core.request_buffer, READ_IN_PLACE_FROM, READ_IN_PLACE_UP_TO
        )
        self.response_buffer: Callable[[], memoryview | None] = partial(
            self.core.response_buffer, READ_IN_PLACE_FROM, READ_IN_PLACE_UP_TO
        )
        self._lane_owner = self._set_produce_lane(interceptors.lane, max_batch_bytes)
        #: What the core's fetch lane made of the Fetch responses it sent on (`_set_fetch_lane`),
        #: the core's own list: emptied here once they went out.
        self._fetch_skims: list[tuple[int, list[SkimmedPartition]]] = self.core.fetch_skims
        self._set_fetch_lane(interceptors.fetch_skim)
        self._holding_group_requests = interceptors.want_group_ids
        metrics.add_source(self)

    def _set_produce_lane(
        self, owner: RequestLaneInterceptor | None, max_batch_bytes: int
    ) -> RequestLaneInterceptor | None:
        """Give the core the produce interceptor's request lane, if it offers one."""
        if owner is None:
            return None
        versions = DECODABLE[ApiKey.PRODUCE]
        lane = owner.request_lane(max_batch_bytes, versions)
        if lane is None:
            return None
        self.core.set_produce_lane(lane, versions)
        return owner

    def _set_fetch_lane(self, skimming: SkimmingFetchInterceptor | None) -> None:
        """Give the core the skimming fetch interceptor's lane, if there is one: a Fetch
        response (up to SKIM_WHOLE_RESPONSES_UP_TO bytes) with nothing for it to read then goes
        out from the core without reaching this module, and the interceptor gets its figures
        once it was sent (`_hand_skimmed`)."""
        if skimming is None:
            return
        versions = DECODABLE[ApiKey.FETCH]
        self.core.set_fetch_lane(
            skimming.fetch_lane(versions), versions, SKIM_WHOLE_RESPONSES_UP_TO
        )

    @property
    def in_flight(self) -> int:
        """Requests forwarded whose responses have not come back yet."""
        return self.core.in_flight  # type: ignore[no-any-return]

    def flush_metrics(self) -> None:
        """Add the counts the pairing core kept since the last flush to the metrics."""
        for slot, (
            requests,
            request_bytes,
            response_bytes,
            latency,
            total,
        ) in self.core.take_stats():
            meters = self._meters.get(slot)
            if meters is None:
                label: int | str = slot if slot != OTHER_API else "other"
                meters = self._meters[slot] = ApiMeters.bind(self._metrics, label)
            if requests:
                meters.requests.inc(requests)
                meters.request_bytes.inc(request_bytes)
            if response_bytes:
                meters.response_bytes.inc(response_bytes)
            meters.latency.merge(latency, total)
        if self._lane_owner is not None:
            rewritten, records = self.core.take_lane_counts()
            if rewritten:
                self._rewritten_requests.inc(rewritten)
            if records:
                self._lane_owner.on_lane_records(records)

    def close(self) -> None:
        """The connection ended: its last counts go to the metrics, and a frame it held or was
        reading in place is let go at once (closed connections are freed by the cyclic
        collector, which may come much later)."""
        self.flush_metrics()
        self._metrics.remove_source(self)
        self.core.release()

    # -- client -> broker ------------------------------------------------------------------

    def from_client(self, data: bytes) -> Outcome:
        return self.request_outcome(*self.core.from_client(data))

    def from_client_filled(self, nbytes: int) -> Outcome:
        """`from_client` for `nbytes` read into the `request_buffer`."""
        return self.request_outcome(*self.core.request_filled(nbytes))

    def request_outcome(self, pieces: list[Any], held: int) -> Outcome:
        """What to send and run for the pieces of the core's `from_client` or `request_filled`:
        the forwarded frames as they are, the `held` ones as this module makes them."""
        if not held:
            return Outcome(pieces)
        outcome = Outcome()
        for piece in pieces:
            if type(piece) is tuple:
                self._on_request(piece, outcome)
            else:
                outcome.send.append(piece)
        return outcome

    def _on_request(self, held: HeldRequest, outcome: Outcome) -> None:
        seq, api_key, api_version, _, frame, lane = held
        if lane is not None:
            # A Produce request the lane rebuilt, with sampled records: it goes out first.
            sent, records, transactional_id, sampled = lane
            outcome.send.append(sent)
            if sent is not frame:
                self._rewritten_requests.inc()
            outcome.after_send.append(
                partial(
                    self._on_lane_request,
                    seq,
                    api_version,
                    frame,
                    records,
                    transactional_id,
                    sampled,
                    time.time_ns(),
                )
            )
            return
        body = memoryview(frame)[SIZE_PREFIX:]
        header = parse_request_header(body)
        if header.client_id is not None:
            self.context.client_id = header.client_id
        if header.size is None or not _decodable(api_key, api_version):
            # A version kio cannot parse: forward it and let the broker judge it.
            outcome.send.append(frame)
            return
        if api_key == ApiKey.PRODUCE:
            outcome.send.append(
                self._on_produce_request(seq, api_version, frame, body, header.size, outcome)
            )
            return
        if api_key in GROUP_NAMING:
            payload = decode_request(api_key, api_version, body, header.size)
            if payload.group_id:
                self.context.group_id = payload.group_id
                self._groups.learn(self.context.client_id, payload.group_id)
                self._stop_holding_group_requests()
        outcome.send.append(frame)

    def _stop_holding_group_requests(self) -> None:
        """The connection's group is known: its group requests need no more looking at."""
        if self._holding_group_requests:
            self._holding_group_requests = False
            for key in GROUP_NAMING:
                self.core.hold_requests(int(key), None)

    def _on_produce_request(
        self,
        seq: int,
        api_version: int,
        frame: bytes | memoryview,
        body: memoryview,
        header_size: int,
        outcome: Outcome,
    ) -> bytes | memoryview:
        acks = produce_acks(body, header_size, api_version)
        if acks == 0:
            self.core.forget(seq)
        if not self._interceptors.produce:
            return frame
        layout = locate_request_partitions(body, header_size, api_version)
        if layout is None:
            # The walk stops only where kio's decode refuses the request too: kio says why
            # (ProtocolError: the connection closes). Should kio ever read it, it goes on as sent.
            decode_request(ApiKey.PRODUCE, api_version, body, header_size)
            return frame
        replacements: dict[tuple[int, int], bytes] = {}
        states: list[ProduceState] = []
        for located in layout.partitions:
            if located.records is None:
                continue
            partition = ProducePartition(
                topic=located.topic or self._topics.name(located.topic_id),
                topic_id=located.topic_id,
                partition=located.partition,
                acks=acks,
                transactional_id=layout.transactional_id,
                records=located.records,
                max_batch_bytes=self._max_batch_bytes,
            )
            key = (located.topic_id or located.topic, located.partition)
            for interceptor in self._interceptors.produce:
                try:
                    state = interceptor.on_produce_request(self.context, partition)
                except Exception:
                    self._metrics.inc("interceptor_errors", hook="on_produce_request")
                    log.exception("interceptor failed on a produce request; records forwarded")
                    continue
                if state is not None:
                    states.append((interceptor, key, state))
            if partition.replaced_records is not None:
                replacements[(located.topic_index, located.partition_index)] = (
                    partition.replaced_records
                )
        self._keep_states(seq, acks, states, outcome)
        if not replacements:
            return frame
        self._rewritten_requests.inc()
        return splice_located(body, layout, api_version, replacements)

    def _keep_states(
        self, seq: int, acks: int, states: list[ProduceState], outcome: Outcome | None
    ) -> None:
        """The interceptors' states of a Produce request, for its response (none with acks=0:
        they learn the outcome is unknown once the request was sent: at once when it already
        was, `outcome` None)."""
        if not states:
            return
        if acks != 0:
            self.core.attach(seq, states)
        elif outcome is None:
            self._finish_produce(states, None)
        else:
            outcome.after_send.append(lambda: self._finish_produce(states, None))

    def _on_lane_request(
        self,
        seq: int,
        api_version: int,
        frame: bytes | bytearray,
        records: int,
        transactional_id: str | None,
        sampled: list[Any],
        start_ns: int,
    ) -> None:
        """After a request the lane rebuilt went out: the states of its partitions with sampled
        records, from the lane's owner, as `on_produce_request` would make them. Kept off the
        request's way to the broker, which a sampled record would otherwise wait on (~40 µs on
        cold caches, against ~7 for a request with none)."""
        owner = self._lane_owner
        assert owner is not None
        view = memoryview(frame)
        body = view[SIZE_PREFIX:]
        header = parse_request_header(body)
        if header.client_id is not None:
            self.context.client_id = header.client_id
        if header.size is None:  # the lane read this header: cannot happen
            return
        acks = produce_acks(body, header.size, api_version)
        if acks == 0:
            self.core.forget(seq)
        if records:
            owner.on_lane_records(records)
        states: list[ProduceState] = []
        for topic, partition_index, start, end, injected in sampled:
            topic_id = captured_uuid(topic) if type(topic) is bytes else None
            name = topic if type(topic) is str else None
            partition = ProducePartition(
                topic=name or self._topics.name(topic_id),
                topic_id=topic_id,
                partition=partition_index,
                acks=acks,
                transactional_id=transactional_id,
                records=view[start:end],
                max_batch_bytes=self._max_batch_bytes,
            )
            try:
                state = owner.on_lane_partition(self.context, partition, injected, start_ns)
            except Exception:
                self._metrics.inc("interceptor_errors", hook="on_produce_request")
                log.exception("interceptor failed on a produce request's sampled records")
                continue
            if state is not None:
                states.append((owner, (topic_id or name, partition_index), state))
        self._keep_states(seq, acks, states, None)

    # -- broker -> client ------------------------------------------------------------------

    def from_server(self, data: bytes) -> Outcome:
        return self.response_outcome(*self.core.from_server(data))

    def from_server_filled(self, nbytes: int) -> Outcome:
        """`from_server` for `nbytes` read into the `response_buffer`."""
        return self.response_outcome(*self.core.response_filled(nbytes))

    def response_outcome(self, pieces: list[Any], held: int) -> Outcome:
        """`request_outcome` for the core's `from_server` or `response_filled`; also needed
        while the core's fetch lane has sent responses the fetch interceptor has not heard of
        (`core.fetch_skims`), even with nothing held."""
        skims = self._fetch_skims
        if not held:
            outcome = Outcome(pieces)
        else:
            outcome = Outcome()
            for position, piece in enumerate(pieces):
                if skims and skims[0][0] == position:  # sent by the core's fetch lane
                    outcome.after_send.append(partial(self._hand_skimmed, [skims.pop(0)]))
                if type(piece) is tuple:
                    outcome.send.append(self._on_response(piece, outcome))
                else:
                    outcome.send.append(piece)
        if skims:  # with responses held, none are left: they were handed on in their order
            outcome.after_send.append(partial(self._hand_skimmed, skims.copy()))
            skims.clear()
        return outcome

    def _on_response(self, held: HeldResponse, outcome: Outcome) -> bytes | memoryview:
        key, version, _, states, frame, untagged = held
        body = memoryview(frame)[SIZE_PREFIX:]
        walked = False
        if key == ApiKey.PRODUCE or key == ApiKey.FETCH:
            tags = () if untagged else response_top_level_tags(key, version, body)
            if not tags:
                # No node endpoints (the usual case): nothing to rewrite, so the response goes
                # out as it came and is decoded for the interceptors only after it was sent.
                # (None, a walk that could not finish, is a body kio cannot read either.)
                hook = self._record_hook(key, states)
                if hook is not None and key == ApiKey.FETCH:
                    outcome.after_send.append(lambda: self._locate_fetched(version, body, hook))
                elif hook is not None:
                    outcome.after_send.append(
                        lambda: self._locate_produced(version, body, states, hook)
                    )
                return frame
            walked = True
        try:
            header_size, payload = self._decode_response(key, version, body, walked)
        except ProtocolError as exc:
            # The broker's answer is authoritative even when we cannot read it.
            self._metrics.inc("responses_undecodable", api_key=key)
            log.warning("forwarding a response the proxy cannot decode: %s", exc)
            hook = self._record_hook(key, states)
            if hook is not None:
                outcome.after_send.append(lambda: hook(None))
            return frame
        changed: Any = None
        if key == ApiKey.API_VERSIONS:
            changed = restrict_api_versions(payload, DECODABLE)
        elif key in ADDRESS_BEARING:
            if key == ApiKey.METADATA:
                self._topics.update(topic_ids_from_metadata(payload))
            try:
                changed = rewrite_broker_addresses(key, payload, self._brokers.map_address)
            except PortMappingError as exc:
                # Forwarding the real address would let the client bypass the proxy.
                raise ProtocolError(f"a broker cannot be given a local port: {exc}") from None
        hook = self._record_hook(key, states)
        if hook is not None:
            outcome.after_send.append(lambda: hook(payload))
        if changed is None:
            return frame
        self._metrics.inc("responses_rewritten", api_key=key)
        return frame_of(replace_payload(body, header_size, changed))

    def _record_hook(
        self, key: int, states: list[ProduceState] | None
    ) -> Callable[[Any], None] | None:
        """What the interceptors do with a Produce or Fetch response's payload (None: nothing).
        The hook gets None for a response that could not be read: Produce interceptors learn
        that their requests' outcome is unknown, Fetch interceptors are not called. (A
        Produce hook takes the partitions' outcomes too, as `_locate_produced` finds them.)"""
        if key == ApiKey.PRODUCE and states:
            return lambda payload: self._finish_produce(
                states, None if payload is None else iter_response_partitions(payload)
            )
        if key == ApiKey.FETCH and self._interceptors.fetch:
            return lambda payload: (
                None if payload is None else self._deliver_fetch(iter_fetched_partitions(payload))
            )
        return None

    def _locate_fetched(self, version: int, body: memoryview, hook: Callable[[Any], None]) -> None:
        """Hand an already forwarded Fetch response's records to the interceptors as views of
        the frame, found by the guard's walk; a response the walk cannot read is decoded. (With
        a skimming fetch interceptor, the core's fetch lane has already skimmed it whole and
        found something to read, or found it too large to try.)"""
        partitions = locate_fetched_partitions(body, version)
        if partitions is None:
            self._decode_for(ApiKey.FETCH, version, body, hook)
        else:
            self._deliver_fetch(partitions)

    def _locate_produced(
        self,
        version: int,
        body: memoryview,
        states: list[ProduceState],
        hook: Callable[[Any], None],
    ) -> None:
        """Hand an already forwarded Produce response's outcomes to the interceptors, found by
        the guard's walk; a response the walk cannot read is decoded (for `hook`)."""
        outcomes = locate_response_partitions(body, version)
        if outcomes is None:
            self._decode_for(ApiKey.PRODUCE, version, body, hook)
        else:
            self._finish_produce(states, outcomes)

    def hand_skimmed(self) -> None:
        """`_hand_skimmed` for every response the core's fetch lane has sent on: the relay's
        way once it sent a read's responses, none of them held (`response_outcome` is the
        other)."""
        skims = self._fetch_skims
        self._hand_skimmed(skims)
        skims.clear()

    def _hand_skimmed(self, skims: list[tuple[int, list[SkimmedPartition]]]) -> None:
        """The figures of Fetch responses the core's fetch lane sent on, nothing in them to
        read, to the skimming interceptor: topics by name (or their id's text when unknown)."""
        skimming = self._interceptors.fetch_skim
        assert skimming is not None  # only it sets the lane
        name_on_wire = self._topics.name_on_wire
        context = self.context
        for _, skimmed in skims:
            if context.group_id is None:
                self._learn_group()
            partitions: list[SkimmedFetch] = []
            for topic, partition, highest, count in skimmed:
                if type(topic) is bytes:
                    topic = name_on_wire(topic) or str(captured_uuid(topic))
                partitions.append((topic, partition, highest, count))
            try:
                skimming.on_fetch_skimmed(context, partitions)
            except Exception:
                self._metrics.inc("interceptor_errors", hook="on_fetch_skimmed")
                log.exception("interceptor failed on a skimmed fetch response")

    def _learn_group(self) -> None:
        """A consumer connection's group, once another connection of its client named it."""
        if self.context.group_id is None:
            self.context.group_id = self._groups.lookup(self.context.client_id)
            if self.context.group_id is not None:
                self._stop_holding_group_requests()

    def _decode_for(
        self, key: int, version: int, body: memoryview, hook: Callable[[Any], None]
    ) -> None:
        """Decode an already forwarded response for the interceptors (its array counts were
        checked by the walk that found no node endpoints in it)."""
        try:
            _, payload = decode_response(key, version, body, walked=True)
        except ProtocolError as exc:
            self._metrics.inc("responses_undecodable", api_key=key)
            log.warning("a forwarded response could not be decoded for tracing: %s", exc)
            payload = None
        hook(payload)

    @staticmethod
    def _decode_response(
        key: int, version: int, body: memoryview, walked: bool = False
    ) -> tuple[int, Any]:
        try:
            return decode_response(key, version, body, walked=walked)
        except ProtocolError:
            if key != ApiKey.API_VERSIONS or version == 0:
                raise
        # A broker that does not support the requested ApiVersions version answers in v0.
        return decode_response(key, 0, body)

    # -- interceptor delivery (after the bytes went out) -----------------------------------

    def _finish_produce(
        self, states: list[ProduceState], outcomes: Iterable[PartitionOutcome] | None
    ) -> None:
        """The interceptors' states with their partitions' outcomes (None: unknown)."""
        results: dict[tuple[Any, int], ProduceResult] = {}
        if outcomes is not None:
            for outcome in outcomes:
                topic = outcome.topic or self._topics.name(outcome.topic_id)
                results[(outcome.topic_id or outcome.topic, outcome.partition)] = ProduceResult(
                    topic=topic,
                    partition=outcome.partition,
                    error_code=outcome.error_code,
                    error_name=error_name(outcome.error_code),
                    base_offset=outcome.base_offset,
                    error_message=outcome.error_message,
                )
        for interceptor, key, state in states:
            try:
                interceptor.on_produce_response(self.context, state, results.get(key))
            except Exception:
                self._metrics.inc("interceptor_errors", hook="on_produce_response")
                log.exception("interceptor failed on a produce response")

    def _deliver_fetch(self, partitions: Iterable[FetchedRecords]) -> None:
        self._learn_group()
        for located in partitions:
            fetched = FetchedPartition(
                topic=(
                    located.topic
                    if located.topic is not None
                    else self._topics.name(located.topic_id)
                ),
                topic_id=located.topic_id,
                partition=located.partition,
                error_code=located.error_code,
                high_watermark=located.high_watermark,
                records=located.records,
                aborted_transactions=located.aborted_transactions,
            )
            for interceptor in self._interceptors.fetch:
                try:
                    interceptor.on_fetch_response(self.context, fetched)
                except Exception:
                    self._metrics.inc("interceptor_errors", hook="on_fetch_response")
                    log.exception("interceptor failed on a fetch response")
