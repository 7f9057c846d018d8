"""Which consumer group a client belongs to, shared across that client's connections.

Fetch requests carry no group; the group shows up in JoinGroup/SyncGroup/Heartbeat/OffsetCommit
(or ConsumerGroupHeartbeat), which clients usually send on a separate connection to the group
coordinator. The proxy therefore remembers, process-wide, the last group each client id named,
so fetches on the client's other connections can be attributed to it. Clients that share one
client id across several groups (kafka-python's default id) may be attributed to the latest one.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_CLIENTS = 10_000


class GroupDirectory:
    """client id -> last consumer group it named (bounded, oldest forgotten first)."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self._groups: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def learn(self, client_id: str | None, group_id: str) -> None:
        if client_id is None:
            return
        self._groups[client_id] = group_id
        self._groups.move_to_end(client_id)
        if len(self._groups) > self._limit:
            self._groups.popitem(last=False)

    def lookup(self, client_id: str | None) -> str | None:
        return None if client_id is None else self._groups.get(client_id)
