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
- A held frame nobody changed is forwarded as the original bytes too; only a frame with rewritten
  addresses, narrowed versions or injected headers is re-encoded.
- Interceptor hooks on responses run after the response was handed on (`Outcome.after_send`), so
  tracing adds no latency to the client.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from .brokers import BrokerDirectory, PortMappingError, TopicNames
from .codec.addresses import rewrite_broker_addresses, topic_ids_from_metadata
from .codec.api_versions import decodable_ranges, restrict_api_versions
from .codec.apis import ADDRESS_BEARING, GROUP_NAMING, KNOWN_API_KEYS, ApiKey
from .codec.errors import ProtocolError
from .codec.fetch import FetchedRecords, iter_fetched_partitions, locate_fetched_partitions
from .codec.framing import FrameScanner, Held, frame
from .codec.headers import (
    REQUEST_PEEK_SIZE,
    RESPONSE_PEEK_SIZE,
    parse_request_header,
    peek_correlation_id,
    peek_request,
)
from .codec.messages import (
    decode_request,
    decode_response,
    replace_payload,
    response_top_level_tags,
)
from .codec.produce import (
    iter_response_partitions,
    locate_request_partitions,
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
)
from .metrics import BoundCounter, BoundHistogram, Metrics

log = logging.getLogger(__name__)

DECODABLE = decodable_ranges()
#: Where API keys Kafka does not define are metered (labelled api_key="other").
_OTHER_API = -1

#: Fetch responses carry KIP-951 node endpoints from this version on.
FETCH_NODE_ENDPOINTS_FROM = 16
#: Produce responses carry KIP-951 node endpoints from this version on.
PRODUCE_NODE_ENDPOINTS_FROM = 10


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
    """The per-API series every request and response updates, bound once per connection."""

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


class InFlight:
    """A request still waiting for its response (a plain class: one is made per request)."""

    __slots__ = (
        "api_key",
        "api_version",
        "correlation_id",
        "expects_response",
        "meters",
        "produce_states",
        "received_at",
    )

    def __init__(
        self,
        correlation_id: int,
        api_key: int,
        api_version: int,
        received_at: float,
        meters: ApiMeters,
    ) -> None:
        self.correlation_id = correlation_id
        self.api_key = api_key
        self.api_version = api_version
        self.received_at = received_at
        self.meters = meters
        self.expects_response = True
        #: The states of the traced partitions; None until an interceptor returns one.
        self.produce_states: list[ProduceState] | None = None


