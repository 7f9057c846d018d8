"""Cold caches on demand: a child process that runs on this process's CPU between two steps.

In the relay the proxy sleeps between requests while the broker and the clients run, and wakes on
caches they have filled with their own data. A loop that replays requests back to back never
sees that. `CacheThrasher.hand_over()` gives the CPU to a child that writes a block of memory
(one write per cache line) and hands it back; both are pinned to the same CPU, so the child's
writes evict this process's working set from every cache level, as a scheduler switch does.
"""

from __future__ import annotations

import os
import signal


class CacheThrasher:
    """A child process that, handed the CPU, writes `mib` MiB of memory and hands it back."""

    def __init__(self, mib: int) -> None:
        if mib < 1:
            raise ValueError("the block to write must be at least 1 MiB")
        self.cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {self.cpu})  # the child inherits it
        to_child_read, self._to_child = os.pipe()
        self._from_child, to_parent = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._to_child)  # so that the parent's close() reaches us as end of file
            os.close(self._from_child)
            _serve(to_child_read, to_parent, mib)  # never returns
        os.close(to_child_read)
        os.close(to_parent)

    def hand_over(self) -> None:
        """Let the child run once; returns when it has written its block."""
        os.write(self._to_child, b"x")
        if os.read(self._from_child, 1) != b"x":
            raise RuntimeError("the cache-thrashing child process is gone")

    def close(self) -> None:
        os.close(self._to_child)
        os.close(self._from_child)
        os.waitpid(self.pid, 0)


def _serve(requests: int, replies: int, mib: int) -> None:
    """The child's loop: one pass over the block per hand-over, until end of file."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        block = bytearray(mib << 20)
        zeros = bytes(len(block[::64]))
        while os.read(requests, 1):
            block[::64] = zeros
            os.write(replies, b"x")
        status = 0
    finally:
        os._exit(status)
