"""Rewriting every broker address a client can learn, so no client ever dials a broker directly.

Responses that carry broker host:port (see ../shared/PROTOCOL.md):
- Metadata `brokers[]`
- FindCoordinator: top-level node_id/host/port (v0-3) or `coordinators[]` (v4+); node id -1 means
  "no coordinator" and is left alone
- DescribeCluster `brokers[]`
- `node_endpoints[]` (KIP-951, tagged) of Produce v10+ and Fetch v16+ responses, and of
  ShareFetch / ShareAcknowledge responses
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from .apis import ApiKey

#: (node id, real host, real port) -> (host, port) the client should dial instead.
AddressMapper = Callable[[int, str, int], tuple[str, int]]


def _rewrite_entries(entries: tuple[Any, ...], id_field: str, mapper: AddressMapper) -> tuple:
    changed = False
    rewritten = []
    for entry in entries:
        node_id = getattr(entry, id_field)
        if node_id < 0:
            rewritten.append(entry)
            continue
        host, port = mapper(node_id, entry.host, entry.port)
        if (host, port) != (entry.host, entry.port):
            entry = dataclasses.replace(entry, host=host, port=type(entry.port)(port))
            changed = True
        rewritten.append(entry)
    return tuple(rewritten) if changed else entries


def rewrite_broker_addresses(api_key: int, payload: Any, mapper: AddressMapper) -> Any | None:
    """The payload with every broker address mapped, or None when nothing needed to change."""
    changes: dict[str, Any] = {}
    if api_key in (ApiKey.METADATA, ApiKey.DESCRIBE_CLUSTER):
        id_field = "node_id" if api_key == ApiKey.METADATA else "broker_id"
        current = payload.brokers or ()
        brokers = _rewrite_entries(current, id_field, mapper)
        if brokers is not current:
            changes["brokers"] = brokers
    elif api_key == ApiKey.FIND_COORDINATOR:
        if hasattr(payload, "coordinators"):
            current = payload.coordinators or ()
            coordinators = _rewrite_entries(current, "node_id", mapper)
            if coordinators is not current:
                changes["coordinators"] = coordinators
        elif payload.node_id >= 0:
            host, port = mapper(payload.node_id, payload.host, payload.port)
            if (host, port) != (payload.host, payload.port):
                changes = {"host": host, "port": type(payload.port)(port)}
    endpoints = getattr(payload, "node_endpoints", None)
    if endpoints:
        rewritten = _rewrite_entries(endpoints, "node_id", mapper)
        if rewritten is not endpoints:
            changes["node_endpoints"] = rewritten
    return dataclasses.replace(payload, **changes) if changes else None


def topic_ids_from_metadata(payload: Any) -> dict[uuid.UUID, str]:
    """Topic id -> name pairs of a Metadata response (v10+ carry ids; zero ids are skipped)."""
    names: dict[uuid.UUID, str] = {}
    for topic in payload.topics or ():
        topic_id = getattr(topic, "topic_id", None)
        if topic_id is not None and topic_id.int and topic.name:
            names[topic_id] = topic.name
    return names
