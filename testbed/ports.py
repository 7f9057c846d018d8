"""Free TCP ports on loopback, so brokers, proxies and tests can run side by side on one machine."""

from __future__ import annotations

import contextlib
import random
import socket

# Block bases are drawn below Linux's default ephemeral range (32768-60999), so that outgoing
# connections, which take ephemeral ports, cannot grab a port of the block before it is bound.
_BLOCK_LOW = 20000
_BLOCK_HIGH = 32000


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that is free on `host` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """Return a base port such that base..base+count-1 are all free on `host`.

    A contiguous block lets a port-per-broker proxy map node ids deterministically
    (port = base + node id), so a restarted proxy gives every broker the same local port.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    if count > _BLOCK_HIGH - _BLOCK_LOW:
        raise ValueError(f"count {count} is too large")
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_BLOCK_LOW, _BLOCK_HIGH - count + 1)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no block of {count} free ports found on {host} after {attempts} tries")
