"""Soak: steady produce + consume through the proxy for N minutes; is its memory flat?

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--rate 2000] [--path proxy-1pct]

A leak (a per-connection, per-topic or per-span structure that is never freed) shows up as RSS
that keeps growing after warm-up. The proxy's RSS is sampled every few seconds; the verdict is
the least-squares slope over the second half of the run, in MB per minute. Traffic comes from
Kafka's ProducerPerformance at a fixed rate and ConsumerPerformance reading alongside it, both
through the proxy. Writes benchmarks/results/soak-latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    PATHS,
    BenchCluster,
    create_topics,
    install_signal_handlers,
    metric_sum,
    started_paths,
    uptime,
)
from testbed.java_tools import java_tool_command
from testbed.kafka import kill_process_group, spawn

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rate", type=int, default=2000, help="records/s produced (default 2000)")
    parser.add_argument("--record-size", type=int, default=1024, help="bytes (default 1024)")
    parser.add_argument(
        "--sample-seconds", type=float, default=5.0, help="RSS sampling interval (default 5)"
    )
    parser.add_argument(
        "--flat-mb-per-min",
        type=float,
        default=0.5,
        help="largest second-half RSS slope still called flat (default 0.5 MB/min)",
    )
    proxies = [p for p in PATHS if PATHS[p].kind == "proxy"]
    parser.add_argument("--path", default="proxy-1pct", choices=proxies, help="proxy variant")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak-latest.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_seconds <= 0:
        parser.error("--minutes, --rate and --sample-seconds must be positive")
    return args


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute (0 for < 2 points)."""
    if len(points) < 2:
        return 0.0
    xs = [t for t, _ in points]
    ys = [v for _, v in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 60


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    seconds = args.minutes * 60
    records = int(args.rate * seconds)
    workdir = Path(tempfile.mkdtemp(prefix="ktp-soak-"))
    started_at = dt.datetime.now(dt.UTC)
    uptime_before = uptime()
    print(f"==> {uptime_before}")
    print(f"==> soak {args.minutes:g} min through {args.path}, {args.rate} records/s")
    samples: list[dict[str, float]] = []
    interrupted = False
    producer_rc: int | None = None
    consumer_rc: int | None = None
    keep = False
    try:
        with contextlib.ExitStack() as stack:
            cluster = BenchCluster(workdir / "kafka")
            cluster.start()
            stack.callback(cluster.stop)
            running = stack.enter_context(started_paths([PATHS[args.path]], cluster, workdir))
            path = running[args.path]
            topic = f"soak-{uuid.uuid4().hex[:8]}"
            create_topics(cluster.bootstrap_servers, [topic])
            producer_cmd = java_tool_command(
                "4",
                "ProducerPerformance",
                "--bootstrap-server", path.bootstrap,
                "--topic", topic,
                "--num-records", str(records),
                "--record-size", str(args.record_size),
                "--throughput", str(args.rate),
                "--reporting-interval", "60000",
                "--command-property", "acks=all",
                quick_start=False,
            )  # fmt: skip
            consumer_cmd = java_tool_command(
                "4",
                "ConsumerPerformance",
                "--bootstrap-server", path.bootstrap,
                "--topic", topic,
                "--num-records", str(records),
                "--group", f"soak-{uuid.uuid4().hex[:8]}",
                "--timeout", "60000",
                "--reporting-interval", "60000",
                "--show-detailed-stats",
                quick_start=False,
            )  # fmt: skip
            producer = spawn(producer_cmd, workdir / "producer.log")
            stack.callback(kill_process_group, producer, 5)
            consumer = spawn(consumer_cmd, workdir / "consumer.log")
            stack.callback(kill_process_group, consumer, 5)
            began = time.monotonic()
            cpu0 = path.cpu_seconds()
            deadline = began + seconds + 60  # producer start-up and consumer catch-up
            next_report = began + 60
            while time.monotonic() < deadline:
                elapsed = time.monotonic() - began
                metrics = path.metrics()
                samples.append(
                    {
                        "t": round(elapsed, 2),
                        "rss_mb": path.rss_bytes() / 1e6,
                        "cpu_seconds": path.cpu_seconds() - cpu0,
                        "requests": metric_sum(metrics, "ktp_requests_total"),
                        "spans_exported": metric_sum(metrics, "ktp_spans_exported_total"),
                        "spans_dropped": metric_sum(metrics, "ktp_spans_dropped_total"),
                        "connections_open": metric_sum(metrics, "ktp_connections_open"),
                    }
                )
                if time.monotonic() >= next_report:
                    next_report += 60
                    print(
                        f"  {elapsed / 60:5.1f} min  RSS {samples[-1]['rss_mb']:.1f} MB  "
                        f"CPU {samples[-1]['cpu_seconds']:.1f} s",
                        flush=True,
                    )
                if producer.poll() is not None and consumer.poll() is not None:
                    break
                if not path.proxy or not path.proxy.alive():
                    raise RuntimeError(f"the proxy died; log in {workdir}")
                time.sleep(args.sample_seconds)
            producer_rc, consumer_rc = producer.poll(), consumer.poll()
            peak_rss_mb = path.peak_rss_bytes() / 1e6
    except KeyboardInterrupt:
        interrupted = True
        keep = True
        print("\ninterrupted: every process stopped", file=sys.stderr)
        peak_rss_mb = max((s["rss_mb"] for s in samples), default=0.0)
    except Exception:
        keep = True
        print(f"error; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    document = summarise(args, samples, peak_rss_mb, producer_rc, consumer_rc, interrupted)
    document.update(
        started_at=started_at.isoformat(), uptime_before=uptime_before, uptime_after=uptime()
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(document["summary"])
    print(f"==> {document['uptime_after']}")
    print(f"==> wrote {args.out}")
    return 0 if document["flat"] and not interrupted and document["traffic_ok"] else 1


def summarise(
    args: argparse.Namespace,
    samples: list[dict[str, float]],
    peak_rss_mb: float,
    producer_rc: int | None,
    consumer_rc: int | None,
    interrupted: bool,
) -> dict[str, Any]:
    """The verdict (second-half slope against the threshold) and every sample."""
    end = samples[-1]["t"] if samples else 0.0
    second_half = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= end / 2]
    slope = slope_per_minute(second_half)
    flat = abs(slope) <= args.flat_mb_per_min
    first_rss = samples[0]["rss_mb"] if samples else 0.0
    last = samples[-1] if samples else {}
    cpu = last.get("cpu_seconds", 0.0)
    traffic_ok = producer_rc == 0 and consumer_rc == 0
    summary = (
        f"soak {end / 60:.1f} min via {args.path} at {args.rate} records/s: RSS "
        f"{first_rss:.1f} -> {last.get('rss_mb', 0.0):.1f} MB (peak {peak_rss_mb:.1f}); "
        f"second-half slope {slope:+.3f} MB/min -> {'FLAT' if flat else 'GROWING'} "
        f"(threshold {args.flat_mb_per_min} MB/min); proxy CPU {cpu:.1f} s "
        f"({cpu / end * 100 if end else 0:.0f}% of a core); spans exported "
        f"{last.get('spans_exported', 0):.0f}, dropped {last.get('spans_dropped', 0):.0f}; "
        f"producer rc={producer_rc}, consumer rc={consumer_rc}"
    )
    return {
        "path": args.path,
        "minutes": args.minutes,
        "rate": args.rate,
        "record_size": args.record_size,
        "duration_seconds": end,
        "rss_first_mb": first_rss,
        "rss_last_mb": last.get("rss_mb"),
        "peak_rss_mb": peak_rss_mb,
        "second_half_slope_mb_per_min": slope,
        "flat_threshold_mb_per_min": args.flat_mb_per_min,
        "flat": flat,
        "traffic_ok": traffic_ok,
        "interrupted": interrupted,
        "summary": summary,
        "samples": samples,
    }


if __name__ == "__main__":
    sys.exit(main())
