"""The `kafka-trace-proxy` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from .allocator import keep_large_buffers_on_heap
from .app import Proxy
from .check import run_check
from .codec import native
from .config import ConfigError, Settings, load_settings, read_env_file
from .logs import configure_logging
from .metrics import Metrics
from .tls import listener_context, upstream_context
from .tracing.setup import Tracing, build_tracing

log = logging.getLogger("proxy")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafka-trace-proxy",
        description="Kafka wire-protocol sidecar proxy that adds distributed tracing to any "
        "Kafka client. Settings come from KTP_* and OTEL_* environment variables, "
        "optionally read from an env-file (the environment wins over the file).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("run", "check"),
        default="run",
        help="run the proxy (default), or check the settings, the upstream cluster and the "
        "OTLP collector and exit",
    )
    parser.add_argument("--env-file", type=Path, help="read settings from this KEY=VALUE file")
    return parser


def _print_check(ok: bool, message: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'}  {message}", flush=True)


def settings_from(env_file: Path | None) -> Settings:
    """Settings from the env-file overlaid by the environment. The file's values are also put
    into the process environment, where the OpenTelemetry exporters read their own variables."""
    if env_file is not None:
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)
    return load_settings(os.environ)


async def _run(settings: Settings, tracing: Tracing, metrics: Metrics) -> None:
    proxy = Proxy(settings, tracing=tracing, metrics=metrics)
    await proxy.start()
    # What start-up built (schemas, the SDK, settings) lives as long as the process: keep it out
    # of the collector's full scans, which otherwise pause relaying for ~20 ms each.
    gc.freeze()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await proxy.stop()


def warn_if_not_compiled() -> None:
    """Say so when the package was installed without its C extension: traced traffic then costs
    the proxy noticeably more CPU, which an operator would otherwise have to guess at."""
    if native.compiled is None:
        log.warning(
            "running the framing, the record loops and the schema walk in %s: about three "
            "times the CPU per message with tracing off, up to twice with tracing on; install "
            "with a C compiler present for the compiled ones",
            native.describe(),
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args.env_file)
    except ConfigError as exc:
        print(f"kafka-trace-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    for name in settings.unknown:
        log.warning("unknown setting %s ignored (a typo?)", name)
    metrics = Metrics()
    try:
        upstream_context(settings)
        listener_context(settings)
    except ConfigError as exc:
        print(f"kafka-trace-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        tracing = build_tracing(
            settings.tracing_enabled, settings.otel, metrics, settings.consumer_span_mode
        )
    except ValueError as exc:
        print(f"kafka-trace-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        for name in settings.unknown:
            _print_check(False, f"unknown setting {name} (a typo?)")
        ok = asyncio.run(run_check(settings, _print_check))
        tracing.shutdown()
        return 0 if ok and not settings.unknown else 1
    if settings.tune_allocator:
        keep_large_buffers_on_heap()
    warn_if_not_compiled()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(_run(settings, tracing, metrics))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
