"""Kafka's own Java command-line tools, run from the same cached jars as the brokers.

The Java clients are the reference implementation of the protocol, so tests drive traffic with
them (console producer/consumer, perf tools) as well as with Python clients. Tools moved between
packages across versions; TOOL_CLASSES hides that.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from testbed.kafka import java_executable, kafka_libs, logging_jvm_args, major_version

# Short tool name -> main class, per major version (3.x means the pinned 3.9).
TOOL_CLASSES: dict[int, dict[str, str]] = {
    3: {
        "ConsoleProducer": "kafka.tools.ConsoleProducer",  # still Scala, in kafka_2.13
        "ConsoleConsumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
        "ProducerPerformance": "org.apache.kafka.tools.ProducerPerformance",
        "ConsumerPerformance": "org.apache.kafka.tools.ConsumerPerformance",
        "EndToEndLatency": "org.apache.kafka.tools.EndToEndLatency",
        "TopicCommand": "org.apache.kafka.tools.TopicCommand",
        "StorageTool": "kafka.tools.StorageTool",
    },
    4: {
        "ConsoleProducer": "org.apache.kafka.tools.ConsoleProducer",
        "ConsoleConsumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
        "ProducerPerformance": "org.apache.kafka.tools.ProducerPerformance",
        "ConsumerPerformance": "org.apache.kafka.tools.ConsumerPerformance",
        "EndToEndLatency": "org.apache.kafka.tools.EndToEndLatency",
        "TopicCommand": "org.apache.kafka.tools.TopicCommand",
        "StorageTool": "kafka.tools.StorageTool",
    },
}

NULL_MARKER = "\u2400"
"""Stands for a null key, value, header value or 'no headers' in console tool lines ('␀')."""

# Options that were renamed in 4.x (KIP-1147); the old names still work there but warn.
_CLIENT_PROPERTY_OPTION = {
    3: {"producer": "--producer-property", "consumer": "--consumer-property"}
}
_READER_PROPERTY_OPTION = {3: "--property", 4: "--reader-property"}
_FORMATTER_PROPERTY_OPTION = {3: "--property", 4: "--formatter-property"}


def _major(version: str) -> int:
    return min(max(major_version(version), 3), 4)


def tool_class(version: str, tool: str) -> str:
    """The main class of `tool` (a short name from TOOL_CLASSES, or a class name) for `version`."""
    return TOOL_CLASSES[_major(version)].get(tool, tool)


def java_tool_command(
    version: str,
    main_class: str,
    *args: str,
    heap: str = "256m",
    quick_start: bool = True,
    log_level: str = "WARN",
    jvm_opts: Sequence[str] = (),
) -> list[str]:
    """The command line that runs `main_class` (or a short tool name) with `version`'s jars.

    quick_start=True limits the JIT to C1, which starts short tools faster; pass False for the
    perf tools, whose numbers need the full JIT. Logging goes to stderr at `log_level`.
    """
    return [
        java_executable(),
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        *(["-XX:TieredStopAtLevel=1"] if quick_start else []),
        "-Dfile.encoding=UTF-8",
        "-Djava.awt.headless=true",
        *logging_jvm_args(version, level=log_level, to_stderr=True),
        *jvm_opts,
        "-cp",
        f"{kafka_libs(version)}/*",
        tool_class(version, main_class),
        *args,
    ]


def run_java_tool(
    version: str,
    main_class: str,
    *args: str,
    input: str | None = None,
    timeout: float = 120.0,
    check: bool = True,
    quick_start: bool = True,
    jvm_opts: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run a Kafka Java tool to completion and capture its output (text, UTF-8)."""
    cmd = java_tool_command(version, main_class, *args, quick_start=quick_start, jvm_opts=jvm_opts)
    result = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, cmd, output=result.stdout, stderr=result.stderr
        )
    return result


def _client_property_option(version: str, role: str) -> str:
    major = _major(version)
    return "--command-property" if major >= 4 else _CLIENT_PROPERTY_OPTION[3][role]


def _property_args(option: str, props: Mapping[str, object] | None) -> list[str]:
    args: list[str] = []
    for key, value in (props or {}).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += [option, f"{key}={text}"]
    return args


@dataclass(frozen=True)
class ConsoleRecord:
    """A record as the console tools read and print it (text key, value and headers)."""

    value: str | None
    key: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()
    partition: int | None = None
    offset: int | None = None


