"""One driver per Kafka client library, all with the same produce/consume interface.

The proxy must be transparent to every client, and clients differ in the protocol versions and
features they use (librdkafka, the Java client, kafka-python's and aiokafka's own protocol code),
so integration tests run the same scenario through each driver and compare what came back with
what was sent, byte for byte.

Limits of the command-line drivers (kcat, Java console tools): they read and print text lines, so
their records must be `text_safe` (printable ASCII without the delimiters below, keys and values
never null for kcat). kcat sets headers per invocation (`-H`), so it produces each run of records
with identical headers in one invocation; give it data whose headers change rarely (see
`make_records(header_block=...)`).
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, ClassVar

from testbed.java_tools import ConsoleRecord, console_consumer, console_producer

Headers = tuple[tuple[str, bytes], ...]

CODECS: tuple[str, ...] = ("none", "gzip", "snappy", "lz4", "zstd")

TRACEPARENT_RE = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
"""W3C trace-context version 00: version-traceid-parentid-flags, lower-case hex."""


@dataclass(frozen=True)
class Record:
    """A record to produce."""

    key: bytes | None
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True)
class Received:
    """A record as a consumer got it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


class DeliveryError(AssertionError):
    """A producer reported that records were not delivered."""


# -- drivers -------------------------------------------------------------------------------------


@dataclass
class ClientDriver:
    """Common interface; subclasses implement produce/consume with one client library.

    produce options: compression (one of CODECS), idempotent, acks. consume options:
    isolation ("read_uncommitted" / "read_committed"). Consumers join consumer group `group`,
    start from the earliest offset, stop once they hold `count` records (or at `timeout`),
    commit their offsets and leave the group.
    """

    name: ClassVar[str] = ""
    #: Round-trips arbitrary bytes in keys, values and header values (and null keys/values).
    binary: ClassVar[bool] = True
    #: Can give every record its own headers.
    per_record_headers: ClassVar[bool] = True
    #: Options passed to every client (e.g. timeouts); merged under per-call options.
    extra: dict[str, Any] = field(default_factory=dict)

    def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        *,
        compression: str = "none",
        idempotent: bool = False,
        acks: str = "all",
        timeout: float = 120.0,
    ) -> None:
        raise NotImplementedError

    def consume(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        count: int,
        timeout: float = 60.0,
        *,
        isolation: str = "read_uncommitted",
    ) -> list[Received]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


