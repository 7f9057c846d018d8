"""Quickstart: see black-box Kafka tracing end to end in one command.

Starts a local Kafka broker and Jaeger, two kafka-trace-proxy sidecars (`orders` and `billing`)
and two demo apps that know nothing about tracing, sends traffic, then prints where Jaeger is, how
many traces it holds and one trace as a tree. Runs until Ctrl-C, or for `--duration` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testbed.jaeger import Jaeger, parent_span_id, span_service, wait_for
from testbed.kafka import KafkaCluster, cache_dir
from testbed.proxy import REPO_ROOT, ProxyProcess


def progress(message: str) -> None:
    print(f"==> {message}", flush=True)


def render_tree(trace: dict[str, Any]) -> list[str]:
    """A trace as indented lines: service, span name, duration."""
    spans = {span["spanID"]: span for span in trace["spans"]}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans.values():
        parent = parent_span_id(span)
        children.setdefault(parent if parent in spans else None, []).append(span)
    lines: list[str] = []

    def walk(span: dict[str, Any], depth: int) -> None:
        label = f"{'  ' * depth}{span_service(trace, span)}: {span['operationName']}"
        lines.append(f"  {label:<50} {span['duration'] / 1000:8.2f} ms")
        for child in sorted(children.get(span["spanID"], []), key=lambda s: s["startTime"]):
            walk(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s["startTime"]):
        walk(root, 0)
    return lines


def complete_traces(jaeger: Jaeger) -> list[dict[str, Any]]:
    """Traces that hold both a send span from `orders` and a receive span from `billing`."""
    found = []
    for trace in jaeger.traces("orders", limit=1000):
        services = {span_service(trace, span) for span in trace["spans"]}
        if {"orders", "billing"} <= services:
            found.append(trace)
    return found


@contextlib.contextmanager
def app(name: str, bootstrap: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "demo.apps", name, "--bootstrap", bootstrap],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def count_lines(path: Path, prefix: str) -> int:
    with contextlib.suppress(OSError):
        return sum(1 for line in path.read_text().splitlines() if line.startswith(prefix))
    return 0


def sidecar(name: str, kafka: KafkaCluster, jaeger: Jaeger, workdir: Path) -> ProxyProcess:
    return ProxyProcess(
        kafka.bootstrap_servers,
        workdir,
        name=f"proxy-{name}",
        env={
            "OTEL_SERVICE_NAME": name,
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        },
    )


def run(duration: float | None, workdir: Path) -> int:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    progress("starting Kafka (single KRaft node)")
    with KafkaCluster("4", 1, workdir / "kafka") as kafka:
        progress(f"Kafka is up at {kafka.bootstrap_servers}; starting Jaeger")
        with Jaeger(workdir / "jaeger") as jaeger:
            progress(f"Jaeger UI at {jaeger.query_url} (it stops when the demo ends)")
            progress("starting the orders and billing sidecar proxies")
            with (
                sidecar("orders", kafka, jaeger, workdir) as orders_proxy,
                sidecar("billing", kafka, jaeger, workdir) as billing_proxy,
            ):
                progress(
                    f"orders app -> proxy {orders_proxy.bootstrap_servers}, "
                    f"billing app -> proxy {billing_proxy.bootstrap_servers}"
                )
                with (
                    app("orders", orders_proxy.bootstrap_servers, workdir),
                    app("billing", billing_proxy.bootstrap_servers, workdir),
                ):
                    traffic(duration, workdir)
                billed = count_lines(workdir / "billing.log", "billed ")
                progress("apps stopped; waiting for the last spans to reach Jaeger")
            # Stopping the proxies flushed their span queues.
            return report(jaeger, workdir, billed)


def traffic(duration: float | None, workdir: Path) -> None:
    until = "until Ctrl-C" if duration is None else f"for {duration:g} s"
    progress(f"sending orders {until}")
    started = time.monotonic()
    try:
        while duration is None or time.monotonic() - started < duration:
            time.sleep(2)
            sent = count_lines(workdir / "orders.log", "sent ")
            billed = count_lines(workdir / "billing.log", "billed ")
            print(
                f"    {time.monotonic() - started:5.0f} s: {sent} orders sent, {billed} billed",
                flush=True,
            )
    except KeyboardInterrupt:
        print()


def report(jaeger: Jaeger, workdir: Path, billed: int) -> int:
    if not billed:
        # Say why rather than wait for traces that cannot exist.
        print(
            "nothing was billed before the apps stopped: the billing consumer needs a few"
            f" seconds to join its group, so let the demo run longer; logs are in {workdir}",
            file=sys.stderr,
        )
        return 1
    try:
        traces = wait_for(lambda: complete_traces(jaeger), timeout=20, what="complete traces")
    except TimeoutError:
        print(f"no trace holds both services yet; logs are in {workdir}", file=sys.stderr)
        return 1
    print()
    print(f"Jaeger UI:  {jaeger.query_url}/search?service=orders")
    print(f"Jaeger API: {jaeger.query_url}/api/traces?service=orders")
    print(f"traces with orders -> billing: {len(traces)}")
    dependencies = jaeger.dependencies()
    edges = ", ".join(f"{d['parent']} -> {d['child']} ({d['callCount']})" for d in dependencies)
    print(f"dependencies: {edges or 'none yet'}")
    sample = max(traces, key=lambda t: len(t["spans"]))
    print(f"one trace ({sample['traceID']}):")
    print("\n".join(render_tree(sample)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, help="seconds of traffic (default: until Ctrl-C)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=cache_dir() / "demo-run",
        help="where logs and data go (recreated each run)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return run(args.duration, args.workdir)
    return 130


if __name__ == "__main__":
    sys.exit(main())