def format_producer_line(record: ConsoleRecord) -> str:
    """The ConsoleProducer input line for `record` (parse.key + parse.headers, tab-separated).

    Layout: "h1:v1,h2:v2<TAB>key<TAB>value"; NULL_MARKER stands for a null key/value/header
    value and for "no headers".
    """

    def text(part: str | None, what: str, forbidden: str) -> str:
        if part is None:
            return NULL_MARKER
        bad = [c for c in forbidden if c in part]
        if bad or part == NULL_MARKER:
            raise ValueError(f"{what} {part!r} cannot go through the console producer")
        return part

    if record.headers:
        headers = ",".join(
            text(k, "header key", ",:\t\n") + ":" + text(v, "header value", ",\t\n")
            for k, v in record.headers
        )
    else:
        headers = NULL_MARKER
    key = text(record.key, "key", "\t\n")
    value = text(record.value, "value", "\n")
    return f"{headers}\t{key}\t{value}"


def console_producer(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[ConsoleRecord | str],
    *,
    version: str = "4",
    producer_config: Mapping[str, object] | None = None,
    reader_config: Mapping[str, object] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Produce `records` with Kafka's ConsoleProducer and wait for it to flush and exit.

    ConsoleRecord items are written with parse.key/parse.headers (see format_producer_line);
    plain strings are passed through as lines, to be read as `reader_config` says (when every
    item is a string, parse.key/parse.headers are left to `reader_config`).
    """
    items = list(records)
    structured = any(isinstance(item, ConsoleRecord) for item in items)
    lines = [format_producer_line(i) if isinstance(i, ConsoleRecord) else i for i in items]
    reader: dict[str, object] = {}
    if structured:
        reader.update(
            {
                "parse.key": True,
                "key.separator": "\t",
                "parse.headers": True,
                "headers.delimiter": "\t",
                "headers.separator": ",",
                "headers.key.separator": ":",
                "null.marker": NULL_MARKER,
            }
        )
    reader.update(reader_config or {})
    producer = {"acks": "all", **(producer_config or {})}
    args = [
        "--bootstrap-server",
        bootstrap_servers,
        "--topic",
        topic,
        *_property_args(_READER_PROPERTY_OPTION[_major(version)], reader),
        *_property_args(_client_property_option(version, "producer"), producer),
        *extra_args,
    ]
    stdin = "".join(line + "\n" for line in lines)
    return run_java_tool(
        version, "ConsoleProducer", *args, input=stdin, timeout=timeout, check=check
    )


@dataclass
class ConsoleConsumerResult:
    """A finished ConsoleConsumer run: the process result and the records it printed."""

    process: subprocess.CompletedProcess[str]
    records: list[ConsoleRecord] = field(default_factory=list)

    @property
    def returncode(self) -> int:
        return self.process.returncode

    @property
    def stdout(self) -> str:
        return self.process.stdout

    @property
    def stderr(self) -> str:
        return self.process.stderr


def _nullable(text: str) -> str | None:
    return None if text == NULL_MARKER else text


def parse_consumer_line(line: str) -> ConsoleRecord:
    """Parse one line console_consumer() asked for: partition, offset, headers, key, value."""
    partition, offset, headers_text, key, value = line.split("\t", 4)
    headers: list[tuple[str, str | None]] = []
    if headers_text != "NO_HEADERS":
        for pair in headers_text.split(","):
            name, _, header_value = pair.partition(":")
            headers.append((name, _nullable(header_value)))
    return ConsoleRecord(
        value=_nullable(value),
        key=_nullable(key),
        headers=tuple(headers),
        partition=int(partition.removeprefix("Partition:")),
        offset=int(offset.removeprefix("Offset:")),
    )


def console_consumer(
    bootstrap_servers: str,
    topic: str,
    *,
    version: str = "4",
    group: str | None = None,
    from_beginning: bool = True,
    max_messages: int | None = None,
    timeout_ms: int = 15000,
    consumer_config: Mapping[str, object] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> ConsoleConsumerResult:
    """Consume with Kafka's ConsoleConsumer until `max_messages` or `timeout_ms` of silence.

    Every record is printed with partition, offset, headers and key so that it can be parsed
    back into a ConsoleRecord; the return code is left for the caller to judge (the tool exits
    non-zero when --timeout-ms expires on some versions).
    """
    formatter = {
        "print.partition": True,
        "print.offset": True,
        "print.headers": True,
        "print.key": True,
        "print.value": True,
        "key.separator": "\t",
        "headers.separator": ",",
        "null.literal": NULL_MARKER,
    }
    args = ["--bootstrap-server", bootstrap_servers, "--topic", topic]
    if group is not None:
        args += ["--group", group]
    if from_beginning:
        args.append("--from-beginning")
    if max_messages is not None:
        args += ["--max-messages", str(max_messages)]
    args += ["--timeout-ms", str(timeout_ms)]
    args += _property_args(_FORMATTER_PROPERTY_OPTION[_major(version)], formatter)
    args += _property_args(_client_property_option(version, "consumer"), consumer_config)
    args += list(extra_args)
    process = run_java_tool(version, "ConsoleConsumer", *args, timeout=timeout, check=False)
    records = [parse_consumer_line(line) for line in process.stdout.splitlines() if line]
    return ConsoleConsumerResult(process, records)
