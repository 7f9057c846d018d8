"""The benchmark matrix: every load through every path, interleaved, against one real broker.

    .venv/bin/python -m benchmarks.run [--quick] [--reps N] [--only PATH,...] [--loads LOAD,...]

Paths and loads are listed by --help. For each repetition the matrix runs load by load, and
within a load path by path (direct, socat, pyrelay, proxy-off, proxy-1pct, proxy-100pct, then
again), so drift of a shared, noisy machine hits every path alike; figures are reported as
medians with ranges and as ratios to direct within the same repetition. Writes
benchmarks/results/latest.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loads as loads_module
from benchmarks.harness import (
    PATHS,
    SOCAT_INSTALL_HINT,
    BenchCluster,
    LeakWatcher,
    PathSpec,
    RunningPath,
    create_topics,
    install_signal_handlers,
    metric_sum,
    started_paths,
    uptime,
)
from benchmarks.interpreters import (
    Interpreter,
    InterpreterError,
    proxy_interpreter,
    running_interpreter,
)
from benchmarks.loads import (
    LOADS,
    MIB,
    Load,
    consumer_perf,
    produce_py,
    producer_perf,
    run_load,
    twin_topic,
)
from benchmarks.report import markdown, sampled_record_cost, summarise, targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks.run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="paths:\n"
        + "\n".join(f"  {p.name:14} {p.description}" for p in PATHS.values())
        + "\nloads (full record counts):\n"
        + "\n".join(f"  {ld.name:17} {ld.records:>9} x  {ld.description}" for ld in LOADS.values()),
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition (smoke)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--only", help="comma-separated paths (direct is always added)")
    parser.add_argument(
        "--loads",
        help="comma-separated loads (a consume load adds its produce load); --quick default: "
        + ",".join(QUICK_LOADS),
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every full record count (default 1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--name", default="latest", help="results file stem (default latest)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep broker/tool logs")
    parser.add_argument(
        "--proxy-python",
        metavar="PYTHON",
        help="run the proxy on this CPython (same version as the venv's), e.g. one built with "
        "PGO and LTO like the image's; its dependencies go into a cached venv (default: the "
        "benchmark's own interpreter)",
    )
    parser.add_argument(
        "--baseline",
        metavar="TREE",
        type=Path,
        help="also run each selected proxy path from this checkout of another commit (built: "
        "python setup.py build_ext --inplace there), as <path>-base, interleaved with this "
        "tree's and taking turns to go first: an A/B that machine drift hits alike",
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()  # checked once the interpreter is known
    return args


def select_paths(only: str | None, baseline: Path | None = None) -> dict[str, PathSpec]:
    """The paths to run by name, in canonical order, direct first; with a baseline tree each
    proxy path is followed by the same path run from that tree."""
    defaults = ",".join(name for name, spec in PATHS.items() if spec.default)
    wanted = [p.strip() for p in (only or defaults).split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PATHS]
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    chosen: dict[str, PathSpec] = {}
    for name, spec in PATHS.items():
        if name == "direct" or name in wanted:
            chosen[name] = spec
            if baseline is not None and spec.kind == "proxy":
                base = spec.from_tree(baseline)
                chosen[base.name] = base
    return chosen


def run_order(path_names: list[str], rep: int) -> list[str]:
    """The paths in the order one repetition runs them: each `<path>-base` swaps places with its
    `<path>` every other repetition, so neither side of an A/B always runs second."""
    if rep % 2 == 0:
        return path_names
    order = list(path_names)
    for index, name in enumerate(order):
        if name.endswith("-base") and index > 0 and order[index - 1] == name[: -len("-base")]:
            order[index - 1], order[index] = order[index], order[index - 1]
    return order


QUICK_LOADS = ("produce-1k", "consume-1k", "e2e-java", "e2e-py", "e2e-py-paired", "produce-py")
"""--quick runs one load of each kind: it smoke-tests every code path in under two minutes."""


def select_loads(names: str | None, quick: bool = False) -> list[Load]:
    if not names:
        names = (
            ",".join(QUICK_LOADS)
            if quick
            else ",".join(name for name, load in LOADS.items() if not load.diagnostic)
        )
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - set(LOADS)
    if unknown:
        raise SystemExit(f"unknown load(s) {sorted(unknown)}; choose from {', '.join(LOADS)}")
    for name in list(wanted):
        source = LOADS[name].source
        if source:
            wanted.add(source)
    return [load for load in LOADS.values() if load.name in wanted]


def baseline_problem(tree: Path, python: str) -> str | None:
    """Why the proxy would not run from `tree` with its own compiled twins (None: it would). A
    baseline on the pure-Python twins would make any change look faster than it is."""
    script = (
        "import proxy, proxy.app, proxy.codec.native as n\n"
        "print(proxy.__file__)\n"
        "print(n.describe())"
    )
    probe = subprocess.run(
        [os.path.abspath(python), "-c", script],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = probe.stdout.split("\n")
    if probe.returncode != 0 or len(lines) < 2:
        return f"its proxy does not import: {(probe.stderr or probe.stdout).strip()[-300:]}"
    if lines[0] != str(tree / "proxy" / "__init__.py"):
        return f"{lines[0]} is imported instead of its own proxy"
    if lines[1] != "compiled":
        return f"its compiled twins do not load ({lines[1]}): python setup.py build_ext --inplace"
    return None


def git_commit(tree: Path = REPO) -> str:
    """The commit checked out in `tree` (+dirty with uncommitted changes to tracked files)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=tree,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=tree,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return "unknown"


