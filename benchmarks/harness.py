"""The environment both benchmarks run in: one broker, the paths to it, and process hygiene.

Every path under test reaches the same broker, so the only difference between two measurements
is the path itself:

- direct: the broker's PLAINTEXT listener;
- socat: a C relay (`socat -b65536`) in front of a second broker listener, RELAY, which the broker
  advertises as the socat port, so metadata sends clients back through socat (a plain TCP relay
  cannot rewrite addresses, so the broker must hand out the relay's address itself);
- pyrelay: `benchmarks.bare_relay`, a Python byte relay on uvloop with no Kafka logic, in front of
  a third listener, BARE, advertised the same way: the floor of any Python proxy;
- proxy-*: `python -m proxy` in front of PLAINTEXT, which rewrites the addresses itself;
- and a fourth listener, TWIN, for the direct round trips a paired load runs beside each path:
  its own port, so they are never taken for a client that bypasses the path under test.

A `LeakWatcher` checks during each measured run that no client bypasses the path under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from testbed.kafka import KafkaCluster, KafkaNode, kill_process_group, spawn
from testbed.ports import free_port
from testbed.proxy import ProxyProcess

REPO_ROOT = Path(__file__).resolve().parent.parent

SOCAT_INSTALL_HINT = "socat is not installed: apt-get install -y socat (Debian/Ubuntu)"


@dataclass(frozen=True)
class PathSpec:
    """One way for clients to reach the broker."""

    name: str
    kind: str  # "direct", "socat", "pyrelay" or "proxy"
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    #: The source tree the proxy runs from (None: this one); another commit's checkout makes
    #: an A/B within one interleaved run.
    source: Path | None = None
    #: Part of the matrix when no --only is given (a diagnostic path is run on request).
    default: bool = True

    def from_tree(self, tree: Path) -> PathSpec:
        """The same path with the proxy run from `tree`, named `<name>-base`."""
        return PathSpec(
            f"{self.name}-base",
            self.kind,
            self.env,
            f"{self.description} [from {tree}]",
            tree,
            self.default,
        )

    @property
    def tracing(self) -> bool:
        return self.kind == "proxy" and self.env.get("KTP_TRACING_ENABLED", "true") != "false"


PATHS: dict[str, PathSpec] = {
    p.name: p
    for p in (
        PathSpec("direct", "direct", description="client -> broker"),
        PathSpec("socat", "socat", description="client -> socat -b65536 -> broker"),
        PathSpec(
            "pyrelay",
            "pyrelay",
            description="client -> bare Python byte relay on uvloop, no Kafka logic -> broker",
        ),
        PathSpec(
            "proxy-off",
            "proxy",
            {"KTP_TRACING_ENABLED": "false"},
            "client -> proxy (tracing off) -> broker",
        ),
        PathSpec(
            "proxy-0pct",
            "proxy",
            {
                "KTP_TRACING_ENABLED": "true",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0",
            },
            "client -> proxy (tracing, nothing sampled: propagation alone) -> broker "
            "[diagnostic: --only]",
            default=False,
        ),
        PathSpec(
            "proxy-1pct",
            "proxy",
            {
                "KTP_TRACING_ENABLED": "true",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
            },
            "client -> proxy (tracing, 1% sampled) -> broker",
        ),
        PathSpec(
            "proxy-100pct",
            "proxy",
            {"KTP_TRACING_ENABLED": "true", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
            "client -> proxy (tracing, 100% sampled) -> broker",
        ),
    )
}


# -- process hygiene --------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an exception, so `finally` blocks stop every child process."""


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP unwind the stack like Ctrl-C does."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def run_logged(cmd: list[str], log_path: Path, timeout: float) -> tuple[int | None, str]:
    """Run a command in its own process group, output to `log_path`; never leave it running.

    Returns (exit code or None on timeout, combined output). The child also gets a parent-death
    signal, so even a SIGKILLed harness leaves no JVM behind.
    """
    log_path.unlink(missing_ok=True)
    proc = spawn(cmd, log_path)
    rc: int | None
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            kill_process_group(proc, timeout=2)
    return rc, log_path.read_text(errors="replace") if log_path.exists() else ""


