"""Fuzz targets: functions of arbitrary bytes that may raise only the codec's own errors.

Each target takes one input and feeds it to a part of the proxy that reads peer bytes. The only
exceptions allowed out are the codec's "the peer sent garbage" errors (`ALLOWED`); anything else
(IndexError, struct.error, UnicodeDecodeError, MemoryError, a wrong result) is a proxy bug, and a
hard process crash is one too. The same targets serve two drivers:

- atheris, coverage-guided, one process per target (atheris instruments the interpreter):
  ``python -m tests.fuzz.atheris_targets TARGET [libFuzzer flags] [SEED_DIR]``; run by
  tests/fuzz/test_atheris.py, which writes the seed corpus with `write_seeds`.
- hypothesis, in the test process: tests/fuzz/test_properties.py calls the same targets on
  mutated captured frames.

kio's native reader reserves memory for an array from the count on the wire before reading any
element, so a lying count once aborted the whole process (SIGABRT). The proxy now checks array
counts itself before kio reads (proxy.codec.guard); tests/fuzz/test_hostile_input.py keeps the
reproducer.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from proxy.brokers import BrokerDirectory, PortMapping, TopicNames
from proxy.codec.apis import ApiKey
from proxy.codec.compression import CompressionError
from proxy.codec.errors import ProtocolError
from proxy.codec.framing import SIZE_PREFIX, Forward, FrameScanner, Held
from proxy.codec.guard import check_array_counts
from proxy.codec.headers import REQUEST_PEEK_SIZE, parse_request_header, peek_request
from proxy.codec.messages import decode_request, decode_response
from proxy.codec.produce import iter_request_partitions
from proxy.codec.records import (
    RecordBatchError,
    add_headers,
    append_header_to_each,
    iter_batches,
)
from proxy.exchange import KafkaExchange
from proxy.interceptors import BrokerEndpoint, ConnectionContext, Interceptors
from proxy.metrics import Metrics
from proxy.tracing.propagation import Propagation
from proxy.tracing.traceparent import WIRE_PREFIX, format_traceparent, parse_traceparent

#: The codec's own errors: the peer's fault, which close the connection (FrameTooLarge is a
#: ProtocolError). Every other exception escaping a target is a bug in the proxy.
ALLOWED: tuple[type[Exception], ...] = (ProtocolError, RecordBatchError, CompressionError)

CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "captured"
MAX_FRAME_SIZE = 1 << 24
TRACEPARENT_VALUE = format_traceparent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True)

#: What the targets saw, for the fuzz session's summary (see `main`).
STATS: collections.Counter[str] = collections.Counter()


# -- the kio guard ---------------------------------------------------------------------------------


class KioWouldAbort(BaseException):
    """An input on which kio's reader would reserve a huge array (the proxy's guard rejects it)."""


def kio_would_abort(schema: type, body: bytes | memoryview, offset: int) -> bool:
    """Whether the proxy's own guard (proxy.codec.guard) rejects this input's array counts."""
    try:
        check_array_counts(schema, memoryview(body), offset)
    except ProtocolError:
        return True
    return False


@contextlib.contextmanager
def kio_abort_guard() -> Iterator[None]:
    """Kept for the drivers: the proxy now guards kio itself (proxy.codec.guard), so nothing to
    patch; a process abort under fuzzing is a real crash again."""
    yield


# -- seeds: real client conversations --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    is_request: bool
    api_key: int
    api_version: int
    data: bytes  # size prefix included


@cache
def conversations() -> tuple[tuple[Frame, ...], ...]:
    """Every captured connection's frames, in wire order."""
    found: list[tuple[Frame, ...]] = []
    for index_path in sorted(CAPTURED.glob("*/index.json")):
        index = json.loads(index_path.read_text())
        by_connection: dict[int, list[Frame]] = collections.defaultdict(list)
        for entry in index["frames"]:
            by_connection[entry["connection"]].append(
                Frame(
                    entry["direction"] == "request",
                    entry["api_key"],
                    entry["api_version"],
                    (index_path.parent / entry["file"]).read_bytes(),
                )
            )
        found.extend(tuple(frames) for _, frames in sorted(by_connection.items()))
    return tuple(found)


@cache
def captured_record_sets() -> tuple[bytes, ...]:
    """The `records` fields of captured Produce requests and Fetch responses (all codecs)."""
    found: list[bytes] = []
    for conversation in conversations():
        for frame in conversation:
            body = memoryview(frame.data)[SIZE_PREFIX:]
            if frame.api_key == ApiKey.PRODUCE and frame.is_request:
                header = parse_request_header(body)
                if header.size is None:
                    continue
                payload = decode_request(frame.api_key, frame.api_version, body, header.size)
                found += [p.records for p in iter_request_partitions(payload) if p.records]
            elif frame.api_key == ApiKey.FETCH and not frame.is_request:
                _, payload = decode_response(frame.api_key, frame.api_version, body)
                found += [p.records for t in payload.responses for p in t.partitions if p.records]
    return tuple(dict.fromkeys(found))


