"""Watching which processes hold TCP connections to broker ports.

A proxy that forgets to rewrite one broker address (Metadata, FindCoordinator, DescribeCluster,
KIP-951 NodeEndpoints...) still "works": the client silently connects to the broker itself. The
only way to see that from outside is to look at the sockets, so ConnectionWatcher samples the
machine's TCP table in a background thread and records every established connection whose remote
port is a broker port, with the owning process.

Sampling (every ~20 ms) can miss a connection that opens and closes between two samples; clients
keep their broker connections open for their whole run, so a leak through the proxy shows up.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import psutil


@dataclass(frozen=True)
class Observed:
    """One established connection to a watched port, as seen in one sample."""

    pid: int | None
    local: tuple[str, int]
    remote: tuple[str, int]

    @property
    def remote_port(self) -> int:
        return self.remote[1]


class ConnectionWatcher:
    """Background sampler of established TCP connections to `ports`; use as a context manager."""

    def __init__(
        self, ports: Iterable[int], interval: float = 0.02, likely_pids: Iterable[int] = ()
    ) -> None:
        """`likely_pids` are searched first for a new connection's owner (a fast look-up
        closes the window in which a short-lived connection vanishes before it is attributed)."""
        self.ports = frozenset(ports)
        self.interval = interval
        self.likely_pids = tuple(likely_pids)
        self.seen: set[Observed] = set()
        self.samples = 0
        self.commands: dict[int, str] = {}
        """pid -> command line, captured when the pid is first seen (it may exit later)."""
        self._owners: dict[int, int] = {}
        self._unresolved: dict[int, Observed] = {}
        self._sightings: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def sample(self) -> None:
        """Take one sample now.

        Cheap path: the kernel's TCP tables (/proc/net/tcp*) list established connections with
        their socket inode; only a connection not seen before costs a look-up of its owner
        (psutil, which scans every process's file descriptors).
        """
        fresh: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        for inode, local, remote in _established(self.ports):
            self._sightings[inode] = self._sightings.get(inode, 0) + 1
            if inode not in self._owners:
                fresh[inode] = (local, remote)
        if fresh:
            owners = _owners_of(fresh.keys(), self.likely_pids)
            for inode, (local, remote) in fresh.items():
                pid = owners.get(inode)
                if pid is None:  # closed already, or created after the look-up: retry next time
                    self._unresolved[inode] = Observed(None, local, remote)
                    continue
                self._unresolved.pop(inode, None)
                self._owners[inode] = pid
                self.seen.add(Observed(pid, local, remote))
                if pid not in self.commands:
                    self.commands[pid] = _command(pid)
        self.samples += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.sample()
                self._stop.wait(self.interval)
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    def start(self) -> ConnectionWatcher:
        self.sample()  # synchronously: a bad setup (e.g. no permission) fails right here
        self._thread = threading.Thread(target=self._run, name="connection-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (after one last sample); re-raise an error of the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._error is not None:
            raise RuntimeError("connection watcher failed") from self._error
        self.sample()

    def __enter__(self) -> ConnectionWatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- results ---------------------------------------------------------------------------------

    def ports_by_pid(self) -> dict[int | None, set[int]]:
        """pid -> the watched ports it was seen connected to."""
        result: dict[int | None, set[int]] = {}
        for observed in self.seen:
            result.setdefault(observed.pid, set()).add(observed.remote_port)
        return result

    def intruders(self, allowed_pids: Iterable[int]) -> list[str]:
        """Connections to watched ports by processes not in `allowed_pids`.

        A connection whose owner was never found counts too, unless it was seen in one sample
        only (then it closed within ~one sampling interval, see `transient`): clients hold their
        broker connections for their whole run, so a bypass is never that short.
        """
        allowed = set(allowed_pids)
        found = [_describe(o, self.commands) for o in self.seen if o.pid not in allowed]
        found += [
            _describe(o, self.commands) + " (owner never found)"
            for inode, o in self._unresolved.items()
            if self._sightings.get(inode, 0) > 1
        ]
        return sorted(found)

    @property
    def transient(self) -> list[str]:
        """Connections seen in one sample only and gone before their owner could be found."""
        return sorted(
            _describe(o, self.commands)
            for inode, o in self._unresolved.items()
            if self._sightings.get(inode, 0) <= 1
        )


def _describe(o: Observed, commands: dict[int, str]) -> str:
    command = commands.get(o.pid, "?") if o.pid is not None else "owner unknown"
    return f"pid {o.pid} ({command}): {o.local[0]}:{o.local[1]} -> {o.remote[0]}:{o.remote[1]}"


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_ESTABLISHED = 1
_NLMSG_HEADER = struct.Struct("=IHHII")
# inet_diag_msg: family, state, timer, retrans, sockid (sport, dport big-endian; src, dst 16
# bytes each; interface; cookie), expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def _established(ports: frozenset[int]) -> list[tuple[int, tuple[str, int], tuple[str, int]]]:
    """(inode, local, remote) of every established TCP connection to one of `ports`.

    Asks the kernel over netlink (sock_diag) for established sockets only: reading
    /proc/net/tcp walks every socket, TIME_WAIT ones included, and took ~10 ms per table here.
    """
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            request = struct.pack(
                "=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_ESTABLISHED
            )
            header = _NLMSG_HEADER.pack(
                _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, seq, 0
            )
            sock.send(header + request)
            done = False
            while not done:
                data = sock.recv(1 << 16)
                pos = 0
                while pos + _NLMSG_HEADER.size <= len(data):
                    length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, pos)
                    if kind == _NLMSG_DONE:
                        done = True
                        break
                    if kind == _NLMSG_ERROR:
                        raise OSError("sock_diag request failed")
                    msg = _DIAG_MSG.unpack_from(data, pos + _NLMSG_HEADER.size)
                    fam, _state, _, _, sport, dport, src, dst = msg[:8]
                    remote_port = int.from_bytes(dport, "big")
                    if remote_port in ports:
                        found.append(
                            (
                                msg[-1],
                                (_host(fam, src), int.from_bytes(sport, "big")),
                                (_host(fam, dst), remote_port),
                            )
                        )
                    pos += (length + 3) & ~3
    return found


def _host(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return str(ipaddress.IPv6Address(raw))


def _owners_of(inodes: Iterable[int], likely_pids: Sequence[int] = ()) -> dict[int, int]:
    """Socket inode -> pid of the process holding it, for those of `inodes` still open.

    Scans /proc/<pid>/fd like psutil.net_connections does (which does not report inodes),
    `likely_pids` first.
    """
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    for pid in [*likely_pids, *psutil.pids()]:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None:
                owners[inode] = pid
                if len(owners) == len(wanted):
                    return owners
    return owners


def _command(pid: int) -> str:
    try:
        text = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    return text if len(text) <= 200 else text[:200] + "..."