def uptime() -> str:
    """`uptime` output (load averages), for the report."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# -- broker -----------------------------------------------------------------------------------


class BenchCluster(KafkaCluster):
    """A one-node cluster with extra listeners that advertise the byte relays' ports.

    Clients bootstrapping through socat receive metadata from the RELAY listener, which names
    `socat_port` as the broker, so all their traffic stays on the relay; the BARE listener does
    the same for the bare Python relay at `pyrelay_port`. TWIN advertises itself. The testbed has no
    public hook for extra listeners, hence the override of its config builder.
    """

    def __init__(self, workdir: Path, *, heap: str = "1g") -> None:
        super().__init__("4", 1, workdir, heap=heap)
        self.relay_listener_port = free_port()
        self.socat_port = free_port()
        self.bare_listener_port = free_port()
        self.pyrelay_port = free_port()
        self.twin_port = free_port()

    def _node_config(self, node: KafkaNode, voters: str) -> dict[str, Any]:
        config = super()._node_config(node, voters)
        if node.is_broker:
            twin = f",TWIN://127.0.0.1:{self.twin_port}"
            config["listeners"] += (
                f",RELAY://127.0.0.1:{self.relay_listener_port},BARE://127.0.0.1:{self.bare_listener_port}"
                + twin
            )
            config["advertised.listeners"] += (
                f",RELAY://127.0.0.1:{self.socat_port},BARE://127.0.0.1:{self.pyrelay_port}" + twin
            )
            config["listener.security.protocol.map"] += (
                ",RELAY:PLAINTEXT,BARE:PLAINTEXT,TWIN:PLAINTEXT"
            )
        return config

    @property
    def plain_port(self) -> int:
        return self.broker_ports[1]

    @property
    def twin_bootstrap(self) -> str:
        """Where a paired load's direct round trips go (the TWIN listener)."""
        return f"127.0.0.1:{self.twin_port}"

    @property
    def broker_pid(self) -> int:
        process = self.nodes[1].process
        assert process is not None
        return process.pid


def create_topics(bootstrap: str, names: list[str], timeout: float = 60.0) -> None:
    """Create single-partition topics up front, so no measured run waits for auto-creation."""
    import gc

    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=1, replication_factor=1) for n in names],
        operation_timeout=timeout,
    )
    for future in futures.values():
        future.result(timeout)
    del admin, futures
    gc.collect()  # destroys the client: its connection must not linger into a measured run


def advertised_brokers(bootstrap: str) -> list[str]:
    """The broker addresses a client learns when it bootstraps from `bootstrap`."""
    import gc

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(timeout=15)
        return sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    finally:
        del admin
        gc.collect()


# -- OTLP sink --------------------------------------------------------------------------------


class Sink:
    """The OTLP/HTTP sink (benchmarks/sink.py) as a child process."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.log_path = workdir / f"sink-{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        cmd = [sys.executable, "-m", "benchmarks.sink", str(self.port)]
        self._process = spawn(cmd, self.log_path, env=env, cwd=REPO_ROOT)
        wait_listening(self.port, self._process, 15)

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=5) as response:
            data: dict[str, int] = json.loads(response.read())
            return data

    def stop(self) -> None:
        if self._process is not None:
            kill_process_group(self._process, timeout=3)
            self._process = None


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts on 127.0.0.1:`port` (failing fast if `process` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


# -- paths ------------------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[tuple[str, str], float]:
    """(metric name, label text) -> value for every sample of a /metrics page."""
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        with contextlib.suppress(ValueError):
            samples[(name, labels.rstrip("}"))] = float(value)
    return samples


def metric_sum(samples: Mapping[tuple[str, str], float], name: str, **labels: str) -> float:
    """Sum of the series of `name` whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for (metric, label_text), value in samples.items()
        if metric == name and all(w in label_text for w in wanted)
    )