# -- the exchange under test -----------------------------------------------------------------------


@dataclasses.dataclass
class TracingSetup:
    interceptors: Interceptors
    metrics: Metrics


@cache
def tracing_setup() -> TracingSetup:
    """Produce and fetch tracing interceptors, sampling everything, exporting nowhere."""
    from opentelemetry.sdk.resources import Resource

    from proxy.tracing.consumer import FetchTracer
    from proxy.tracing.core import TracingCore
    from proxy.tracing.export import SpanPipeline
    from proxy.tracing.producer import ProduceTracer
    from proxy.tracing.sampling import sampler_from_env

    metrics = Metrics()
    core = TracingCore(
        sampler=sampler_from_env("always_on", None),
        propagation=Propagation(["tracecontext", "baggage"]),
        pipeline=SpanPipeline(None, metrics),  # spans are built, then dropped: a no-op exporter
        resource=Resource.create({"service.name": "fuzz"}),
    )
    # A second consumer side, as an OTLP exporter's proxy has it: parent-based sampling, spans
    # written in wire form (`receive_spans`) and dropped by an exporter that takes them.
    wire_metrics = Metrics()
    wire_core = TracingCore(
        sampler=sampler_from_env("parentbased_always_on", None),
        propagation=Propagation(["tracecontext", "baggage"]),
        pipeline=SpanPipeline(_DroppingExporter(), wire_metrics, delay_seconds=60),
        resource=Resource.create({"service.name": "fuzz-wire"}),
    )
    interceptors = Interceptors(
        [
            ProduceTracer(core, metrics),
            FetchTracer(core, metrics),
            FetchTracer(wire_core, wire_metrics),
        ]
    )
    return TracingSetup(interceptors, metrics)


class _DroppingExporter:
    """Takes spans in wire form and sends them nowhere."""

    takes_encoded_spans = True

    def export(self, spans: object) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def new_exchange(*, traced: bool = True, max_frame_size: int = MAX_FRAME_SIZE) -> KafkaExchange:
    setup = tracing_setup()
    return KafkaExchange(
        ConnectionContext(1, ("127.0.0.1", 50000), BrokerEndpoint(1, "127.0.0.1", 9092)),
        brokers=BrokerDirectory("sidecar.test", PortMapping(39000, {})),
        topics=TopicNames(),
        interceptors=setup.interceptors if traced else Interceptors(),
        metrics=setup.metrics if traced else Metrics(),
        max_frame_size=max_frame_size,
    )


def feed(exchange: KafkaExchange, is_request: bool, data: bytes) -> bytes:
    """One read through the exchange, as the relay does it; returns what was sent on.

    The after-send actions run too: the relay runs them outside its error handling, so they must
    raise nothing at all.
    """
    outcome = (exchange.from_client if is_request else exchange.from_server)(data)
    sent = b"".join(bytes(piece) for piece in outcome.send)
    for action in outcome.after_send:
        action()
    return sent


def replay_with(frames: tuple[Frame, ...], index: int, replacement: bytes) -> None:
    """Replay a conversation with frame `index` replaced, up to the frame after it.

    Only the codec's own errors may escape (the relay closes the connection on them).
    """
    exchange = new_exchange()
    for position, frame in enumerate(frames[: index + 2]):
        data = replacement if position == index else frame.data
        try:
            feed(exchange, frame.is_request, data)
        except ALLOWED:
            STATS["exchange_closed"] += 1
            return
    STATS["exchange_survived"] += 1


# -- targets ---------------------------------------------------------------------------------------


#: Bugs found by fuzzing and not fixed yet, each with a strict xfail reproducer in
#: tests/fuzz/test_hostile_input.py. Fuzzing counts and skips them, so a session can look for new
#: bugs past the known ones. Empty: the five found so far are fixed and their reproducers pass.
KNOWN_BUGS: dict[str, str] = {}


def known_bug(exc: BaseException) -> str | None:
    """Which of `KNOWN_BUGS` an exception is, or None for a new one."""
    if isinstance(exc, KioWouldAbort):
        return "kio_array_reserve_abort"
    return None


def _run(target: Callable[[bytes], None], data: bytes) -> None:
    with kio_abort_guard():
        try:
            target(data)
        except KioWouldAbort as exc:
            STATS[f"known_bug:{known_bug(exc)}"] += 1
        except Exception as exc:
            name = known_bug(exc)
            if name is None:
                raise
            STATS[f"known_bug:{name}"] += 1