def measure(
    path: RunningPath,
    running: Mapping[str, RunningPath],
    load: Load,
    topic: str,
    records: int,
    rep: int,
    log_dir: Path,
) -> dict[str, Any]:
    """One measured run: the load's own figures plus the relay's CPU and counters around it."""
    before = path.metrics()
    cpu_before = path.cpu_seconds()
    loadavg = os.getloadavg()[0]
    with LeakWatcher(path, running) as watch:
        result = run_load(
            load,
            path.bootstrap,
            topic,
            records,
            log_dir / f"r{rep}-{load.name}-{path.name}.log",
            direct_bootstrap=path.cluster.twin_bootstrap,
        )
    cpu = path.cpu_seconds() - cpu_before
    after = path.metrics()
    values: dict[str, float] = dict(result.values)
    relay: dict[str, Any] | None = None
    if path.pid is not None:

        def delta(name: str, **labels: str) -> float:
            return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

        requests = delta("ktp_requests_total")
        relay = {
            "cpu_seconds": cpu,
            "requests": requests,
            "bytes_relayed": delta("ktp_bytes_total"),
            "records_sampled": delta("ktp_records_traced_total", outcome="sampled"),
            "spans_exported": delta("ktp_spans_exported_total"),
            "spans_dropped": delta("ktp_spans_dropped_total"),
            "header_injections_skipped": delta("ktp_header_injections_skipped_total"),
            "rss_mb": path.rss_bytes() / 1e6,
        }
        if result.payload_bytes:
            values["cpu_ms_per_mb"] = cpu * 1000 / (result.payload_bytes / MIB)
        if requests:
            values["cpu_us_per_request"] = cpu * 1e6 / requests
    leak = watch.report()
    error = result.error
    if leak["bypassing_connections"]:
        error = f"{leak['bypassing_connections']} connection(s) bypassed {path.name}; {error}"
    return {
        "rep": rep,
        "load": load.name,
        "kind": load.kind,
        "path": path.name,
        "read_from": load.source_path,
        "ok": result.ok and not leak["bypassing_connections"],
        "error": error,
        "records": result.records,
        "payload_bytes": result.payload_bytes,
        "wall_seconds": round(result.wall_seconds, 3),
        "loadavg_1m": loadavg,
        "values": values,
        "relay": relay,
        "leak_check": leak,
    }


#: Records per run of the Java tools' warm-up straight to the broker, and at most how many
#: runs: until one is no more than 10% faster than the one before.
JAVA_WARMUP_RECORDS = 80_000
JAVA_WARMUP_MAX_RUNS = 5


