"""Proxy start/stop behaviour that needs no broker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
import warnings

from proxy.app import Proxy
from proxy.config import load_settings
from testbed.ports import free_port_block


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _proxy(base: int) -> Proxy:
    return Proxy(
        load_settings(
            {
                "KTP_UPSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                "KTP_LISTEN_ADDRESS": f"127.0.0.1:{base}",
                "KTP_TRACING_ENABLED": "false",
            }
        )
    )


def test_stop_finishes_even_when_a_background_task_swallows_its_cancellation() -> None:
    # Python 3.11's asyncio.wait_for can lose a cancellation that races a completed read; the
    # discovery loop then goes on to sleep until its next refresh. Stop must not wait for it.
    async def scenario() -> float:
        proxy = _proxy(free_port_block(4))

        async def stubborn() -> None:
            with contextlib.suppress(asyncio.CancelledError):  # the lost cancellation
                await asyncio.sleep(30)
            await asyncio.sleep(30)

        task = asyncio.get_running_loop().create_task(stubborn())
        proxy._tasks.append(task)
        await asyncio.sleep(0)
        started = time.monotonic()
        await asyncio.wait_for(proxy.stop(), 20)
        assert task.cancelled()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 2


def test_a_broker_listener_that_just_started_is_closed_by_stop() -> None:
    # Its server has started, but the callback that records it has not run yet when stop
    # begins: the listener must still be closed, not dropped while listening (a socket leaked
    # until garbage collection, and a port held).
    async def scenario() -> tuple[int, bool]:
        proxy = _proxy(free_port_block(4))
        await proxy.listeners.start_bootstrap()
        proxy.listeners.ensure_broker(1)
        port = proxy.listeners.broker_ports[1]
        starting = proxy.listeners._pending[1]
        while not starting.done():
            await asyncio.sleep(0)
        assert 1 in proxy.listeners._pending, "the server was recorded already"
        await proxy.stop()
        return port, _bindable(port)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        port, closed_at_stop = asyncio.run(scenario())
        gc.collect()
    assert closed_at_stop, f"port {port} still listening after stop"


def test_no_broker_listener_is_bound_once_stop_began() -> None:
    # Discovery goes on until the background tasks are cancelled, after the listeners close.
    async def scenario() -> dict[int, int]:
        proxy = _proxy(free_port_block(4))
        await proxy.listeners.start_bootstrap()
        await proxy.stop()
        proxy.listeners.ensure_broker(2)
        return proxy.listeners.broker_ports

    assert asyncio.run(scenario()) == {}
