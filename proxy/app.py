"""Assembling and running the proxy: listeners, discovery, interceptors, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .admin import AdminServer
from .brokers import BrokerDirectory, PortMapping, TopicNames
from .config import Settings
from .discovery import UpstreamStatus, keep_discovering
from .exchange import hold_policy
from .groups import GroupDirectory
from .interceptors import Interceptors
from .listeners import Listeners
from .metrics import Metrics
from .relay import Runtime
from .tls import listener_context, upstream_context
from .tracing.setup import Tracing, build_tracing

log = logging.getLogger(__name__)


class Proxy:
    """One running proxy: start it, serve until stopped, then stop it."""

    def __init__(
        self,
        settings: Settings,
        interceptors: Sequence[object] | None = None,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`interceptors` defaults to tracing as configured by `settings`."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        if interceptors is None:
            tracing = tracing or build_tracing(
                settings.tracing_enabled,
                settings.otel,
                self.metrics,
                settings.consumer_span_mode,
            )
            interceptors = tracing.interceptors
        self.tracing = tracing or Tracing()
        brokers = BrokerDirectory(
            settings.advertised_host,
            PortMapping(settings.broker_port_base, settings.broker_port_map),
        )
        self.runtime = Runtime(
            settings=settings,
            brokers=brokers,
            topics=TopicNames(),
            groups=GroupDirectory(),
            interceptors=Interceptors(interceptors),
            metrics=self.metrics,
            connections=set(),
            upstream_ssl=upstream_context(settings),
            listen_ssl=listener_context(settings),
        )
        # Built now rather than when the first client connects (it imports kio's schemas).
        hold_policy(self.runtime.interceptors)
        self.listeners = Listeners(self.runtime)
        brokers.set_observer(self.listeners.ensure_broker)
        self.upstream = UpstreamStatus()
        self.admin = AdminServer(self.metrics, self.readiness)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()

    def readiness(self) -> tuple[bool, str]:
        """Ready when clients can connect and the cluster answers (brokers known, or at least a
        bootstrap server accepting connections: SASL clusters answer nothing before auth)."""
        known = self.runtime.brokers.known
        if not self.listeners.bootstrap_bound:
            return False, "bootstrap listener not bound"
        if known:
            return True, f"ready: {len(known)} broker(s) known"
        if self.upstream.reachable:
            return True, "ready: upstream accepts connections (brokers not listed yet)"
        detail = f" ({self.upstream.last_error})" if self.upstream.last_error else ""
        return False, f"no upstream broker reached yet{detail}"

    async def start(self) -> None:
        await self.listeners.start_bootstrap()
        admin = self.settings.admin_address
        if admin is not None:
            await self.admin.start(admin.host, admin.port)
        self._tasks.append(
            asyncio.get_running_loop().create_task(
                keep_discovering(
                    self.settings.upstream_bootstrap_servers,
                    self.runtime.brokers,
                    self.runtime.topics,
                    self.settings.connect_timeout_ms / 1000,
                    self.runtime.upstream_ssl,
                    self.upstream,
                )
            )
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close, flush spans."""
        await self.listeners.close()
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_ms / 1000
        while any(c.in_flight for c in self.runtime.connections):
            if asyncio.get_running_loop().time() >= deadline:
                waiting = sum(c.in_flight for c in self.runtime.connections)
                log.warning("shutdown: closing with %d request(s) still in flight", waiting)
                break
            await asyncio.sleep(0.02)
        for connection in list(self.runtime.connections):
            connection.close()
        await self.admin.close()
        await self._cancel_tasks()
        await asyncio.to_thread(self.tracing.shutdown)
        self._stopped.set()

    async def _cancel_tasks(self, attempts: int = 50) -> None:
        """Cancel the background tasks, asking again while one is still running: Python 3.11's
        `asyncio.wait_for` can swallow a cancellation that races a completed read, and the
        discovery loop would then sleep on until its next refresh."""
        pending = set(self._tasks)
        for _ in range(attempts):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("background task %s failed: %s", task.get_name(), task.exception())
        self._tasks.clear()

    async def serve_forever(self) -> None:
        await self._stopped.wait()