def on_cpu_seconds(pid: int) -> float | None:
    """How long the live threads of `pid` have run (schedstat, ns), or None where the kernel
    does not say. A thread that exited takes its time with it: the relays keep theirs."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/schedstat"):
                return None  # a kernel without schedstat
            # else: the thread ended after the listing
        except (OSError, ValueError, IndexError):
            return None
    return total / 1e9 if total else None  # all zero: the kernel does not count


class RunningPath:
    """A started path: where clients bootstrap, and the relay process whose cost we account."""

    def __init__(
        self, spec: PathSpec, cluster: BenchCluster, workdir: Path, python: str | None = None
    ) -> None:
        self.spec = spec
        self.python = python
        self.cluster = cluster
        self.workdir = workdir
        self.sink: Sink | None = None
        self.proxy: ProxyProcess | None = None
        self._byte_relay: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        spec = self.spec
        if spec.kind == "socat":
            socat = shutil.which("socat")
            if socat is None:
                raise RuntimeError(SOCAT_INSTALL_HINT)
            port, relay = self.cluster.socat_port, self.cluster.relay_listener_port
            cmd = [
                socat,
                "-b65536",
                f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
                f"TCP:127.0.0.1:{relay},nodelay",
            ]
            self._start_byte_relay(cmd, port)
        elif spec.kind == "pyrelay":
            port, relay = self.cluster.pyrelay_port, self.cluster.bare_listener_port
            python = self.python or sys.executable
            self._start_byte_relay(
                [python, "-m", "benchmarks.bare_relay", str(port), str(relay)],
                port,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        elif spec.kind == "proxy":
            env = {
                "KTP_LOG_LEVEL": "warning",
                "OTEL_SERVICE_NAME": f"bench-{spec.name}",
                **spec.env,
            }
            if spec.tracing:
                self.sink = Sink(self.workdir, spec.name)
                self.sink.start()
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.sink.endpoint
                env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
            self.proxy = ProxyProcess(
                self.cluster.bootstrap_servers,
                self.workdir,
                env=env,
                name=spec.name,
                python=self.python,
                source=spec.source,
            )
            self.proxy.start()
            self._ps = psutil.Process(self.proxy.pid)

    def _start_byte_relay(
        self, cmd: list[str], port: int, env: dict[str, str] | None = None
    ) -> None:
        """Start socat or the bare relay, listening on `port`, as the process to account."""
        self._byte_relay = spawn(
            cmd, self.workdir / f"{self.spec.name}.log", env=env, cwd=REPO_ROOT
        )
        wait_listening(port, self._byte_relay, 10)
        self._ps = psutil.Process(self._byte_relay.pid)

    def stop(self) -> None:
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
            self.proxy = None
        if self._byte_relay is not None:
            kill_process_group(self._byte_relay, timeout=3)
            self._byte_relay = None
        if self.sink is not None:
            self.sink.stop()
            self.sink = None

    @property
    def bootstrap(self) -> str:
        if self.spec.kind in ("socat", "pyrelay"):
            return self.expected_brokers()[0]
        if self.proxy is not None:
            return self.proxy.bootstrap_servers
        return self.cluster.bootstrap_servers

    def expected_brokers(self) -> list[str]:
        """The only broker address clients of this path may learn."""
        if self.spec.kind == "socat":
            return [f"127.0.0.1:{self.cluster.socat_port}"]
        if self.spec.kind == "pyrelay":
            return [f"127.0.0.1:{self.cluster.pyrelay_port}"]
        if self.proxy is not None:
            return [f"127.0.0.1:{self.proxy.broker_port(1)}"]
        return [f"127.0.0.1:{self.cluster.plain_port}"]

    @property
    def pid(self) -> int | None:
        """The relay process whose CPU and memory are measured (None for direct)."""
        return self._ps.pid if self._ps is not None else None

    def relay_pids(self) -> set[int]:
        """The relay process and its live children (socat forks one per connection)."""
        if self._ps is None:
            return set()
        pids = {self._ps.pid}
        with contextlib.suppress(psutil.Error):
            pids |= {c.pid for c in self._ps.children(recursive=True)}
        return pids

    def cpu_seconds(self) -> float:
        """User+system CPU of the relay so far, including exited (reaped) and live children.

        Live processes are read from the scheduler's per-thread nanosecond counters: the tick
        counts behind `cpu_times` are 10 ms steps, a tenth of what a consume run costs the
        proxy. Exited children only left ticks behind.
        """
        if self._ps is None:
            return 0.0
        times = self._ps.cpu_times()
        total = times.children_user + times.children_system
        processes = [self._ps]
        with contextlib.suppress(psutil.Error):
            processes += self._ps.children(recursive=True)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                on_cpu = on_cpu_seconds(process.pid)
                if on_cpu is None:
                    ticks = process.cpu_times()
                    on_cpu = ticks.user + ticks.system
                total += on_cpu
        return total

    def rss_bytes(self) -> int:
        if self._ps is None:
            return 0
        with contextlib.suppress(psutil.Error):
            return int(self._ps.memory_info().rss)
        return 0

    def peak_rss_bytes(self) -> int:
        """VmHWM: the kernel's record of the relay's peak resident memory."""
        if self._ps is None:
            return 0
        try:
            for line in Path(f"/proc/{self._ps.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def metrics(self) -> dict[tuple[str, str], float]:
        """The proxy's /metrics as parsed samples ({} for paths without a proxy)."""
        if self.proxy is None:
            return {}
        try:
            _, text = self.proxy.admin_get("/metrics")
        except OSError:
            return {}
        return parse_prometheus(text)


