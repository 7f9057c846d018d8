"""Where each upstream broker really is, and which local address clients are told to use instead.

Ports are deterministic (an explicit node id -> port map, else a base port + node id), so a
restarted proxy gives every broker the same local port and clients holding old addresses keep
working.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


class PortMappingError(ValueError):
    """A broker's node id has no usable local port."""


@dataclass(frozen=True, slots=True)
class PortMapping:
    """Node id -> local listener port."""

    base_port: int
    explicit: Mapping[int, int]

    def port_for(self, node_id: int) -> int:
        if node_id in self.explicit:
            return self.explicit[node_id]
        port = self.base_port + node_id
        if node_id < 0 or not 0 < port < 65536:
            raise PortMappingError(
                f"broker node id {node_id} maps to port {port}, outside 1..65535; "
                "set KTP_BROKER_PORT_MAP for this broker"
            )
        return port


class BrokerDirectory:
    """Learns upstream brokers from responses and answers with their local stand-ins."""

    def __init__(
        self,
        advertised_host: str,
        ports: PortMapping,
        on_broker_seen: Callable[[int], None] | None = None,
    ) -> None:
        self.advertised_host = advertised_host
        self.ports = ports
        self._upstream: dict[int, tuple[str, int]] = {}
        self._on_broker_seen = on_broker_seen

    def set_observer(self, on_broker_seen: Callable[[int], None]) -> None:
        self._on_broker_seen = on_broker_seen

    def upstream(self, node_id: int) -> tuple[str, int] | None:
        return self._upstream.get(node_id)

    @property
    def known(self) -> dict[int, tuple[str, int]]:
        return dict(self._upstream)

    def map_address(self, node_id: int, host: str, port: int) -> tuple[str, int]:
        """Record where broker `node_id` really is; return where clients should connect."""
        if self._upstream.get(node_id) != (host, port):
            if node_id in self._upstream:
                log.info("broker %d moved to %s:%d", node_id, host, port)
            self._upstream[node_id] = (host, port)
            if self._on_broker_seen is not None:
                self._on_broker_seen(node_id)
        return self.advertised_host, self.ports.port_for(node_id)


class TopicNames:
    """Process-wide topic id -> name map, fed by every Metadata response (Fetch v13+ and
    Produce v13+ name topics by id only)."""

    def __init__(self) -> None:
        #: Keyed by the ids' 16 bytes, as the fetch skim finds them on the wire: one lookup per
        #: skimmed partition, without a UUID made and hashed in Python.
        self._by_wire: dict[bytes, str] = {}

    def update(self, names: Mapping[uuid.UUID, str]) -> None:
        self._by_wire.update((topic_id.bytes, name) for topic_id, name in names.items())

    def name(self, topic_id: uuid.UUID | None) -> str | None:
        return None if topic_id is None else self._by_wire.get(topic_id.bytes)

    def name_on_wire(self, raw: bytes) -> str | None:
        """The name of the topic whose id is these 16 bytes (all zeros, or unknown: None)."""
        return self._by_wire.get(raw)
