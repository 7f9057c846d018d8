"""The proxy's listening sockets: one bootstrap listener, and one per upstream broker.

A broker's listener is bound the moment its node id is first seen in a response, before that
response reaches the client, so the address the client is handed is already accepting
connections (the kernel queues them until the asyncio server starts serving).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .brokers import PortMappingError
from .config import HostPort
from .relay import ClientConnection, Runtime

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listeners:
    """Owns every listening socket of the proxy."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._servers: dict[int, asyncio.AbstractServer] = {}
        self._pending: dict[int, asyncio.Task[asyncio.AbstractServer]] = {}
        #: Sockets bound but not yet handed to a running server (closed if we stop first).
        self._unserved: dict[int, socket.socket] = {}
        self._ports: dict[int, int] = {}
        self._failed: set[int] = set()
        self._closed = False

    @property
    def bootstrap_bound(self) -> bool:
        return -1 in self._servers

    @property
    def broker_ports(self) -> dict[int, int]:
        """Node id -> local port of every broker listener bound so far."""
        return dict(self._ports)

    async def start_bootstrap(self) -> None:
        listen = self._runtime.settings.listen_address
        sock = _bind(listen.host, listen.port)
        try:
            self._servers[-1] = await asyncio.get_running_loop().create_server(
                lambda: ClientConnection(self._runtime, -1, self._bootstrap_targets),
                sock=sock,
                ssl=self._runtime.listen_ssl,
            )
        except BaseException:
            sock.close()
            raise
        log.info("listening on %s for bootstrap", listen)

    def _bootstrap_targets(self) -> list[HostPort]:
        return list(self._runtime.settings.upstream_bootstrap_servers)

    def ensure_broker(self, node_id: int) -> None:
        """Bind the listener for a broker now (idempotent); serve it as soon as the loop runs.
        Once closing has begun nothing new is bound (discovery may still report brokers)."""
        if self._closed or node_id in self._ports or node_id in self._failed:
            return
        settings = self._runtime.settings
        try:
            port = self._runtime.brokers.ports.port_for(node_id)
            sock = _bind(settings.listen_address.host, port)
        except (OSError, PortMappingError) as exc:
            self._failed.add(node_id)
            self._runtime.metrics.inc("listener_errors")
            log.error("cannot listen for broker %d: %s", node_id, exc)
            return
        self._ports[node_id] = port
        log.info("listening on %s:%d for broker %d", settings.listen_address.host, port, node_id)

        def targets() -> list[HostPort]:
            address = self._runtime.brokers.upstream(node_id)
            return [HostPort(*address)] if address else []

        loop = asyncio.get_running_loop()
        self._unserved[node_id] = sock
        self._pending[node_id] = loop.create_task(
            loop.create_server(
                lambda: ClientConnection(self._runtime, node_id, targets),
                sock=sock,
                ssl=self._runtime.listen_ssl,
            )
        )
        self._pending[node_id].add_done_callback(lambda task: self._served(node_id, task))

    def _served(self, node_id: int, task: asyncio.Task[asyncio.AbstractServer]) -> None:
        self._pending.pop(node_id, None)
        sock = self._unserved.pop(node_id, None)
        if sock is not None and (task.cancelled() or task.exception() is not None):
            sock.close()
        if not task.cancelled() and task.exception() is None:
            self._servers[node_id] = task.result()

    async def close(self) -> None:
        """Stop accepting connections (existing connections are closed by the caller).

        A broker listener whose server was still starting is waited for, so that its socket is
        closed here, whether the start was cancelled or had just finished."""
        self._closed = True
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        # Each task's _served callback (registered first) closes its socket or records its server.
        await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers.values():
            server.close()
        for server in list(self._servers.values()):
            await server.wait_closed()
        self._servers.clear()
