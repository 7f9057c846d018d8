"""Learning the cluster's brokers eagerly, with the proxy's own Metadata request.

Without it, broker listeners would only exist once some client's Metadata response passed through;
a client that kept broker addresses across a proxy restart would find nothing listening. This is
the only place the proxy sends a request of its own, on a connection of its own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.request_header.v2.header import RequestHeader
from kio.static.primitive import i16, i32

from .brokers import BrokerDirectory, TopicNames
from .codec.addresses import topic_ids_from_metadata
from .codec.framing import SIZE_PREFIX, frame
from .codec.headers import peek_correlation_id
from .codec.messages import decode_response, encode
from .config import HostPort
from .dialing import describe, open_stream

log = logging.getLogger(__name__)

METADATA_VERSION = 12  # supported by every broker from Kafka 2.8 to 4.x
CLIENT_ID = "kafka-trace-proxy"


def metadata_request(correlation_id: int) -> bytes:
    header = RequestHeader(
        request_api_key=i16(3),
        request_api_version=i16(METADATA_VERSION),
        correlation_id=i32(correlation_id),
        client_id=CLIENT_ID,
    )
    body = MetadataRequest(
        topics=(), allow_auto_topic_creation=False, include_topic_authorized_operations=False
    )
    return frame(encode(header) + encode(body))


@dataclass
class UpstreamStatus:
    """What discovery found out about the upstream cluster, for readiness."""

    #: A bootstrap server accepted a connection (and a TLS handshake, when configured). With
    #: SASL the proxy cannot ask for metadata itself, so this alone counts as reachable.
    reachable: bool = False
    last_error: str = ""


async def fetch_brokers(
    target: HostPort,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    status: UpstreamStatus | None = None,
) -> tuple[list[tuple[int, str, int]], dict]:
    """Ask one broker for the cluster's brokers; returns [(node id, host, port)] and topic ids."""
    reader, writer = await asyncio.wait_for(open_stream(target.host, target.port, tls), timeout)
    try:
        writer.write(metadata_request(1))
        await writer.drain()
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(SIZE_PREFIX), timeout))
        body = await asyncio.wait_for(reader.readexactly(size), timeout)
    except asyncio.IncompleteReadError:
        # Closed without an answer: a SASL listener refuses requests before authentication,
        # yet it is up. (A TLS alert, e.g. a missing client certificate, raises SSLError.)
        if status is not None:
            status.reachable = True
        raise
    except ssl.SSLError:
        if status is not None:
            status.reachable = False
        raise
    finally:
        writer.close()
    if status is not None:
        status.reachable = True
    if peek_correlation_id(body) != 1:
        raise ConnectionError("broker answered a different request")
    _, payload = decode_response(3, METADATA_VERSION, body)
    brokers = [(b.node_id, b.host, b.port) for b in payload.brokers]
    return brokers, topic_ids_from_metadata(payload)


async def discover(
    targets: tuple[HostPort, ...],
    brokers: BrokerDirectory,
    topics: TopicNames,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    status: UpstreamStatus | None = None,
) -> bool:
    """Try each bootstrap server until one answers; True when brokers were learned."""
    for target in targets:
        try:
            found, names = await fetch_brokers(target, timeout, tls, status)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("cluster discovery via %s failed: %s", target, exc)
            if status is not None:
                status.last_error = f"{target}: {describe(exc)}"
            continue
        for node_id, host, port in found:
            brokers.map_address(node_id, host, port)
        topics.update(names)
        return True
    return False


async def keep_discovering(
    targets: tuple[HostPort, ...],
    brokers: BrokerDirectory,
    topics: TopicNames,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    status: UpstreamStatus | None = None,
    interval: float = 30.0,
) -> None:
    """Discover at start (retrying quickly until it works), then refresh now and then."""
    delay = 0.5
    warned = False
    while True:
        if await discover(targets, brokers, topics, timeout, tls, status):
            delay = interval
        else:
            if not warned:
                log.warning(
                    "cannot learn the cluster's brokers from %s yet (%s); will keep trying "
                    "(brokers are also learned from clients' responses)",
                    ", ".join(map(str, targets)),
                    status.last_error if status is not None else "no answer",
                )
                warned = True
            delay = min(delay * 2, interval)
        await asyncio.sleep(delay)