def frames_and_headers(data: bytes) -> None:
    """FrameScanner over a request stream (in two reads), then each held frame's header.

    Input: byte 0 picks where the stream is split, byte 1 which frames are held; the rest is the
    stream.

    Besides raising only ALLOWED errors, the scanner must pass every byte it consumed on, in
    order: forwarded slices and held frames together are exactly a prefix of the input.
    """
    if len(data) < 2:
        return
    stream = data[2:]
    split = data[0] * 257 % (len(stream) or 1)
    held_every = data[1] % 3
    count = 0

    def classify(peek: memoryview, size: int) -> Any:
        nonlocal count
        count += 1
        peek_request(peek)
        return count if held_every and count % held_every == 0 else None

    scanner = FrameScanner(peek_size=REQUEST_PEEK_SIZE, max_frame_size=1 << 16, classify=classify)
    out = bytearray()
    try:
        for chunk in (stream[:split], stream[split:]):
            for piece in scanner.feed(chunk):
                if isinstance(piece, Held):
                    out += piece.frame
                    parse_request_header(piece.body)
                else:
                    assert isinstance(piece, Forward)
                    out += piece.data
        assert stream.startswith(out), "the scanner changed or reordered bytes"
        assert len(out) + scanner.buffered == len(stream), "the scanner lost bytes"
    except ALLOWED:
        STATS["rejected"] += 1


def exchange_conversation(data: bytes) -> None:
    """A real conversation with one frame replaced by the input, through a traced exchange.

    Input: byte 0 picks the conversation, byte 1 the frame, the rest replaces that frame.
    """
    if len(data) < 2:
        return
    table = conversations()
    frames = table[data[0] % len(table)]
    replay_with(frames, data[1] % len(frames), data[2:])


def record_batches(data: bytes) -> None:
    """A partition's records field: every batch's records, then a traceparent added to each.

    A batch that add_headers rewrote must parse back to the same records plus the new header,
    and whatever the bulk path (append_header_to_each) accepts, it must write exactly as
    add_headers does.
    """
    try:
        batches = list(iter_batches(data))
        for batch in batches:
            records = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch.records()]
            wanted = range(0, max(batch.record_count, 0), 3)
            appended = append_header_to_each(
                batch, [WIRE_PREFIX + TRACEPARENT_VALUE] * batch.record_count, wanted
            )
            rebuilt = add_headers(batch.raw, lambda _record: [("traceparent", TRACEPARENT_VALUE)])
            if appended is not None:
                assert appended[0] == rebuilt
                assert [r.offset for r in appended[1]] == [records[i][0] for i in wanted]
            if rebuilt is None:
                continue
            (again,) = iter_batches(rebuilt)
            assert again.crc_is_valid()
            assert [
                (r.offset, r.timestamp, r.key, r.value, r.headers) for r in again.records()
            ] == [(*r[:4], (*r[4], ("traceparent", TRACEPARENT_VALUE))) for r in records]
    except ALLOWED:
        STATS["rejected"] += 1


@cache
def _propagations() -> tuple[Propagation, ...]:
    return (
        Propagation(["tracecontext", "baggage"]),
        Propagation(["tracecontext", "b3", "b3multi", "jaeger", "baggage"]),
    )


HEADER_KEYS = (
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "uber-trace-id",
    "TraceParent",
)


def headers_from_bytes(data: bytes) -> list[tuple[str, bytes | None]]:
    """Record headers from arbitrary bytes: (key selector, value length, value) triples."""
    headers: list[tuple[str, bytes | None]] = []
    pos = 0
    while pos + 2 <= len(data):
        selector, length = data[pos], data[pos + 1]
        pos += 2
        key = HEADER_KEYS[selector % len(HEADER_KEYS)]
        if selector >= 0xF0:
            key = data[pos : pos + 4].decode("utf-8", "replace")
        value = None if length == 0xFF else data[pos : pos + length]
        headers.append((key, value))
        pos += 0 if value is None else length
    return headers


def propagation_extract(data: bytes) -> None:
    """Trace headers from hostile producers: extraction never raises, whatever the bytes."""
    parsed = parse_traceparent(data)
    if parsed is not None:
        trace_id, span_id, _sampled = parsed
        assert 0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64
    headers = headers_from_bytes(data)
    for propagation in _propagations():
        propagation.carries_context(headers)
        context = propagation.extract(headers)
        if context is not None:
            assert 0 < context.trace_id < 1 << 128 and 0 < context.span_id < 1 << 64


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames_and_headers,
    "exchange": exchange_conversation,
    "records": record_batches,
    "propagation": propagation_extract,
}


def run_target(name: str, data: bytes) -> None:
    """One execution of a target, with the kio guard on."""
    _run(TARGETS[name], data)


# -- seed corpus -----------------------------------------------------------------------------------


