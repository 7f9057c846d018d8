"""A bare byte relay in Python, on uvloop: the floor under any Python Kafka proxy.

It does what the proxy's relay does around its Kafka logic and nothing else: one upstream
connection per client, every read written on to the other side at once, reading paused while the
other side's write buffer is full. No framing, decoding, metrics or tracing. What it costs per
request is what the interpreter and the event loop charge for moving the bytes, so the distance
from it to the proxy is the proxy's own work, and the distance from socat to it is Python's.

    python -m benchmarks.bare_relay LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

import uvloop

from proxy.allocator import keep_large_buffers_on_heap

HIGH_WATER = 1 << 20  # the proxy's default KTP_BUFFER_HIGH_WATER_BYTES
_dialling: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


class _End(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to its `peer`."""

    def __init__(self, peer: _End | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        if isinstance(self.peer, _Client):  # the upstream side is open: the client may go on
            self.peer.attach(self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def pause_writing(self) -> None:  # our side is slow: stop reading the other
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        for end in (self, self.peer):
            if end is not None and end.transport is not None:
                end.transport.close()


class _Client(_End):
    """The client's side: reads nothing until its upstream connection is open."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self._upstream_port = upstream_port
        #: Bytes uvloop read before the pause took effect, sent once the upstream is open.
        self._early: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
        else:
            super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect())
        _dialling.add(task)
        task.add_done_callback(_dialling.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _End(peer=self), "127.0.0.1", self._upstream_port)
        except OSError:
            self.close()

    def attach(self, upstream: _End) -> None:
        """The upstream connection is open: send what was read early, then read on."""
        self.peer = upstream
        assert upstream.transport is not None
        if self.transport is None or self.transport.is_closing():
            self.close()  # the client left while we dialled: drop the upstream side too
            return
        upstream.transport.writelines(self._early)
        self._early.clear()
        if upstream.transport.get_write_buffer_size() <= HIGH_WATER:  # else resume_writing will
            self.transport.resume_reading()


async def serve(listen_port: int, upstream_port: int) -> None:
    """Relay every connection to `listen_port` to its own connection to `upstream_port`."""
    loop = asyncio.get_running_loop()

    def accept() -> _Client:
        return _Client(upstream_port)

    server = await loop.create_server(accept, "127.0.0.1", listen_port, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    listen_port, upstream_port = (int(arg) for arg in sys.argv[1:3])
    keep_large_buffers_on_heap()  # as the proxy does (KTP_TUNE_ALLOCATOR), for a fair floor
    uvloop.run(serve(listen_port, upstream_port))


if __name__ == "__main__":
    main()
