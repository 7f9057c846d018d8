"""CPU the proxy's protocol logic spends per request, in-process and without sockets.

Replays a captured Java-client Produce (v13) and Fetch (v18) request/response pair through one
`KafkaExchange`, with tracing off and with tracing at 1% sampling (spans to a no-op exporter), and
prints µs per request+response. It isolates the Python work from syscalls and the broker.

    .venv/bin/python -m benchmarks.exchange_cost
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.tracing_cost import core
from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.exchange import KafkaExchange
from proxy.interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from proxy.metrics import Metrics
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.producer import ProduceTracer

CAPTURED = Path(__file__).resolve().parent.parent / "tests/fixtures/captured/java-console"


def frame_pair(api: str) -> tuple[bytes, bytes]:
    index = json.loads((CAPTURED / "index.json").read_text())

    def first(direction: str) -> bytes:
        entry = next(
            f for f in index["frames"] if f["api_name"] == api and f["direction"] == direction
        )
        return (CAPTURED / entry["file"]).read_bytes()

    return first("request"), first("response")


def exchange(tracing: bool) -> KafkaExchange:
    metrics = Metrics()
    interceptors: list[object] = []
    if tracing:
        tracing_core, _, _ = core("0.01")
        interceptors = [ProduceTracer(tracing_core, metrics), FetchTracer(tracing_core, metrics)]
    return KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 1), BrokerEndpoint(1, "broker", 9092)),
        brokers=BrokerDirectory("127.0.0.1", PortMapping(20000, {})),
        topics=TopicNames(),
        interceptors=Interceptors(interceptors),
        metrics=metrics,
        max_frame_size=1 << 27,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    for api in ("Produce", "Fetch"):
        request, response = frame_pair(api)
        for tracing in (False, True):
            relay = exchange(tracing)
            started = time.perf_counter()
            for _ in range(args.requests):
                relay.from_client(request)
                for action in relay.from_server(response).after_send:
                    action()
            cost = (time.perf_counter() - started) / args.requests * 1e6
            mode = "tracing 1%" if tracing else "tracing off"
            print(f"{api:<8} {mode:<12} {cost:7.1f} µs per request+response")


if __name__ == "__main__":
    main()