def seeds(name: str) -> list[bytes]:
    """Starting inputs for a target, from the captured frames."""
    if name == "frames":
        found = []
        for conversation in conversations():
            requests = b"".join(f.data for f in conversation if f.is_request)
            found.append(bytes([len(found) % 256, 2]) + requests)
        return found
    if name == "exchange":
        found = []
        for c_index, conversation in enumerate(conversations()):
            for f_index, frame in enumerate(conversation):
                if c_index < 256 and f_index < 256:
                    found.append(bytes([c_index, f_index]) + frame.data)
        return found
    if name == "records":
        return list(captured_record_sets())
    if name == "propagation":
        value = TRACEPARENT_VALUE
        b3 = b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"
        return [
            value,
            bytes([0, len(value)]) + value,
            bytes([3, len(b3)]) + b3 + bytes([1, 3]) + b"k=v",
            bytes([7, 40]) + b"0af7651916cd43dd8448eb211c80319c:b7ad6b71:0:1"[:40],
        ]
    raise KeyError(name)


def write_seeds(name: str, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = seeds(name)
    for number, data in enumerate(corpus):
        (directory / f"seed-{number:04d}").write_bytes(data)
    return len(corpus)


# -- atheris entry point ---------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """``python -m tests.fuzz.atheris_targets TARGET [libFuzzer args] [CORPUS_DIR...]``.

    Writes a JSON summary of `STATS` to $KTP_FUZZ_STATS when set. Without atheris installed, runs
    `fallback_fuzz` instead (random mutations of the corpus, no coverage feedback).
    """
    name = argv[1]
    target = TARGETS[name]
    logging.disable(logging.CRITICAL)  # interceptor failures are logged with tracebacks
    conversations()  # warm the caches so the first executions are not slow
    captured_record_sets()
    stats_path = os.environ.get("KTP_FUZZ_STATS")

    def write_stats() -> None:
        if stats_path:
            Path(stats_path).write_text(json.dumps(dict(STATS)))

    atexit.register(write_stats)

    def one_input(data: bytes) -> None:
        STATS["executions"] += 1
        _run(target, data)
        if STATS["executions"] % 1000 == 0:
            write_stats()

    try:
        import atheris
    except ImportError:
        fallback_fuzz(one_input, argv[2:])
        write_stats()
        return
    instrument_proxy(atheris)
    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()


def _functions(value: object, module: str) -> Iterator[Any]:
    value = getattr(value, "__wrapped__", value)  # functools.cache
    if inspect.isfunction(value) and value.__module__ == module:
        yield value
    elif inspect.isclass(value) and value.__module__ == module:
        for member in vars(value).values():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            elif isinstance(member, property):
                yield from (f for f in (member.fget, member.fset) if f is not None)
                continue
            yield from _functions(member, module)


def instrument_proxy(atheris: Any) -> int:
    """Coverage-instrument the proxy's own code (and nested functions) in place.

    atheris.instrument_all() would take ~80 s here instrumenting every loaded library; the
    proxy's modules take well under a second and are what the coverage should steer.
    """
    done = 0
    for name, module in list(sys.modules.items()):
        if name != "proxy" and not name.startswith("proxy."):
            continue
        for value in list(vars(module).values()):
            for function in _functions(value, name):
                atheris.instrument_func(function)
                done += 1
    return done


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few hostile edits: bit flips, truncation, huge/negative lengths, inserted junk."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out += rng.randbytes(rng.randint(1, 16))
            continue
        at = rng.randrange(len(out))
        kind = rng.randrange(6)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at : at + 4] = rng.choice(
                [b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\0\0\0", b"\0\0\0\0"]
            )
        elif kind == 3:
            out[at] = rng.choice([0x00, 0x01, 0x04, 0x07, 0x7F, 0x80, 0xFF])
        elif kind == 4:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            del out[at : at + rng.randint(1, 16)]
    return bytes(out)


def fallback_fuzz(one_input: Callable[[bytes], None], args: list[str]) -> None:
    """Coverage-less fuzzing with libFuzzer's flags (-runs, -max_total_time) and corpus dirs."""
    options = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    runs = int(options.get("runs", "10000"))
    seconds = float(options.get("max_total_time", "0")) or float("inf")
    corpus = [
        path.read_bytes()
        for directory in args
        if not directory.startswith("-")
        for path in sorted(Path(directory).iterdir())
    ] or [b""]
    rng = random.Random(int(options.get("seed", "1")))
    started = time.monotonic()
    done = 0
    while done < runs and time.monotonic() - started < seconds:
        one_input(mutate(rng, rng.choice(corpus)))
        done += 1
    print(f"Done {done} runs in {int(time.monotonic() - started)} second(s) (no atheris)")


if __name__ == "__main__":
    main(sys.argv)