class KafkaPythonDriver(ClientDriver):
    """kafka-python: its own pure-Python protocol implementation."""

    name = "kafka-python"

    def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        *,
        compression: str = "none",
        idempotent: bool = False,
        acks: str = "all",
        timeout: float = 120.0,
    ) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks=-1 if acks == "all" else int(acks),
            compression_type=None if compression == "none" else compression,
            enable_idempotence=idempotent,
            # Retries (e.g. NOT_LEADER right after a topic is created) reorder batches unless
            # the producer is idempotent or sends one request at a time: tests check order.
            max_in_flight_requests_per_connection=5 if idempotent else 1,
            linger_ms=5,
            **self.extra,
        )
        try:
            futures = [
                producer.send(topic, key=r.key, value=r.value, headers=list(r.headers))
                for r in records
            ]
            producer.flush(timeout)
            errors = [f.exception for f in futures if not f.succeeded()]
        finally:
            producer.close(timeout=10)
        if errors:
            raise DeliveryError(f"{len(errors)} records not delivered, first: {errors[0]!r}")

    def consume(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        count: int,
        timeout: float = 60.0,
        *,
        isolation: str = "read_uncommitted",
        commit: bool = True,
    ) -> list[Received]:
        """With `commit` False, as a consumer of `group` that fails before committing: the
        next one in the group reads the same records again."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation,
            **self.extra,
        )
        received: list[Received] = []
        try:
            deadline = time.monotonic() + timeout
            while len(received) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    received += [
                        Received(m.partition, m.offset, m.key, m.value, _headers(m.headers))
                        for m in batch
                    ]
            if received and commit:
                consumer.commit()
        finally:
            consumer.close(autocommit=False)
        return received


class ConfluentDriver(ClientDriver):
    """confluent-kafka: librdkafka, the C client most non-Java clients wrap."""

    name = "confluent-kafka"

    def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        *,
        compression: str = "none",
        idempotent: bool = False,
        acks: str = "all",
        timeout: float = 120.0,
    ) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": acks,
                "compression.type": compression,
                "enable.idempotence": idempotent,
                "max.in.flight.requests.per.connection": 5 if idempotent else 1,
                "linger.ms": 5,
                # Java-compatible hashing: the default (consistent_random) scatters empty keys
                # like null ones, which would break the per-key order check.
                "partitioner": "murmur2_random",
                **self.extra,
            }
        )
        errors: list[object] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(err)

        for r in records:
            while True:
                try:
                    producer.produce(
                        topic, r.value, r.key, headers=list(r.headers), on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(timeout)
        if left or errors:
            raise DeliveryError(
                f"{left} records still queued, {len(errors)} failed; first: {errors[:1]}"
            )

    def consume(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        count: int,
        timeout: float = 60.0,
        *,
        isolation: str = "read_uncommitted",
    ) -> list[Received]:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": isolation,
                **self.extra,
            }
        )
        received: list[Received] = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + timeout
            while len(received) < count and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=1000, timeout=0.5):
                    if m.error() is not None:
                        raise AssertionError(f"consumer error: {m.error()}")
                    received.append(
                        Received(
                            m.partition(), m.offset(), m.key(), m.value(), _headers(m.headers())
                        )
                    )
            if received:
                consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        return received


class AiokafkaDriver(ClientDriver):
    """aiokafka: asyncio client with an older protocol implementation (Produce <= v8)."""

    name = "aiokafka"

    def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        *,
        compression: str = "none",
        idempotent: bool = False,
        acks: str = "all",
        timeout: float = 120.0,
    ) -> None:
        asyncio.run(
            asyncio.wait_for(
                self._produce(bootstrap, topic, records, compression, idempotent, acks), timeout
            )
        )

    async def _produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        compression: str,
        idempotent: bool,
        acks: str,
    ) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks=-1 if acks == "all" else int(acks),
            compression_type=None if compression == "none" else compression,
            enable_idempotence=idempotent,
            linger_ms=5,
            **self.extra,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, key=r.key, value=r.value, headers=list(r.headers))
                for r in records
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await producer.stop()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise DeliveryError(f"{len(errors)} records not delivered, first: {errors[0]!r}")

    def consume(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        count: int,
        timeout: float = 60.0,
        *,
        isolation: str = "read_uncommitted",
    ) -> list[Received]:
        return asyncio.run(self._consume(bootstrap, topic, group, count, timeout, isolation))

    async def _consume(
        self, bootstrap: str, topic: str, group: str, count: int, timeout: float, isolation: str
    ) -> list[Received]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation,
            **self.extra,
        )
        received: list[Received] = []
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while len(received) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    received += [
                        Received(m.partition, m.offset, m.key, m.value, _headers(m.headers))
                        for m in batch
                    ]
            if received:
                await consumer.commit()
        finally:
            await consumer.stop()
        return received


# kcat: keys and values are split by KEY_DELIM on input; output fields by FIELD_SEP, records by
# RECORD_SEP; key and value lengths (%K, %S) are printed too, so parsing never guesses.
_KCAT_KEY_DELIM = "\x1f"
_KCAT_FIELD_SEP = b"\x1f"
_KCAT_RECORD_SEP = b"\x1e"
_KCAT_FORMAT = "%p\x1f%o\x1f%K\x1f%S\x1f%k\x1f%s\x1f%h\x1e"


class KcatDriver(ClientDriver):
    """kcat (librdkafka's command-line client, as its own build), driven as a subprocess.

    Text only; headers per invocation: each run of consecutive records with equal headers is
    produced by one `kcat -P` (runs go one after the other, so per-key order is kept).
    """

    name = "kcat"
    binary = False
    per_record_headers = False
    max_runs: ClassVar[int] = 50

    def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        *,
        compression: str = "none",
        idempotent: bool = False,
        acks: str = "all",
        timeout: float = 120.0,
    ) -> None:
        runs = [(h, list(group)) for h, group in groupby(records, key=lambda r: r.headers)]
        if len(runs) > self.max_runs:
            raise ValueError(f"{len(runs)} runs of distinct headers: too many kcat invocations")
        deadline = time.monotonic() + timeout
        for headers, group in runs:
            lines = []
            for r in group:
                if r.key is None or r.value is None:
                    raise ValueError("kcat driver: keys and values must not be null")
                key, value = r.key.decode("ascii"), r.value.decode("ascii")
                if _KCAT_KEY_DELIM in key or "\n" in key + value:
                    raise ValueError(f"kcat driver: cannot send key {key!r} / value {value!r}")
                lines.append(f"{key}{_KCAT_KEY_DELIM}{value}\n")
            header_args: list[str] = []
            for name, hvalue in headers:
                text = hvalue.decode("ascii")
                if "=" in name or "," in name + text:
                    raise ValueError(f"kcat driver: cannot send header {name!r}={text!r}")
                header_args += ["-H", f"{name}={text}"]
            cmd = [
                _kcat(), "-P", "-b", bootstrap, "-t", topic, "-K", _KCAT_KEY_DELIM,
                "-z", compression, *header_args,
                "-X", f"acks={acks}",
                "-X", f"enable.idempotence={str(idempotent).lower()}",
                "-X", "linger.ms=5",
                *_kcat_extra(self.extra),
            ]  # fmt: skip
            result = subprocess.run(
                cmd,
                input="".join(lines).encode("ascii"),
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            if result.returncode != 0:
                raise DeliveryError(
                    f"kcat -P exited {result.returncode}: {result.stderr.decode(errors='replace')}"
                )

    def consume(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        count: int,
        timeout: float = 60.0,
        *,
        isolation: str = "read_uncommitted",
    ) -> list[Received]:
        cmd = [
            _kcat(), "-C", "-b", bootstrap, "-G", group, topic,
            "-c", str(count), "-f", _KCAT_FORMAT, "-q",
            "-X", "auto.offset.reset=earliest",
            "-X", f"isolation.level={isolation}",
            *_kcat_extra(self.extra),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: kcat closes the consumer and flushes what it printed
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        if proc.returncode not in (0, -15):
            raise AssertionError(
                f"kcat -C exited {proc.returncode}: {err.decode(errors='replace')}"
            )
        return parse_kcat_output(out)


def _kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        raise FileNotFoundError("kcat not found: run scripts/setup")
    return path


def _kcat_extra(extra: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in extra.items():
        args += ["-X", f"{key}={value}"]
    return args


def parse_kcat_output(out: bytes) -> list[Received]:
    """Parse kcat -C output printed with _KCAT_FORMAT (lengths make key/value parsing exact)."""
    received: list[Received] = []
    pos = 0
    while pos < len(out):
        fields: list[bytes] = []
        for _ in range(4):
            end = out.index(_KCAT_FIELD_SEP, pos)
            fields.append(out[pos:end])
            pos = end + 1
        partition, offset, key_len, value_len = (int(f) for f in fields)
        key = None if key_len < 0 else out[pos : pos + key_len]
        pos += max(key_len, 0)
        if out[pos : pos + 1] != _KCAT_FIELD_SEP:
            raise ValueError(f"kcat output out of step at byte {pos}")
        pos += 1
        value = None if value_len < 0 else out[pos : pos + value_len]
        pos += max(value_len, 0)
        if out[pos : pos + 1] != _KCAT_FIELD_SEP:
            raise ValueError(f"kcat output out of step at byte {pos}")
        end = out.index(_KCAT_RECORD_SEP, pos + 1)
        header_text = out[pos + 1 : end].decode("ascii")
        pos = end + 1
        headers: list[tuple[str, bytes]] = []
        if header_text:
            for pair in header_text.split(","):
                name, _, hvalue = pair.partition("=")
                headers.append((name, hvalue.encode("ascii")))
        received.append(Received(partition, offset, key, value, tuple(headers)))
    return received


@dataclass
class JavaDriver(ClientDriver):
    """The Java client (the reference implementation) via Kafka's console producer/consumer.

    Text only (the tools read and print lines); null keys and values work via NULL_MARKER.
    """

    name = "java"
    binary = False
    version: str = "4"

    def produce(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[Record],
        *,
        compression: str = "none",
        idempotent: bool = False,
        acks: str = "all",
        timeout: float = 120.0,
    ) -> None:
        def text(data: bytes | None) -> str | None:
            return None if data is None else data.decode("ascii")

        console = [
            ConsoleRecord(text(r.value), text(r.key), tuple((n, text(v)) for n, v in r.headers))
            for r in records
        ]
        result = console_producer(
            bootstrap,
            topic,
            console,
            version=self.version,
            producer_config={
                "acks": acks,
                "compression.type": compression,
                "enable.idempotence": idempotent,
                "max.in.flight.requests.per.connection": 5 if idempotent else 1,
                "linger.ms": 5,
                **self.extra,
            },
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0 or "ERROR" in result.stderr:
            raise DeliveryError(
                f"console producer exited {result.returncode}:\n{result.stderr[-3000:]}"
            )

    def consume(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        count: int,
        timeout: float = 60.0,
        *,
        isolation: str = "read_uncommitted",
    ) -> list[Received]:
        result = console_consumer(
            bootstrap,
            topic,
            version=self.version,
            group=group,
            max_messages=count,
            timeout_ms=int(timeout * 1000),
            consumer_config={"isolation.level": isolation, **self.extra},
            timeout=timeout + 60,
        )
        if "ERROR" in result.stderr:
            raise AssertionError(f"console consumer logged errors:\n{result.stderr[-3000:]}")

        def data(text: str | None) -> bytes | None:
            return None if text is None else text.encode("ascii")

        return [
            Received(
                r.partition if r.partition is not None else -1,
                r.offset if r.offset is not None else -1,
                data(r.key),
                data(r.value),
                tuple((n, data(v) or b"") for n, v in r.headers),
            )
            for r in result.records
        ]


DRIVERS: dict[str, Callable[[], ClientDriver]] = {
    "kafka-python": KafkaPythonDriver,
    "confluent-kafka": ConfluentDriver,
    "aiokafka": AiokafkaDriver,
    "kcat": KcatDriver,
    "java": JavaDriver,
}
CLIENT_NAMES: tuple[str, ...] = tuple(DRIVERS)


def driver(name: str) -> ClientDriver:
    """A fresh driver by name (one of CLIENT_NAMES)."""
    return DRIVERS[name]()


def _headers(raw: Iterable[tuple[str, bytes | None]] | None) -> Headers:
    return tuple((name, b"" if value is None else bytes(value)) for name, value in raw or ())


# -- test data -----------------------------------------------------------------------------------

# Printable ASCII that every text channel carries: no delimiter of kcat or the console tools
# (tab, newline, ',', ':', '=', 0x1f) and never a whole field equal to a null marker.
_TEXT_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#$%&'()*+-./;<>?@[\\]^_`{|}~"
)


def _text(rng: random.Random, low: int, high: int) -> bytes:
    return "".join(rng.choices(_TEXT_ALPHABET, k=rng.randint(low, high))).encode("ascii")


def make_records(
    count: int,
    *,
    binary: bool,
    keys: int = 40,
    header_block: int | None = None,
    seed: int = 0,
    tag: str = "",
) -> list[Record]:
    """`count` varied records with keys, values and headers; deterministic for a seed.

    binary=True: random bytes (incl. NUL, newlines, non-UTF-8), empty and null keys/values,
    duplicate header names, one 64 KiB value. binary=False: printable text that the CLI drivers
    carry, never null. header_block=N: headers change only every N records (for kcat); else
    every record has its own. Every value starts with its sequence number (and `tag`), so lost
    or duplicated records show up by name.
    """
    rng = random.Random(seed)
    key_pool: list[bytes | None]
    if binary:
        key_pool = [rng.randbytes(rng.randint(1, 24)) for _ in range(keys - 2)] + [b"", None]
    else:
        key_pool = [b"key-" + _text(rng, 1, 12) for _ in range(keys)]
    records: list[Record] = []
    block_headers: Headers = ()
    for seq in range(count):
        prefix = f"{tag}#{seq}#".encode("ascii")
        key = rng.choice(key_pool)
        if binary:
            roll = rng.random()
            if roll < 0.01:
                value: bytes | None = None
            elif roll < 0.02:
                value = prefix[:0]
            else:
                value = prefix + rng.randbytes(rng.randint(0, 300))
            if seq == count // 2 or (key is None and value is None):  # kafka-python needs one
                value = prefix + rng.randbytes(64 * 1024 if seq == count // 2 else 8)
            headers: Headers = tuple(
                (
                    rng.choice(["h-ascii", "h-ünïcødé", "dup", "x" * 30]),
                    rng.randbytes(rng.randint(0, 40)),
                )
                for _ in range(rng.randint(0, 4))
            )
            if seq % 97 == 0:
                headers = (*headers, ("dup", b"first"), ("dup", b""))
        else:
            value = prefix + _text(rng, 0, 200)
            headers = tuple(
                (f"h{i}-" + _text(rng, 1, 8).decode().replace(" ", "_"), _text(rng, 1, 30))
                for i in range(rng.randint(1, 3))
            )
        if header_block is not None:
            if seq % header_block == 0:
                block_headers = headers or (("block", str(seq).encode()),)
            headers = block_headers
        records.append(Record(key, value, headers))
    return records


# -- checking ------------------------------------------------------------------------------------


def split_traceparent(headers: Headers) -> tuple[Headers, bytes | None]:
    """(headers without a trailing traceparent, that traceparent's value or None)."""
    if headers and headers[-1][0] == "traceparent":
        return headers[:-1], headers[-1][1]
    return headers, None


def is_valid_traceparent(value: bytes) -> bool:
    """A W3C traceparent of version 00 with non-zero trace and span ids."""
    match = TRACEPARENT_RE.match(value)
    return bool(match) and set(match.group(1)) != {ord("0")} and set(match.group(2)) != {ord("0")}


def compare_records(
    sent: Sequence[Record], received: Sequence[Received], *, traceparent: bool = False
) -> list[str]:
    """Differences between what was sent and what a consumer got back ([] when identical).

    Checks the count, that each key stayed in one partition with its records in send order
    (null-key records, which may go to any partition, as a multiset), the bytes of keys, values
    and headers, and no duplicate (partition, offset). With traceparent=True every received
    record must carry exactly the sent headers plus one valid trailing `traceparent` header.
    """
    problems: list[str] = []
    if len(received) != len(sent):
        problems.append(f"sent {len(sent)} records, received {len(received)}")
    positions = [(r.partition, r.offset) for r in received]
    if len(set(positions)) != len(positions):
        problems.append(f"{len(positions) - len(set(positions))} duplicate (partition, offset)")

    stripped: list[Received] = []
    for r in received:
        headers = r.headers
        if traceparent:
            headers, value = split_traceparent(r.headers)
            if value is None or not is_valid_traceparent(value):
                problems.append(
                    f"record at {r.partition}/{r.offset}: no valid traceparent "
                    f"appended, headers {r.headers!r}"
                )
            elif any(name == "traceparent" for name, _ in headers):
                problems.append(f"record at {r.partition}/{r.offset}: two traceparent headers")
        stripped.append(Received(r.partition, r.offset, r.key, r.value, headers))

    want: dict[bytes | None, list[tuple[bytes | None, Headers]]] = defaultdict(list)
    for s in sent:
        want[s.key].append((s.value, s.headers))
    got: dict[bytes | None, list[tuple[bytes | None, Headers]]] = defaultdict(list)
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    for r in sorted(stripped, key=lambda r: (r.partition, r.offset)):
        got[r.key].append((r.value, r.headers))
        partitions[r.key].add(r.partition)
    for key in sorted(set(want) | set(got), key=repr):
        w, g = want.get(key, []), got.get(key, [])
        if key is None:
            w, g = sorted(w, key=repr), sorted(g, key=repr)
        elif len(partitions[key]) > 1:
            problems.append(f"key {key!r} spread over partitions {sorted(partitions[key])}")
        if w != g:
            problems.append(_first_difference(key, w, g))
        if len(problems) > 20:
            problems.append("...")
            break
    return problems


def _first_difference(
    key: bytes | None,
    want: list[tuple[bytes | None, Headers]],
    got: list[tuple[bytes | None, Headers]],
) -> str:
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        if w != g:
            return f"key {key!r} record #{i}: sent {_short(w)}, received {_short(g)}"
    return f"key {key!r}: sent {len(want)} records, received {len(got)}"


def _short(item: object) -> str:
    text = repr(item)
    return text if len(text) < 300 else text[:300] + "..."


def assert_round_trip(
    sent: Sequence[Record],
    received: Sequence[Received],
    *,
    traceparent: bool = False,
    context: str = "",
) -> None:
    """compare_records as an assertion, with `context` (e.g. the proxy log) in the message."""
    problems = compare_records(sent, received, traceparent=traceparent)
    assert not problems, "\n".join(problems) + (f"\n{context}" if context else "")


def poll_values(
    bootstrap: str, topic: str, count: int, config: dict[str, Any] | None = None
) -> list[bytes | None]:
    """The values of the first `count` records of `topic`, in order, read from the start with
    confluent-kafka under a fresh group (`config` adds consumer settings); fewer if they do not
    all come within 60 s."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("poll"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(config or {}),
        }
    )
    values: list[bytes | None] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


# -- admin helpers (through whatever bootstrap they are given) -----------------------------------


def unique_name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 3,
    *,
    replication: int = 1,
    replica_assignment: list[list[int]] | None = None,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[int, int]:
    """Create a topic and wait until every partition has a leader; returns partition -> leader."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if replica_assignment is not None:
        new = NewTopic(
            name,
            len(replica_assignment),
            -1,
            replica_assignment=replica_assignment,
            config=config or {},
        )
    else:
        new = NewTopic(name, partitions, replication, config=config or {})
    admin.create_topics([new], operation_timeout=timeout)[name].result(timeout)
    return wait_for_leaders(bootstrap, name, len(replica_assignment or []) or partitions, timeout)


def wait_for_leaders(
    bootstrap: str, topic: str, partitions: int, timeout: float = 30.0
) -> dict[int, int]:
    """Partition -> leader node id, polled until all `partitions` have a leader."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        leaders = {p.id: p.leader for p in meta.partitions.values()}
        if meta.error is None and len(leaders) == partitions and -1 not in leaders.values():
            return leaders
        if time.monotonic() > deadline:
            raise AssertionError(f"no leaders for {topic}: {meta.error} {leaders}")
        time.sleep(0.2)


def batch_codecs(log_dir: Path) -> list[tuple[int, int]]:
    """(codec, record count) of every record batch in a partition's on-disk log segments.

    Lets a test check which codec the broker stored, i.e. that the proxy re-encoded a batch with
    the producer's codec rather than another one (topic compression.type=producer keeps it).
    Codec = attributes & 7 (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    """
    batches: list[tuple[int, int]] = []
    for segment in sorted(log_dir.glob("*.log")):
        data = segment.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            length = int.from_bytes(data[pos + 8 : pos + 12], "big")
            if length <= 0:
                break
            codec = int.from_bytes(data[pos + 21 : pos + 23], "big") & 7
            batches.append((codec, int.from_bytes(data[pos + 57 : pos + 61], "big")))
            pos += 12 + length
    return batches
