"""Opening connections to brokers: resolve first, then connect to the numeric address.

Resolving inside the same timeout as the connect, as a separate step, keeps a DNS lookup that
outlives the connect timeout from leaving an orphaned, unretrieved error behind in the event loop
(uvloop logs those as ERROR lines); for TLS the certificate is still checked against the name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable


def describe(exc: BaseException) -> str:
    """An error for a log line: its message, or its type when it has none (timeouts)."""
    return str(exc) or type(exc).__name__


async def dial(
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Resolve `host` and connect to the first address that accepts."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    failure: OSError | None = None
    for _family, _type, _proto, _name, address in addresses:
        try:
            transport, protocol = await loop.create_connection(
                factory, address[0], address[1], ssl=tls, server_hostname=host if tls else None
            )
        except OSError as exc:
            failure = exc
            continue
        return transport, protocol  # type: ignore[return-value]
    raise failure or OSError(f"{host} resolves to no address")


async def open_stream(
    host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection`, resolving first like `dial`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    transport, protocol = await dial(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port, tls
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
    return reader, writer