def warm_up(running: Mapping[str, RunningPath], bootstrap: str, quick: bool, log_dir: Path) -> None:
    """Unmeasured traffic: librdkafka's through every path (proxy caches, connections), then
    the Java tools straight to the broker until its produce rate settles, just before the
    first measured run. Without the second, the first repetition's direct produce-1k ran at
    24-25 MB/s in every run from round 10 to round 11 against 35-50 in the later ones, and the
    first repetition's ratios came out about 1.5x too good."""
    create_topics(bootstrap, ["bench-warmup", "bench-warmup-java"])
    for path in running.values():
        result = produce_py(path.bootstrap, "bench-warmup", 2_000 if quick else 20_000, 1024)
        if not result.ok:
            raise RuntimeError(f"warm-up through {path.name} failed: {result.error}")
    if not quick:
        rates = warm_up_broker(bootstrap, log_dir)
        shown = ", ".join(f"{rate:.1f}" for rate in rates)
        print(f"==> broker warmed up: ProducerPerformance at {shown} MB/s", flush=True)


def warm_up_broker(bootstrap: str, log_dir: Path) -> list[float]:
    """ProducerPerformance runs until the rate settles, then one ConsumerPerformance: the MB/s
    of each producer run. The broker needs several runs, not more records in one (one run of
    240,000 records left the next at 32 MB/s, as one of 80,000 did), nor time (30 s idle)."""
    rates: list[float] = []
    topic = "bench-warmup-java"
    for attempt in range(JAVA_WARMUP_MAX_RUNS):
        log = log_dir / f"warmup-producer-perf-{attempt}.log"
        result = producer_perf(bootstrap, topic, JAVA_WARMUP_RECORDS, 1024, "none", log)
        if not result.ok:
            raise RuntimeError(f"warm-up with ProducerPerformance failed: {result.error}")
        rates.append(result.values["mb_s"])
        if len(rates) >= 2 and rates[-1] <= rates[-2] * 1.1:
            break
    log = log_dir / "warmup-consumer-perf.log"
    consumed = consumer_perf(bootstrap, topic, JAVA_WARMUP_RECORDS, 1024, log)
    if not consumed.ok:
        raise RuntimeError(f"warm-up with ConsumerPerformance failed: {consumed.error}")
    return rates