@contextlib.contextmanager
def started_paths(
    specs: list[PathSpec], cluster: BenchCluster, workdir: Path, python: str | None = None
) -> Iterator[dict[str, RunningPath]]:
    """Start every path (and verify what each advertises); stop them all on the way out.
    `python` runs the proxies and the bare relay (default: this interpreter)."""
    running: dict[str, RunningPath] = {}
    try:
        for spec in specs:
            path = RunningPath(spec, cluster, workdir, python)
            running[spec.name] = path
            path.start()
        for path in running.values():
            seen = advertised_brokers(path.bootstrap)
            if seen != path.expected_brokers():
                raise RuntimeError(
                    f"path {path.name}: clients would learn brokers {seen}, "
                    f"expected only {path.expected_brokers()} (traffic would bypass the path)"
                )
        yield running
    finally:
        for path in running.values():
            path.stop()


# -- bypass detection -------------------------------------------------------------------------


class LeakWatcher:
    """Samples the broker's connections during a run: does any client bypass the path?

    For a relay path, every connection to the broker's PLAINTEXT port must come from a proxy
    process (the one under test, or an idle one of another path), and connections on a byte
    relay's listener (RELAY, BARE) exist only on that relay's path. Samples once a second:
    reading one process's sockets costs ~1 ms.
    """

    def __init__(self, path: RunningPath, all_paths: Mapping[str, RunningPath]) -> None:
        self.path = path
        self.all_paths = all_paths
        self.samples = 0
        self.bypassing = 0  # max connections seen that did not go through the path
        self.relay_connections = 0  # max connections seen on the path's relay
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leak-watch", daemon=True)

    def __enter__(self) -> LeakWatcher:
        if self.path.spec.kind != "direct":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
            with contextlib.suppress(psutil.Error):
                self._sample()  # at least one sample even for runs under a second

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(psutil.Error):
                self._sample()

    def _broker_clients(self) -> tuple[set[int], dict[str, int]]:
        """Client ports of established PLAINTEXT connections, and the connection count on each
        byte relay's listener (RELAY for socat, BARE for pyrelay)."""
        cluster = self.path.cluster
        listeners = {cluster.relay_listener_port: "socat", cluster.bare_listener_port: "pyrelay"}
        plain: set[int] = set()
        relayed = dict.fromkeys(listeners.values(), 0)
        for conn in psutil.Process(cluster.broker_pid).net_connections("tcp"):
            if conn.status != psutil.CONN_ESTABLISHED or not conn.raddr:
                continue
            if conn.laddr.port == cluster.plain_port:
                plain.add(conn.raddr.port)
            elif conn.laddr.port in listeners:
                relayed[listeners[conn.laddr.port]] += 1
        return plain, relayed

    def _proxy_ports(self) -> tuple[set[int], set[int]]:
        """Local ports of every proxy's upstream PLAINTEXT connections, and of this path's."""
        plain_port = self.path.cluster.plain_port
        allowed: set[int] = set()
        own: set[int] = set()
        for other in self.all_paths.values():
            if other.spec.kind != "proxy":
                continue
            for pid in other.relay_pids():
                with contextlib.suppress(psutil.Error):
                    for conn in psutil.Process(pid).net_connections("tcp"):
                        if conn.raddr and conn.raddr.port == plain_port:
                            allowed.add(conn.laddr.port)
                            if other is self.path:
                                own.add(conn.laddr.port)
        return allowed, own

    def _sample(self) -> None:
        plain, on_relays = self._broker_clients()
        allowed, own = self._proxy_ports()
        suspects = plain - allowed
        if suspects:
            # The two snapshots are not atomic: a connection that closed in between looks like a
            # bypass. A real bypassing client stays connected, so look again.
            plain_again, _ = self._broker_clients()
            allowed_again, _ = self._proxy_ports()
            suspects = (suspects & plain_again) - allowed_again
        bypassing = len(suspects)
        kind = self.path.spec.kind
        # Connections on another path's relay listener bypass this one.
        bypassing += sum(n for relay_kind, n in on_relays.items() if relay_kind != kind)
        relayed = on_relays[kind] if kind in on_relays else len(plain & own)
        self.samples += 1
        self.bypassing = max(self.bypassing, bypassing)
        self.relay_connections = max(self.relay_connections, relayed)

    def report(self) -> dict[str, int]:
        return {
            "samples": self.samples,
            "bypassing_connections": self.bypassing,
            "relayed_connections": self.relay_connections,
        }
