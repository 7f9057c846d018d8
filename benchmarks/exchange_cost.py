"""CPU the proxy's protocol logic spends per request, in-process and without sockets.

Replays request/response pairs through one `KafkaExchange`, with tracing off and with tracing at
1% sampling (spans to a no-op exporter), and prints µs per request+response. It isolates the
Python work from syscalls and the broker. The pairs:

- `java-produce`, `java-fetch`: a captured Java-client Produce (v13) and Fetch (v18), small records
  that already carry headers (so the per-record injection path);
- `perf-produce`: the shape `ProducerPerformance` sends, one 16 KiB batch of 1 KiB records without
  headers (the bulk injection path);
- `perf-fetch`: a 1 MiB Fetch response of such records, each with a traceparent and 1% of them
  sampled, fed in 256 KiB reads as a socket delivers it.

    .venv/bin/python -m benchmarks.exchange_cost [--switch MIB]

With `--switch MIB` every request first hands the CPU to another process, pinned to the same
CPU, that writes MIB of memory and hands it back, as the broker and the clients do between two
requests the relay handles (`cache_thrasher.py`). The figure is then this process's CPU time for
the same work on cold caches: the best round with the hand-overs, less the best round of the
hand-overs alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from kafka.record.default_records import DefaultRecordBatchBuilder

from benchmarks.cache_thrasher import CacheThrasher
from benchmarks.tracing_cost import core
from proxy.allocator import keep_large_buffers_on_heap
from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec.framing import frame
from proxy.codec.headers import parse_request_header
from proxy.codec.messages import decode_request, decode_response, encode, replace_payload
from proxy.codec.produce import iter_request_partitions, replace_records
from proxy.exchange import KafkaExchange
from proxy.interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from proxy.metrics import Metrics
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.export import SpanPipeline
from proxy.tracing.producer import ProduceTracer
from proxy.tracing.traceparent import format_traceparent

CAPTURED = Path(__file__).resolve().parent.parent / "tests/fixtures/captured/java-console"
READ_SIZE = 256 * 1024


def frame_pair(api: str) -> tuple[bytes, bytes]:
    index = json.loads((CAPTURED / "index.json").read_text())

    def first(direction: str) -> bytes:
        entry = next(
            f for f in index["frames"] if f["api_name"] == api and f["direction"] == direction
        )
        return (CAPTURED / entry["file"]).read_bytes()

    return first("request"), first("response")


def record_batch(count: int, size: int, base_offset: int = 0, sampled_ratio: float = -1) -> bytes:
    """A batch of `count` records of `size` random bytes; with a traceparent each when
    `sampled_ratio` >= 0, sampled with that probability."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 22)
    for i in range(count):
        headers = []
        if sampled_ratio >= 0:
            sampled = random.random() < sampled_ratio
            context = format_traceparent(random.getrandbits(128), random.getrandbits(64), sampled)
            headers = [("traceparent", context)]
        builder.append(i, 1_700_000_000_000 + i, None, random.randbytes(size), headers)
    batch = bytearray(builder.build())
    batch[0:8] = base_offset.to_bytes(8, "big")
    return bytes(batch)


def produce_pair_with(batch: bytes) -> tuple[bytes, bytes]:
    """The captured Produce with its records replaced by `batch`, and its response."""
    request, response = frame_pair("Produce")
    body = memoryview(request)[4:]
    header = parse_request_header(body)
    assert header.size is not None
    payload = decode_request(0, header.api_version, body, header.size)
    located = next(iter_request_partitions(payload))
    replaced = replace_records(payload, {(located.topic_index, located.partition_index): batch})
    return frame(replace_payload(body, header.size, replaced)), response


def fetch_pair_with(records: bytes, high_watermark: int) -> tuple[bytes, bytes]:
    """The captured Fetch, and its response with `records` as its partition's."""
    request, response = frame_pair("Fetch")
    body = memoryview(response)[4:]
    header_size, payload = decode_response(1, 18, body)
    topic = payload.responses[0]
    partition = dataclasses.replace(
        topic.partitions[0], records=records, high_watermark=high_watermark
    )
    payload = dataclasses.replace(
        payload, responses=(dataclasses.replace(topic, partitions=(partition,)),)
    )
    return request, frame(bytes(body[:header_size]) + encode(payload))


