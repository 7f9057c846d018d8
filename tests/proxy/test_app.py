"""Proxy start/stop behaviour that needs no broker."""

from __future__ import annotations

import asyncio
import contextlib
import time

from proxy.app import Proxy
from proxy.config import load_settings
from testbed.ports import free_port_block


def test_stop_finishes_even_when_a_background_task_swallows_its_cancellation() -> None:
    # Python 3.11's asyncio.wait_for can lose a cancellation that races a completed read; the
    # discovery loop then goes on to sleep until its next refresh. Stop must not wait for it.
    async def scenario() -> float:
        settings = load_settings(
            {
                "KTP_UPSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                "KTP_LISTEN_ADDRESS": f"127.0.0.1:{free_port_block(4)}",
                "KTP_TRACING_ENABLED": "false",
            }
        )
        proxy = Proxy(settings)

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
