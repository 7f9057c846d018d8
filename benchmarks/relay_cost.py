"""CPU the relay spends per read, in-process: from the event loop's callback to the write.

One round trip of e2e-py's shape goes through two relayed connections (a producer's and a
consumer's) whose transports take every write and send nothing: a Produce request of one
100-byte record, its response, a Fetch request, and a Fetch response with that record. Each read
is timed from `data_received` to its return, so the write, and what runs once the bytes went out,
are counted. The modes: the proxy with tracing off, at a sampling ratio of 0 (every record
gets a context, no span is made: propagation alone) and at 1%; and the bare relay
(`bare_relay.py`), which only writes what it reads.

    .venv/bin/python -m benchmarks.relay_cost [--switch MIB] [--reads N]

With `--switch MIB`, before every read the CPU goes to another process that writes MIB of
memory (`cache_thrasher.py`), as the broker and the clients do between two reads of the relay:
the same work on cold caches. A read the proxy has to wait for on a shared machine runs on such
caches, so the cold figures are the ones that decide its latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.bare_relay import _End
from benchmarks.cache_thrasher import CacheThrasher
from benchmarks.exchange_cost import fetch_pair_with, produce_pair_with, record_batch
from benchmarks.tracing_cost import core
from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec.messages import decode_response
from proxy.config import HostPort, load_settings
from proxy.groups import GroupDirectory
from proxy.interceptors import Interceptors
from proxy.metrics import Metrics
from proxy.relay import ClientConnection, Runtime, ServerConnection
from proxy.tracing.consumer import FetchTracer
from proxy.tracing.producer import ProduceTracer

READS = ("produce request", "produce response", "fetch request", "fetch response")
MODES = ("bare", "off", "ratio-0", "1pct")
TOPIC = "orders"


class _Sink:
    """A transport that takes every write and never pushes back."""

    def __init__(self, protocol: Any = None) -> None:
        self.protocol = protocol

    def write(self, data: Any) -> None:
        pass

    def writelines(self, pieces: Any) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555)

    def close(self) -> None:
        pass


def round_trip_frames(sampled_ratio: float) -> tuple[bytes, bytes, bytes, bytes]:
    """The captured Java-client Produce (v13) and Fetch (v18) pairs, each with one 100-byte
    record; the fetched record carries a traceparent when `sampled_ratio` >= 0."""
    produce_request, produce_response = produce_pair_with(record_batch(1, 100))
    fetched = record_batch(1, 100, 5, sampled_ratio=sampled_ratio)
    fetch_request, fetch_response = fetch_pair_with(fetched, 6)
    return produce_request, produce_response, fetch_request, fetch_response


def _relayed(runtime: Runtime) -> tuple[Callable[[bytes], None], Callable[[bytes], None]]:
    """A relayed connection on `_Sink` transports: how the event loop hands it the client's
    reads and the broker's. Its dial never runs; the broker side is attached by hand."""
    client = ClientConnection(runtime, 1, lambda: [])
    client_side = _Sink(client)

    async def attached() -> None:
        client.connection_made(client_side)  # type: ignore[arg-type]
        task = client._connect_task
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    asyncio.run(attached())
    broker_side = _Sink()
    broker_side.protocol = ServerConnection(client)
    client._attach_server(broker_side, HostPort("127.0.0.1", 9092))  # type: ignore[arg-type]
    return client_side.protocol.data_received, broker_side.protocol.data_received


def _bare() -> tuple[Callable[[bytes], None], Callable[[bytes], None]]:
    upstream, downstream = _End(), _End()
    upstream.peer, downstream.peer = downstream, upstream
    upstream.transport = _Sink()  # type: ignore[assignment]
    downstream.transport = _Sink()  # type: ignore[assignment]
    return downstream.data_received, upstream.data_received


def reads_of(mode: str) -> tuple[list[Callable[[bytes], None]], list[bytes], Callable[[], None]]:
    """The four reads' callbacks in `mode`, their frames, and what to call when done."""
    frames = round_trip_frames(-1 if mode in ("bare", "off") else 0.01 if mode == "1pct" else 0)
    if mode == "bare":
        producer, consumer = _bare(), _bare()
        return [*producer, *consumer], list(frames), lambda: None
    metrics = Metrics()
    interceptors: list[object] = []
    done: Callable[[], None] = lambda: None  # noqa: E731
    if mode != "off":
        tracing, _, pipeline = core("0.01" if mode == "1pct" else "0")
        interceptors = [ProduceTracer(tracing, metrics), FetchTracer(tracing, metrics)]
        done = pipeline.shutdown
    topics = TopicNames()
    # The clients fetched the topic's metadata first, so the proxy knows its name by its id.
    fetched = decode_response(1, 18, memoryview(frames[3])[4:])[1]
    topics.update({fetched.responses[0].topic_id: TOPIC})
    runtime = Runtime(
        load_settings({"KTP_UPSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}),
        BrokerDirectory("127.0.0.1", PortMapping(20000, {})),
        topics,
        GroupDirectory(),
        Interceptors(interceptors),
        metrics,
        set(),
    )
    producer, consumer = _relayed(runtime), _relayed(runtime)
    return [*producer, *consumer], list(frames), done


def cost(mode: str, reads: int, thrasher: CacheThrasher | None) -> list[float]:
    """The median µs of each of the four reads over `reads` round trips (the first tenth not
    counted), this thread's CPU time only."""
    callbacks, frames, done = reads_of(mode)
    clock = time.thread_time_ns
    spent: list[list[int]] = [[] for _ in READS]
    warm_up = reads // 10
    try:
        for n in range(warm_up + reads):
            for read, data, times in zip(callbacks, frames, spent, strict=True):
                if thrasher is not None:
                    thrasher.hand_over()
                started = clock()
                read(data)
                if n >= warm_up:
                    times.append(clock() - started)
    finally:
        done()
    return [statistics.median(times) / 1000 for times in spent]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=3000, help="round trips (default 3000)")
    parser.add_argument(
        "--switch", type=int, metavar="MIB", help="cold caches: MIB written between reads"
    )
    parser.add_argument("--only", help="comma-separated modes: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = args.only.split(",") if args.only else list(MODES)
    thrasher = CacheThrasher(args.switch) if args.switch else None
    caches = f"cold ({args.switch} MiB between reads)" if thrasher else "warm"
    print(f"µs of CPU per read, median of {args.reads} round trips, {caches}")
    print(f"| mode | {' | '.join(READS)} | round trip |")
    print(f"|---|{'---|' * (len(READS) + 1)}")
    try:
        for mode in modes:
            figures = cost(mode, args.reads, thrasher)
            cells = " | ".join(f"{figure:.2f}" for figure in figures)
            print(f"| {mode} | {cells} | {sum(figures):.1f} |")
    finally:
        if thrasher is not None:
            thrasher.close()


if __name__ == "__main__":
    main()
