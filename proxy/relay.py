"""Relaying one client connection to one broker connection with asyncio Protocols.

The only module that moves bytes: `data_received` hands bytes to the connection's `KafkaExchange`
and writes what it returns to the other side. Flow control is TCP back-pressure, never a queue: when
one side's unsent bytes pass the high-water mark, the proxy stops reading from the other side until
they drain, and it stops reading requests from a client with too many responses outstanding.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from .brokers import BrokerDirectory, TopicNames
from .codec.errors import ProtocolError
from .config import HostPort, Settings
from .dialing import describe, dial
from .exchange import KafkaExchange
from .groups import GroupDirectory
from .interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from .metrics import Metrics

log = logging.getLogger(__name__)
#: What `_InPlaceReads` reads into should a frame end before its read (uvloop's read size).
READ_SIZE = 256 * 1024

_connection_ids = itertools.count(1)


@dataclass
class Runtime:
    """Process-wide state every relayed connection shares."""

    settings: Settings
    brokers: BrokerDirectory
    topics: TopicNames
    groups: GroupDirectory
    interceptors: Interceptors
    metrics: Metrics
    connections: set[ClientConnection]
    #: TLS towards the brokers (None: plaintext).
    upstream_ssl: ssl.SSLContext | None = None
    #: TLS towards clients (None: plaintext).
    listen_ssl: ssl.SSLContext | None = None
    #: Where an in-place read goes should its frame have ended, copied out at once: one for
    #: every connection, as the event loop reads one connection at a time.
    read_view: memoryview = field(default_factory=lambda: memoryview(bytearray(READ_SIZE)))


class _Pauser:
    """Pauses a transport's reading while any reason to pause remains."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reasons: set[str] = set()
        #: Whether any reason remains (a plain attribute: every response asks).
        self.paused = False

    def pause(self, reason: str) -> None:
        if not self._reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._reasons.add(reason)
        self.paused = True

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        self.paused = bool(self._reasons)
        if not self._reasons and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def switch(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the transport's reads to `protocol`, restarting them unless paused: uvloop picks
        its read path (bytes for `data_received`, or the protocol's buffer) when reading starts."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.set_protocol(protocol)
        if not self._reasons:
            transport.pause_reading()
            transport.resume_reading()


class _InPlaceReads(asyncio.BufferedProtocol):
    """A connection's protocol while the rest of a large frame comes: the event loop reads
    straight into the frame (`reserve`'s view) and `filled` hands each read to the exchange; once
    the frame is whole, the connection's own protocol takes the reads back. Its other callbacks go
    to that protocol."""

    def __init__(
        self,
        own: asyncio.Protocol,
        reading: _Pauser,
        reserve: Callable[[], memoryview | None],
        filled: Callable[[int], None],
        scratch: memoryview,
    ) -> None:
        self._own = own
        self._reading = reading
        self._reserve = reserve
        self._filled = filled
        self._scratch = scratch
        self._left = 0  # bytes of the frame still to read into the view last given

    def take_over(self) -> None:
        """Take the reads over: the exchange has the rest of a large frame reserved."""
        self._reading.switch(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._reserve()
        self._left = 0 if view is None else len(view)
        return self._scratch if view is None else view  # None: the frame ended, read as usual

    def buffer_updated(self, nbytes: int) -> None:
        if not self._left:
            self._reading.switch(self._own)
            self._own.data_received(bytes(self._scratch[:nbytes]))
            return
        self._left -= nbytes
        self._filled(nbytes)
        if not self._left:
            self._reading.switch(self._own)

    def pause_writing(self) -> None:
        self._own.pause_writing()

    def resume_writing(self) -> None:
        self._own.resume_writing()

    def eof_received(self) -> bool | None:
        return self._own.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._own.connection_lost(exc)


class ClientConnection(asyncio.Protocol):
    """A client's connection to a proxy listener, and the broker connection behind it.

    Both sides are read as bytes (`data_received`) until a large request or response is coming:
    its rest is then read straight into the frame the exchange assembles (`_InPlaceReads`; no copy
    of its own, where reads as bytes would be copied into bytes objects and then into the joined
    frame), and the reads go back to bytes once it is whole.
    """

    # Set once the connection relays (`_attach_server`), and read only while it does: where the
    # exchange would have the rest of a large request or response read, and the protocols each
    # side's transport reads through while it comes.
    _request_buffer: Callable[[], memoryview | None]
    _response_buffer: Callable[[], memoryview | None]
    _client_in_place: _InPlaceReads
    _server_in_place: _InPlaceReads

    def __init__(
        self,
        runtime: Runtime,
        node_id: int,
        upstream_targets: Callable[[], Sequence[HostPort]],
    ) -> None:
        self._runtime = runtime
        self._node_id = node_id
        self._targets = upstream_targets
        self._client: asyncio.Transport | None = None
        self._server: asyncio.Transport | None = None
        self._client_reading = _Pauser()
        self._server_reading = _Pauser()
        self._exchange: KafkaExchange | None = None
        #: The exchange's pairing core while the connection relays (None before and after).
        self._core: Any = None
        self._connect_task: asyncio.Task[None] | None = None
        self._closed = False
        self._early: list[bytes] = []
        self.id = next(_connection_ids)
        self._max_in_flight = runtime.settings.max_in_flight
        # Bytes moved since the metrics last asked (plain ints on the hot path, added to the
        # registry's counters in flush_metrics).
        self._from_client = self._to_server = self._from_server = self._to_client = 0
        bytes_counter = runtime.metrics.counter
        self._bytes_counters = (
            bytes_counter("bytes", direction="client_to_proxy"),
            bytes_counter("bytes", direction="proxy_to_server"),
            bytes_counter("bytes", direction="server_to_proxy"),
            bytes_counter("bytes", direction="proxy_to_client"),
        )

    # -- client side -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        settings = self._runtime.settings
        self._client = transport
        self._client_reading.transport = transport
        transport.set_write_buffer_limits(high=settings.buffer_high_water_bytes)
        self._client_reading.pause("connecting")
        self._runtime.connections.add(self)
        self._runtime.metrics.add_source(self)
        self._runtime.metrics.add("connections_open", 1)
        self._runtime.metrics.inc("connections_accepted", listener=self._listener_label)
        self._connect_task = asyncio.get_running_loop().create_task(self._connect_upstream())

    @property
    def in_flight(self) -> int:
        """Requests forwarded on this connection still waiting for their response."""
        return self._exchange.in_flight if self._exchange is not None else 0

    @property
    def _listener_label(self) -> str:
        return "bootstrap" if self._node_id < 0 else f"broker-{self._node_id}"

    async def _connect_upstream(self) -> None:
        timeout = self._runtime.settings.connect_timeout_ms / 1000
        errors = []
        for target in self._targets():
            try:
                transport, _ = await asyncio.wait_for(
                    dial(
                        lambda: ServerConnection(self),
                        target.host,
                        target.port,
                        self._runtime.upstream_ssl,
                    ),
                    timeout,
                )
            except (OSError, TimeoutError) as exc:
                errors.append(f"{target}: {describe(exc)}")
                continue
            if self._closed:
                transport.close()
                return
            self._attach_server(transport, target)
            return
        self._runtime.metrics.inc("upstream_connect_errors", listener=self._listener_label)
        log.warning(
            "connection %d: cannot reach any upstream for %s (%s); closing the client",
            self.id,
            self._listener_label,
            "; ".join(errors) or "no address known",
        )
        self.close()

    def _attach_server(self, transport: asyncio.BaseTransport, target: HostPort) -> None:
        transport = cast(asyncio.Transport, transport)
        assert self._client is not None
        runtime = self._runtime
        self._server = transport
        self._server_reading.transport = transport
        transport.set_write_buffer_limits(high=runtime.settings.buffer_high_water_bytes)
        peer = self._client.get_extra_info("peername") or ("?", 0)
        context = ConnectionContext(
            connection_id=self.id,
            client_address=(str(peer[0]), int(peer[1])),
            broker=BrokerEndpoint(self._node_id, target.host, target.port),
        )
        self._exchange = KafkaExchange(
            context,
            brokers=runtime.brokers,
            topics=runtime.topics,
            groups=runtime.groups,
            interceptors=runtime.interceptors,
            metrics=runtime.metrics,
            max_frame_size=runtime.settings.max_frame_bytes,
            max_batch_bytes=runtime.settings.max_batch_bytes,
        )
        self._request_buffer = self._exchange.request_buffer
        self._response_buffer = self._exchange.response_buffer
        self._client_in_place = _InPlaceReads(
            self,
            self._client_reading,
            self._exchange.request_buffer,
            self._client_filled,
            runtime.read_view,
        )
        self._server_in_place = _InPlaceReads(
            cast(asyncio.Protocol, transport.get_protocol()),
            self._server_reading,
            self._exchange.response_buffer,
            self._server_filled,
            runtime.read_view,
        )
        self._core = self._exchange.core
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        self._client_reading.resume("connecting")

    # The usual read (a whole frame or more, none held) is handled by the methods below with
    # the pairing core alone: each Python call on this path costs about a microsecond on the
    # cold caches of a machine the proxy shares with the broker and the clients, and a read the
    # proxy has to wait for runs on such caches. The exchange sees only the frames it holds.

    def data_received(self, data: bytes) -> None:
        core = self._core
        if core is None:
            self._read_while_not_relaying(data)
            return
        self._from_client += len(data)
        self._requests_out(core, core.from_client, data)
        if self._request_buffer() is not None:  # a large request is coming: read it in place
            self._client_in_place.take_over()

    def _read_while_not_relaying(self, data: bytes) -> None:
        if self._closed:
            return
        # Reading is paused until the broker connection is up, but an event loop may already
        # have read the first bytes (uvloop does): keep them for later.
        self._early.append(data)

    def _client_filled(self, nbytes: int) -> None:
        core = self._core
        if core is not None:
            self._from_client += nbytes
            self._requests_out(core, core.request_filled, nbytes)

    def _requests_out(self, core: Any, take: Callable[[Any], Any], read: Any) -> None:
        """Give the core what the client sent (`take(read)`), send on the requests it passes
        (the held ones as the exchange made them), and stop reading the client while too many
        wait for their responses."""
        try:
            pieces, held = take(read)
        except Exception as exc:
            self._fail(exc, "client")
            return
        if not held:
            server = self._server
            assert server is not None  # a typed narrowing; cast() would be a call per read
            self._to_server += self._send(server, pieces)
        elif not self._requests_held(pieces, held):
            return
        if core.in_flight >= self._max_in_flight:
            self._client_reading.pause("in_flight")

    def _requests_held(self, pieces: list[Any], held: int) -> bool:
        """`_requests_out` through the exchange; False when the connection was closed."""
        try:
            outcome = cast(KafkaExchange, self._exchange).request_outcome(pieces, held)
        except Exception as exc:
            self._fail(exc, "client")
            return False
        self._to_server += self._send(cast(asyncio.Transport, self._server), outcome.send)
        return not outcome.after_send or self._after_send(outcome.after_send, "client")

    def server_data(self, data: bytes) -> None:
        core = self._core
        if core is None:
            return
        self._from_server += len(data)
        self._responses_out(core, core.from_server, data)
        if self._response_buffer() is not None:  # a large response is coming: read it in place
            self._server_in_place.take_over()

    def _server_filled(self, nbytes: int) -> None:
        core = self._core
        if core is not None:
            self._from_server += nbytes
            self._responses_out(core, core.response_filled, nbytes)

    def _responses_out(self, core: Any, take: Callable[[Any], Any], read: Any) -> None:
        """Give the core what the broker sent (`take(read)`), send on the responses it passes
        (the held ones as the exchange made them), and read the client again once few enough
        requests wait."""
        try:
            pieces, held = take(read)
        except Exception as exc:
            self._fail(exc, "broker")
            return
        if not held:
            client = self._client
            assert client is not None
            self._to_client += self._send(client, pieces)
            # What the core's fetch lane skimmed of them goes to the fetch interceptor now.
            exchange = self._exchange
            assert exchange is not None
            if core.fetch_skims and not self._after_send((exchange.hand_skimmed,), "broker"):
                return
        elif not self._responses_held(pieces, held):
            return
        if self._client_reading.paused and core.in_flight < self._max_in_flight:
            self._client_reading.resume("in_flight")

    def _responses_held(self, pieces: list[Any], held: int) -> bool:
        """`_responses_out` through the exchange; False when the connection was closed."""
        try:
            outcome = cast(KafkaExchange, self._exchange).response_outcome(pieces, held)
        except Exception as exc:
            self._fail(exc, "broker")
            return False
        self._to_client += self._send(cast(asyncio.Transport, self._client), outcome.send)
        return not outcome.after_send or self._after_send(outcome.after_send, "broker")

    def _after_send(self, actions: Iterable[Callable[[], None]], peer: str) -> bool:
        """Run what the exchange does once the bytes went out (tracing, mostly); False when it
        failed and the connection was closed: what it left half done cannot be trusted."""
        try:
            for action in actions:
                action()
        except Exception as exc:
            self._fail(exc, peer)
            return False
        return True

    def _fail(self, exc: Exception, peer: str) -> None:
        """Close the connection after what one side sent could not be handled."""
        if isinstance(exc, ProtocolError):
            self._runtime.metrics.inc("protocol_errors", peer=peer)
            log.warning(
                "connection %d: closing, the %s sent invalid Kafka protocol: %s",
                self.id,
                peer,
                exc,
            )
        else:
            self._runtime.metrics.inc("internal_errors")
            log.error("connection %d: closing after an internal error", self.id, exc_info=exc)
        self.close()

    @staticmethod
    def _send(transport: asyncio.Transport, pieces: list[Any]) -> int:
        """Send frames on; the bytes sent (counted before the actions that wait for the send
        run, so an action that fails cannot lose them)."""
        if len(pieces) == 1:
            piece = pieces[0]
            transport.write(piece)
            return len(piece)
        # One vectored send for a frame in several pieces (uvloop), not one per piece.
        transport.writelines(pieces)
        return sum(map(len, pieces))

    def flush_metrics(self) -> None:
        """Add the bytes moved since the last flush to the registry's counters."""
        moved = (self._from_client, self._to_server, self._from_server, self._to_client)
        self._from_client = self._to_server = self._from_server = self._to_client = 0
        for counter, count in zip(self._bytes_counters, moved, strict=True):
            if count:
                counter.inc(count)

    def pause_writing(self) -> None:  # the client is slow to read: stop reading the broker
        self._server_reading.pause("client_slow")

    def resume_writing(self) -> None:
        self._server_reading.resume("client_slow")

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    # -- broker side (called by ServerConnection) ------------------------------------------

    def upstream_failed(self, exc: Exception) -> None:
        """The broker connection broke (reset, TLS alert): say so, the client only sees a close."""
        self._runtime.metrics.inc("upstream_disconnects", listener=self._listener_label)
        log.warning(
            "connection %d: the broker connection for %s failed: %s",
            self.id,
            self._listener_label,
            describe(exc),
        )

    def server_paused(self) -> None:
        self._client_reading.pause("server_slow")

    def server_resumed(self) -> None:
        self._client_reading.resume("server_slow")

    def close(self) -> None:
        """Close both sides once; buffered bytes are still flushed by the transports."""
        if self._closed:
            return
        self._closed = True
        self._core = None
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        for transport in (self._client, self._server):
            if transport is not None:
                transport.close()
        if self._exchange is not None:
            self._exchange.close()
        self.flush_metrics()
        self._runtime.metrics.remove_source(self)
        self._runtime.connections.discard(self)
        self._runtime.metrics.add("connections_open", -1)


class ServerConnection(asyncio.Protocol):
    """The proxy's connection to a broker, on behalf of one client connection (which reads a
    large response's rest in place through `_InPlaceReads`)."""

    def __init__(self, client: ClientConnection) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.server_data(data)

    def pause_writing(self) -> None:
        self._client.server_paused()

    def resume_writing(self) -> None:
        self._client.server_resumed()

    def eof_received(self) -> bool:
        self._client.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._client.upstream_failed(exc)
        self._client.close()