class Outcome:
    """What to send on, and what to run once it is sent (a plain class: one is made per read)."""

    __slots__ = ("after_send", "send")

    def __init__(self) -> None:
        self.send: list[bytes | memoryview] = []
        self.after_send: list[Callable[[], None]] = []


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
        self._inflight: deque[InFlight] = deque()
        self._rewritten_requests = metrics.counter("produce_requests_rewritten")
        #: Meters of the APIs seen on this connection. Keys Kafka does not define share one
        #: entry, labelled "other", so made-up keys grow neither this table nor the series.
        self._meters: dict[int, ApiMeters] = {}
        self._requests = FrameScanner(
            peek_size=REQUEST_PEEK_SIZE,
            max_frame_size=max_frame_size,
            classify=self._classify_request,
        )
        self._responses = FrameScanner(
            peek_size=RESPONSE_PEEK_SIZE,
            max_frame_size=max_frame_size,
            classify=self._classify_response,
        )

    @property
    def in_flight(self) -> int:
        """Requests forwarded whose responses have not come back yet."""
        return len(self._inflight)

    # -- client -> broker ------------------------------------------------------------------

    def from_client(self, data: bytes) -> Outcome:
        outcome = Outcome()
        for piece in self._requests.feed(data):
            if isinstance(piece, Held):
                self._on_request(piece.token, piece, outcome)
            else:
                outcome.send.append(piece.data)
        return outcome

    def _classify_request(self, peek: memoryview, size: int) -> InFlight | None:
        api_key, api_version, correlation_id = peek_request(peek)
        meters = self._meters.get(api_key) or self._bind_meters(api_key)
        entry = InFlight(correlation_id, api_key, api_version, time.monotonic(), meters)
        self._inflight.append(entry)
        meters.requests.inc()
        meters.request_bytes.inc(size + 4)
        if api_key == ApiKey.PRODUCE or api_key == ApiKey.API_VERSIONS:
            return entry
        if (
            api_key in GROUP_NAMING
            and self._interceptors.want_group_ids
            and self.context.group_id is None
            and _decodable(api_key, api_version)
        ):
            return entry
        return None

    def _bind_meters(self, api_key: int) -> ApiMeters:
        known = api_key in KNOWN_API_KEYS
        slot = api_key if known else _OTHER_API
        meters = self._meters.get(slot)
        if meters is None:
            label = api_key if known else "other"
            meters = self._meters[slot] = ApiMeters.bind(self._metrics, label)
        return meters

    def _on_request(self, entry: InFlight, held: Held, outcome: Outcome) -> None:
        body = held.body
        header = parse_request_header(body)
        if header.client_id is not None:
            self.context.client_id = header.client_id
        if header.size is None or not _decodable(entry.api_key, entry.api_version):
            # A version kio cannot parse: forward it and let the broker judge it.
            outcome.send.append(held.frame)
            return
        if entry.api_key == ApiKey.PRODUCE:
            outcome.send.append(self._on_produce_request(entry, held, body, header.size, outcome))
            return
        if entry.api_key in GROUP_NAMING:
            payload = decode_request(entry.api_key, entry.api_version, body, header.size)
            if payload.group_id:
                self.context.group_id = payload.group_id
                self._groups.learn(self.context.client_id, payload.group_id)
        outcome.send.append(held.frame)

    def _on_produce_request(
        self, entry: InFlight, held: Held, body: memoryview, header_size: int, outcome: Outcome
    ) -> bytes | memoryview:
        acks = produce_acks(body, header_size, entry.api_version)
        if acks == 0:
            self._forget(entry)
        if not self._interceptors.produce:
            return held.frame
        layout = locate_request_partitions(body, header_size, entry.api_version)
        if layout is None:
            # The walk stops only where kio's decode refuses the request too: kio says why
            # (ProtocolError: the connection closes). Should kio ever read it, it goes on as sent.
            decode_request(ApiKey.PRODUCE, entry.api_version, body, header_size)
            return held.frame
        replacements: dict[tuple[int, int], bytes] = {}
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
                    if entry.produce_states is None:
                        entry.produce_states = []
                    entry.produce_states.append((interceptor, key, state))
            if partition.replaced_records is not None:
                replacements[(located.topic_index, located.partition_index)] = (
                    partition.replaced_records
                )
        if acks == 0 and entry.produce_states:
            states = entry.produce_states
            outcome.after_send.append(lambda: self._finish_produce(states, None))
        if not replacements:
            return held.frame
        self._rewritten_requests.inc()
        return splice_located(body, layout, entry.api_version, replacements)

    def _forget(self, entry: InFlight) -> None:
        """Drop a request that gets no response (acks=0). Requests classified after it in the
        same read may already follow it in the queue, so search from the newest end."""
        entry.expects_response = False
        for index in range(len(self._inflight) - 1, -1, -1):
            if self._inflight[index] is entry:
                del self._inflight[index]
                return

    # -- broker -> client ------------------------------------------------------------------

    def from_server(self, data: bytes) -> Outcome:
        outcome = Outcome()
        for piece in self._responses.feed(data):
            if isinstance(piece, Held):
                outcome.send.append(self._on_response(piece.token, piece, outcome))
            else:
                outcome.send.append(piece.data)
        return outcome

    def _match(self, correlation_id: int) -> InFlight:
        while self._inflight and not self._inflight[0].expects_response:
            self._inflight.popleft()
        if not self._inflight:
            raise ProtocolError(f"response {correlation_id} arrived with no request outstanding")
        entry = self._inflight.popleft()
        if entry.correlation_id != correlation_id:
            raise ProtocolError(
                f"response {correlation_id} does not answer the oldest request "
                f"{entry.correlation_id} (api key {entry.api_key})"
            )
        entry.meters.latency.observe(time.monotonic() - entry.received_at)
        return entry

    def _classify_response(self, peek: memoryview, size: int) -> InFlight | None:
        entry = self._match(peek_correlation_id(peek))
        key, version = entry.api_key, entry.api_version
        entry.meters.response_bytes.inc(size + 4)
        if key == ApiKey.API_VERSIONS:
            return entry
        if not _decodable(key, version):
            return None
        if key == ApiKey.PRODUCE:
            wanted = entry.produce_states or version >= PRODUCE_NODE_ENDPOINTS_FROM
        elif key == ApiKey.FETCH:
            wanted = bool(self._interceptors.fetch) or version >= FETCH_NODE_ENDPOINTS_FROM
        else:
            wanted = key in ADDRESS_BEARING
        return entry if wanted else None

    def _on_response(self, entry: InFlight, held: Held, outcome: Outcome) -> bytes | memoryview:
        body = held.body
        key = entry.api_key
        walked = False
        if key == ApiKey.PRODUCE or key == ApiKey.FETCH:
            tags = response_top_level_tags(key, entry.api_version, body)
            if not tags:
                # No node endpoints (the usual case): nothing to rewrite, so the response goes
                # out as it came and is decoded for the interceptors only after it was sent.
                # (None, a walk that could not finish, is a body kio cannot read either.)
                hook = self._record_hook(entry)
                if hook is not None and key == ApiKey.FETCH:
                    outcome.after_send.append(lambda: self._locate_fetched(entry, body, hook))
                elif hook is not None:
                    outcome.after_send.append(lambda: self._decode_for(entry, body, hook))
                return held.frame
            walked = True
        try:
            header_size, payload, _version = self._decode_response(entry, body, walked)
        except ProtocolError as exc:
            # The broker's answer is authoritative even when we cannot read it.
            self._metrics.inc("responses_undecodable", api_key=entry.api_key)
            log.warning("forwarding a response the proxy cannot decode: %s", exc)
            hook = self._record_hook(entry)
            if hook is not None:
                outcome.after_send.append(lambda: hook(None))
            return held.frame
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
        hook = self._record_hook(entry)
        if hook is not None:
            outcome.after_send.append(lambda: hook(payload))
        if changed is None:
            return held.frame
        self._metrics.inc("responses_rewritten", api_key=key)
        return frame(replace_payload(body, header_size, changed))

    def _record_hook(self, entry: InFlight) -> Callable[[Any], None] | None:
        """What the interceptors do with a Produce or Fetch response's payload (None: nothing).
        The hook gets None for a response that could not be read: Produce interceptors learn
        that their requests' outcome is unknown, Fetch interceptors are not called."""
        if entry.api_key == ApiKey.PRODUCE and entry.produce_states:
            states = entry.produce_states
            return lambda payload: self._finish_produce(states, payload)
        if entry.api_key == ApiKey.FETCH and self._interceptors.fetch:
            return lambda payload: (
                None if payload is None else self._deliver_fetch(iter_fetched_partitions(payload))
            )
        return None

    def _locate_fetched(
        self, entry: InFlight, body: memoryview, hook: Callable[[Any], None]
    ) -> None:
        """Hand an already forwarded Fetch response's records to the interceptors as views of
        the frame, found by the guard's walk; a response the walk cannot read is decoded."""
        partitions = locate_fetched_partitions(body, entry.api_version)
        if partitions is None:
            self._decode_for(entry, body, hook)
        else:
            self._deliver_fetch(partitions)

    def _decode_for(self, entry: InFlight, body: memoryview, hook: Callable[[Any], None]) -> None:
        """Decode an already forwarded response for the interceptors (its array counts were
        checked by the walk that found no node endpoints in it)."""
        try:
            _, payload = decode_response(entry.api_key, entry.api_version, body, walked=True)
        except ProtocolError as exc:
            self._metrics.inc("responses_undecodable", api_key=entry.api_key)
            log.warning("a forwarded response could not be decoded for tracing: %s", exc)
            payload = None
        hook(payload)

    def _decode_response(
        self, entry: InFlight, body: memoryview, walked: bool = False
    ) -> tuple[int, Any, int]:
        try:
            header_size, payload = decode_response(
                entry.api_key, entry.api_version, body, walked=walked
            )
            return header_size, payload, entry.api_version
        except ProtocolError:
            if entry.api_key != ApiKey.API_VERSIONS or entry.api_version == 0:
                raise
        # A broker that does not support the requested ApiVersions version answers in v0.
        header_size, payload = decode_response(entry.api_key, 0, body)
        return header_size, payload, 0

    # -- interceptor delivery (after the bytes went out) -----------------------------------

    def _finish_produce(self, states: list[ProduceState], payload: Any) -> None:
        results: dict[tuple[Any, int], ProduceResult] = {}
        if payload is not None:
            for outcome in iter_response_partitions(payload):
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
        if self.context.group_id is None:
            self.context.group_id = self._groups.lookup(self.context.client_id)
        for located in partitions:
            fetched = FetchedPartition(
                topic=located.topic or self._topics.name(located.topic_id),
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