def perf_produce_pair() -> tuple[bytes, bytes]:
    """The captured Produce with its records replaced by one headerless 16 KiB batch."""
    return produce_pair_with(record_batch(15, 1024))


def perf_fetch_pair() -> tuple[bytes, bytes]:
    """The captured Fetch with a 1 MiB response: 64 batches of 16 traced 1 KiB records."""
    blob = b"".join(record_batch(16, 1024, 16 * n, sampled_ratio=0.01) for n in range(64))
    return fetch_pair_with(blob, 64 * 16)


PAIRS: dict[str, Callable[[], tuple[bytes, bytes]]] = {
    "java-produce": lambda: frame_pair("Produce"),
    "java-fetch": lambda: frame_pair("Fetch"),
    "perf-produce": perf_produce_pair,
    "perf-fetch": perf_fetch_pair,
}


def exchange(tracing: bool) -> tuple[KafkaExchange, SpanPipeline | None]:
    """A connection's exchange, and the span pipeline to shut down after (tracing only)."""
    metrics = Metrics()
    interceptors: list[object] = []
    pipeline = None
    if tracing:
        tracing_core, _, pipeline = core("0.01")
        interceptors = [ProduceTracer(tracing_core, metrics), FetchTracer(tracing_core, metrics)]
    relay = KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 1), BrokerEndpoint(1, "broker", 9092)),
        brokers=BrokerDirectory("127.0.0.1", PortMapping(20000, {})),
        topics=TopicNames(),
        interceptors=Interceptors(interceptors),
        metrics=metrics,
        max_frame_size=1 << 27,
    )
    return relay, pipeline


def cost(
    pair: tuple[bytes, bytes],
    tracing: bool,
    requests: int,
    rounds: int = 5,
    thrasher: CacheThrasher | None = None,
) -> float:
    """µs per request+response, the best of `rounds` rounds (a shared machine only ever adds
    time); the response is fed in socket-sized reads. With a `thrasher`, this process's CPU time
    per request, less that of the hand-overs alone (each the best of its rounds)."""
    request, response = pair
    reads = [response[i : i + READ_SIZE] for i in range(0, len(response), READ_SIZE)]
    relay, pipeline = exchange(tracing)
    per_round = max(1, requests // rounds)
    clock = time.perf_counter if thrasher is None else time.process_time
    hand_over = thrasher.hand_over if thrasher is not None else (lambda: None)
    best = baseline = float("inf")
    try:
        for _ in range(rounds):
            started = clock()
            for _ in range(per_round):
                hand_over()
                relay.from_client(request)
                for data in reads:
                    for action in relay.from_server(data).after_send:
                        action()
            best = min(best, clock() - started)
            if thrasher is not None:
                started = clock()
                for _ in range(per_round):
                    hand_over()
                baseline = min(baseline, clock() - started)
    finally:
        if pipeline is not None:
            pipeline.shutdown()
    if thrasher is not None:
        best -= baseline
    return best / per_round * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--only", help="comma-separated pairs: " + ", ".join(PAIRS))
    parser.add_argument(
        "--switch",
        type=int,
        metavar="MIB",
        help="before each request, let another process on the same CPU write MIB of memory",
    )
    args = parser.parse_args()
    if args.switch is not None and args.switch < 1:
        parser.error("--switch needs at least 1 MiB")
    keep_large_buffers_on_heap()  # as the proxy does at start (KTP_TUNE_ALLOCATOR)
    random.seed(1)
    thrasher = CacheThrasher(args.switch) if args.switch is not None else None
    if thrasher is not None:
        print(f"cold caches: {args.switch} MiB written on CPU {thrasher.cpu} before each request")
    try:
        for name in args.only.split(",") if args.only else PAIRS:
            pair = PAIRS[name]()
            count = args.requests if len(pair[1]) < READ_SIZE else max(1, args.requests // 50)
            for tracing in (False, True):
                mode = "tracing 1%" if tracing else "tracing off"
                micros = cost(pair, tracing, count, thrasher=thrasher)
                print(f"{name:<13} {mode:<12} {micros:8.1f} µs per request+response", flush=True)
    finally:
        if thrasher is not None:
            thrasher.close()


if __name__ == "__main__":
    main()
