"""`kafka-trace-proxy check`: validate settings, then try the upstream cluster and the collector.

Prints one line per check (`ok` or `FAIL` with the reason) so an operator can see at a glance what
works from where the sidecar runs; exits 0 only when everything answered.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from .config import HostPort, Settings
from .dialing import describe, open_stream
from .discovery import fetch_brokers
from .tls import upstream_context
from .tracing.export import otlp_protocol

Report = Callable[[bool, str], None]


def otlp_target(env: Mapping[str, str]) -> tuple[str, str]:
    """(protocol, endpoint URL) the exporter will use, per the standard OTEL_* variables."""
    protocol = otlp_protocol(env)
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    general = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return protocol, specific or general or "http://localhost:4317"
    if specific:
        return protocol, specific
    return protocol, (general or "http://localhost:4318").rstrip("/") + "/v1/traces"


def _post_empty_export(url: str, timeout: float) -> str:
    request = urllib.request.Request(
        url, data=b"", method="POST", headers={"Content-Type": "application/x-protobuf"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return f"HTTP {exc.code} (reachable)"
        raise


async def check_upstream(settings: Settings, report: Report) -> bool:
    timeout = settings.connect_timeout_ms / 1000
    tls = upstream_context(settings)
    good = False
    for target in settings.upstream_bootstrap_servers:
        try:
            brokers, _ = await fetch_brokers(target, timeout, tls)
        except Exception as exc:  # report anything, keep checking
            report(False, f"upstream {target}: {describe(exc)}")
            continue
        good = True
        listed = ", ".join(f"{node}={host}:{port}" for node, host, port in brokers)
        report(True, f"upstream {target}: cluster has {len(brokers)} broker(s): {listed}")
        for node, host, port in brokers:
            try:
                _, writer = await asyncio.wait_for(open_stream(host, port, tls), timeout)
                writer.close()
                secured = " over verified TLS" if tls and tls.check_hostname else ""
                report(
                    True, f"broker {node} at {HostPort(host, port)} accepts connections{secured}"
                )
            except Exception as exc:
                report(False, f"broker {node} at {HostPort(host, port)}: {exc}")
                good = False
        break
    return good


async def check_collector(settings: Settings, report: Report) -> bool:
    if not settings.tracing_enabled:
        report(True, "tracing disabled (KTP_TRACING_ENABLED=false): no collector needed")
        return True
    if settings.otel.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() not in ("", "otlp"):
        report(True, f"exporter {settings.otel['OTEL_TRACES_EXPORTER']}: not checked")
        return True
    protocol, url = otlp_target(settings.otel)
    timeout = settings.connect_timeout_ms / 1000
    try:
        if protocol == "grpc":
            parsed = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
            host, port = parsed.hostname or "localhost", parsed.port or 4317
            _, writer = await asyncio.wait_for(open_stream(host, port), timeout)
            writer.close()
            detail = "accepts connections"
        else:
            detail = await asyncio.to_thread(_post_empty_export, url, timeout)
    except Exception as exc:
        report(False, f"collector {url} ({protocol}): {exc}")
        return False
    report(True, f"collector {url} ({protocol}): {detail}")
    return True


async def run_check(settings: Settings, report: Report) -> bool:
    report(True, "settings are valid")
    upstream = await check_upstream(settings, report)
    collector = await check_collector(settings, report)
    return upstream and collector