def drain_and_collect(running: Mapping[str, RunningPath], timeout: float = 20.0) -> dict[str, Any]:
    """Wait for span export queues to drain, then gather each relay's totals."""
    tracing = [p for p in running.values() if p.spec.tracing]
    deadline = time.monotonic() + timeout
    last: tuple[float, ...] = ()
    stable_since = time.monotonic()
    while tracing and time.monotonic() < deadline:
        now = tuple(
            metric_sum(m, "ktp_spans_exported_total") + metric_sum(m, "ktp_spans_dropped_total")
            for m in (p.metrics() for p in tracing)
        )
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 6:  # > the 5 s export schedule delay
            break
        time.sleep(1)
    relays: dict[str, Any] = {}
    for path in running.values():
        if path.pid is None:
            continue
        samples = path.metrics()
        info: dict[str, Any] = {
            "pid": path.pid,
            "peak_rss_mb": path.peak_rss_bytes() / 1e6,
            "rss_mb": path.rss_bytes() / 1e6,
            "cpu_seconds_total": path.cpu_seconds(),
        }
        if path.proxy is not None:
            info["spans_exported"] = metric_sum(samples, "ktp_spans_exported_total")
            info["spans_dropped"] = {
                reason: metric_sum(samples, "ktp_spans_dropped_total", reason=reason)
                for reason in ("queue_full", "export_failed", "shutdown")
            }
            info["records_traced"] = {
                f"{side}/{outcome}": metric_sum(
                    samples, "ktp_records_traced_total", side=side, outcome=outcome
                )
                for side, outcome in (
                    ("produce", "sampled"),
                    ("produce", "unsampled"),
                    ("fetch", "context"),
                    ("fetch", "no_context"),
                )
            }
            info["interceptor_errors"] = metric_sum(samples, "ktp_interceptor_errors_total")
        if path.sink is not None:
            with contextlib.suppress(OSError):
                info["sink"] = path.sink.stats()
        relays[path.name] = info
    return relays


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = select_paths(args.only, args.baseline)
    if shutil.which("socat") is None and "socat" in chosen:
        print(f"error: {SOCAT_INSTALL_HINT} (or leave it out: --only ...)", file=sys.stderr)
        return 2
    path_names = list(chosen)
    python_paths = [n for n in path_names if chosen[n].kind in ("proxy", "pyrelay")]
    try:
        interpreter = (
            proxy_interpreter(args.proxy_python)
            if args.proxy_python and python_paths
            else running_interpreter()
        )
    except InterpreterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.baseline is not None:
        problem = baseline_problem(args.baseline, interpreter.python)
        if problem:
            print(f"error: --baseline {args.baseline}: {problem}", file=sys.stderr)
            return 2
    install_signal_handlers()
    loads = select_loads(args.loads, args.quick)
    for load in loads:
        if load.source_path and load.source_path not in chosen:
            print(
                f"error: load {load.name} reads what {load.source_path} wrote: add it to --only",
                file=sys.stderr,
            )
            return 2
    loads_module.FULL_JIT = not args.quick
    reps = 1 if args.quick else args.reps
    counts = {load.name: load.count(args.quick, args.scale) for load in loads}
    for load in loads:  # a consume load reads exactly what its produce load wrote
        if load.source:
            counts[load.name] = counts[load.source]
    workdir = Path(tempfile.mkdtemp(prefix="ktp-bench-"))
    log_dir = workdir / "logs"
    log_dir.mkdir()
    started_at = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    uptime_before = uptime()
    print(f"==> {uptime_before}")
    print(f"==> paths {', '.join(path_names)}; {reps} repetition(s); logs in {workdir}")
    print(f"==> proxy interpreter {interpreter.description}")
    runs: list[dict[str, Any]] = []
    failed = False
    try:
        cluster = BenchCluster(workdir / "kafka")
        with contextlib.ExitStack() as stack:
            cluster.start()
            stack.callback(cluster.stop)
            print(f"==> Kafka up in {cluster.start_seconds:.1f} s at {cluster.bootstrap_servers}")
            specs = list(chosen.values())
            running = stack.enter_context(
                started_paths(specs, cluster, workdir, interpreter.python)
            )
            print("==> every path verified to advertise only itself; warming up")
            warm_up(running, cluster.bootstrap_servers, args.quick, log_dir)
            for rep in range(reps):
                topics = {
                    (load.name, path): f"bench-r{rep}-{load.name}-{path}"
                    for load in loads
                    if load.kind != "consumer-perf"
                    for path in path_names
                }
                paired = [
                    twin_topic(topic)
                    for (load_name, _), topic in topics.items()
                    if LOADS[load_name].kind == "e2e-py-paired"
                ]
                create_topics(cluster.bootstrap_servers, [*topics.values(), *paired])
                for load in loads:
                    for name in run_order(path_names, rep):
                        source_path = load.source_path or name
                        topic = topics[(load.source or load.name, source_path)]
                        source_ok = not load.source or any(
                            r["ok"] for r in runs
                            if (r["rep"], r["load"], r["path"]) == (rep, load.source, source_path)
                        )  # fmt: skip
                        if not source_ok:
                            continue
                        run = measure(
                            running[name], running, load, topic, counts[load.name], rep, log_dir
                        )
                        runs.append(run)
                        print(progress_line(run, reps), flush=True)
            print("==> waiting for span exports to drain")
            relays = drain_and_collect(running)
    except KeyboardInterrupt:
        print("\ninterrupted: every process stopped", file=sys.stderr)
        failed = True
        args.keep_workdir = True
        if not runs:
            return 130
        relays = {}
    except Exception:
        args.keep_workdir = True
        print(f"error; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    duration = time.monotonic() - began
    uptime_after = uptime()
    document = build_document(
        args, chosen, loads, counts, reps, runs, relays,
        started_at, duration, uptime_before, uptime_after, workdir, interpreter,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{args.name}.json"
    md_path = args.out / f"{args.name}.md"
    json_path.write_text(json.dumps(document, indent=2, default=float) + "\n")
    md_path.write_text(document["table_markdown"])
    print()
    print(document["table_markdown"])
    print(f"==> {uptime_after}")
    print(f"==> {len(runs)} runs in {duration / 60:.1f} min; wrote {json_path} and {md_path}")
    bad = [r for r in runs if not r["ok"]]
    for run in bad:
        print(f"FAILED {run['load']} via {run['path']} (rep {run['rep']}): {run['error']}")
    return 1 if failed or bad else 0


def progress_line(run: Mapping[str, Any], reps: int) -> str:
    values = run["values"]
    shown = ", ".join(
        f"{k}={v:.3g}" for k, v in values.items() if k in ("mb_s", "lat_p50_ms", "lat_p99_ms")
    )
    relay = run.get("relay")
    cpu = f", relay cpu {relay['cpu_seconds']:.2f}s" if relay else ""
    status = (
        "ok" if run["ok"] else f"FAILED: {run['error'].splitlines()[0] if run['error'] else ''}"
    )
    return (
        f"  rep {run['rep'] + 1}/{reps} {run['load']:17} {run['path']:13} {shown}{cpu} "
        f"({run['wall_seconds']:.1f}s, load {run['loadavg_1m']:.1f}) {status}"
    )


def build_document(
    args: argparse.Namespace,
    chosen: Mapping[str, PathSpec],
    loads: list[Load],
    counts: Mapping[str, int],
    reps: int,
    runs: list[dict[str, Any]],
    relays: Mapping[str, Any],
    started_at: dt.datetime,
    duration: float,
    uptime_before: str,
    uptime_after: str,
    workdir: Path,
    interpreter: Interpreter,
) -> dict[str, Any]:
    """Everything the run measured, plus the summary, the targets and the markdown table."""
    path_names = list(chosen)
    summary = summarise(runs)
    goals = targets(summary)
    costs = sampled_record_cost(runs)
    loadavgs = [r["loadavg_1m"] for r in runs]
    header = [
        f"# kafka-trace-proxy benchmark ({started_at:%Y-%m-%d %H:%M} UTC, commit {git_commit()})",
        "",
        f"- {reps} repetition(s), interleaved by path; {len(runs)} runs in {duration / 60:.1f} min"
        + (" (--quick)" if args.quick else ""),
        "- records per run: " + ", ".join(f"{ld.name} {counts[ld.name]:,}" for ld in loads),
        f"- machine: {os.cpu_count()} CPUs, shared by broker, clients and relay; 1-min load "
        + (f"during runs {min(loadavgs):.1f}-{max(loadavgs):.1f}" if loadavgs else "n/a"),
        f"- proxy interpreter: {interpreter.description}",
        *(
            [f"- `-base` paths: the proxy of {args.baseline} (commit {git_commit(args.baseline)})"]
            if args.baseline
            else []
        ),
        f"- uptime before: `{uptime_before}`",
        f"- uptime after: `{uptime_after}`",
    ]
    table = markdown(
        summary,
        [(ld.name, ld.kind, ld.description) for ld in loads],
        path_names,
        goals,
        costs,
        relays,
        header,
    )
    return {
        "started_at": started_at.isoformat(),
        "duration_seconds": round(duration, 1),
        "commit": git_commit(),
        "quick": args.quick,
        "reps": reps,
        "scale": args.scale,
        "cpus": os.cpu_count(),
        "proxy_interpreter": interpreter.description,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "workdir": str(workdir) if args.keep_workdir else None,
        "paths": {
            name: {"description": spec.description, **spec.env} for name, spec in chosen.items()
        },
        "loads": {
            ld.name: {
                "kind": ld.kind,
                "records": counts[ld.name],
                "record_size": ld.record_size,
                "compression": ld.compression,
                "read_from": ld.source_path,
                "description": ld.description,
            }
            for ld in loads
        },
        "summary": {
            load: {
                metric: {path: s.as_dict() for path, s in per_path.items()}
                for metric, per_path in metrics.items()
            }
            for load, metrics in summary.items()
        },
        "targets": [g.as_dict() for g in goals],
        "sampled_record_cost": costs,
        "relays": relays,
        "runs": runs,
        "table_markdown": table,
    }


if __name__ == "__main__":
    sys.exit(main())
