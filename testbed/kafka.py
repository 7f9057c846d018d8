"""Real Apache Kafka brokers (KRaft) on loopback, run straight from the jars scripts/setup fetched.

The proxy has to be tested against the brokers it will meet, so the test bed starts the real
`kafka.Kafka` main class from Maven Central jars (no tarball), one JVM per node, each in its own
process group so that stopping a cluster never leaves a JVM behind.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from testbed.ports import free_port

# Keep in sync with KAFKA_4_VERSION / KAFKA_39_VERSION in scripts/setup.
KAFKA_VERSIONS: dict[str, str] = {"4": "4.3.1", "3.9": "3.9.2"}

DEFAULT_HEAP = "512m"
# Light flags: a 2-core machine starts several JVMs at once and serial GC starts fastest (G1 took
# about 1.5x as long here). The full JIT is kept: C1-only (-XX:TieredStopAtLevel=1) saved no
# measurable start-up time and would slow brokers under the proxy's throughput tests.
# Override with KafkaCluster(jvm_opts=...).
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)
CONTROLLER_NODE_ID = 100
"""Node id of the dedicated controller of a multi-broker cluster (brokers are 1..n)."""

SECURITY_PROTOCOLS: tuple[str, ...] = ("SSL", "SASL_PLAINTEXT", "SASL_SSL")
SCRAM_MECHANISM = "SCRAM-SHA-512"
_RESERVED_LISTENERS = frozenset({"PLAINTEXT", "CONTROLLER"})
# Characters that would need quoting in a JAAS option, a properties line or StorageTool's
# --add-scram syntax; test credentials simply avoid them.
_CREDENTIAL_FORBIDDEN = set(" \t\r\n\"'\\,;=[]{}")


@dataclass(frozen=True)
class SecurityConfig:
    """An extra broker listener secured with TLS and/or SASL (see KafkaCluster(security=...)).

    PLAINTEXT stays the inter-broker listener and the one readiness checks use; the controller
    keeps its own listener. `plain_users` become JAAS `user_<name>="<password>"` entries of the
    listener's PLAIN login module; `scram_users` get SCRAM-SHA-512 credentials written at storage
    format time (`--add-scram`), so they exist from the first start (SCRAM credentials live in
    the cluster metadata and are therefore shared by every SASL listener of the cluster).

    TLS (SSL, SASL_SSL) uses PEM files: `keystore` holds the private key (unencrypted PKCS#8)
    followed by the certificate chain (testbed.certs.KeyPair.pem); `truststore` holds the CAs
    client certificates are verified with; `client_auth` is none, requested or required.
    """

    protocol: str = "SASL_PLAINTEXT"
    name: str = "SECURE"
    plain_users: Mapping[str, str] = field(default_factory=dict)
    scram_users: Mapping[str, str] = field(default_factory=dict)
    keystore: Path | None = None
    truststore: Path | None = None
    client_auth: str = "none"

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def mechanisms(self) -> list[str]:
        """SASL mechanisms the listener enables (PLAIN and/or SCRAM-SHA-512)."""
        return [
            m
            for m, users in (("PLAIN", self.plain_users), (SCRAM_MECHANISM, self.scram_users))
            if users
        ]

    def validate(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: expected one of {SECURITY_PROTOCOLS}")
        if not self.name.isidentifier() or self.name.upper() != self.name:
            raise ValueError(f"listener name {self.name!r}: expected an upper-case identifier")
        if self.name in _RESERVED_LISTENERS:
            raise ValueError(f"listener name {self.name!r} is taken by the test bed")
        if self.client_auth not in ("none", "requested", "required"):
            raise ValueError(f"client_auth {self.client_auth!r}: none, requested or required")
        if self.tls and self.keystore is None:
            raise ValueError(f"{self.protocol} listener {self.name} needs a keystore (PEM)")
        if not self.tls and (self.keystore or self.truststore or self.client_auth != "none"):
            raise ValueError(f"{self.protocol} listener {self.name} has TLS settings")
        if self.client_auth != "none" and self.truststore is None:
            raise ValueError(f"client_auth={self.client_auth} needs a truststore (PEM)")
        if self.sasl and not self.mechanisms:
            raise ValueError(f"SASL listener {self.name} needs plain_users and/or scram_users")
        if not self.sasl and self.mechanisms:
            raise ValueError(f"{self.protocol} listener {self.name} cannot have SASL users")
        for user, password in {**self.plain_users, **self.scram_users}.items():
            if not user or not password or _CREDENTIAL_FORBIDDEN & set(user + password):
                raise ValueError(
                    f"credentials of {user!r}: non-empty, without white space or any of "
                    "\" ' \\ , ; = [ ] { }"
                )

    def broker_config(self) -> dict[str, Any]:
        """The listener-prefixed broker properties of this listener."""
        prefix = f"listener.name.{self.name.lower()}."
        config: dict[str, Any] = {}
        if self.sasl:
            config[prefix + "sasl.enabled.mechanisms"] = ",".join(self.mechanisms)
            if self.plain_users:
                users = " ".join(f'user_{u}="{p}"' for u, p in self.plain_users.items())
                config[prefix + "plain.sasl.jaas.config"] = (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
                )
            if self.scram_users:
                config[prefix + f"{SCRAM_MECHANISM.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        if self.tls:
            config[prefix + "ssl.keystore.type"] = "PEM"
            config[prefix + "ssl.keystore.location"] = self.keystore
            config[prefix + "ssl.client.auth"] = self.client_auth
            if self.truststore is not None:
                config[prefix + "ssl.truststore.type"] = "PEM"
                config[prefix + "ssl.truststore.location"] = self.truststore
        return config


class KafkaNotInstalledError(RuntimeError):
    """The jars for a Kafka version are not in the cache: run scripts/setup."""


class KafkaStartError(RuntimeError):
    """A broker did not come up; the message carries the tail of its log."""


def cache_dir() -> Path:
    """The directory scripts/setup fills (same convention: $KTP_CACHE_DIR or ~/.cache/...)."""
    env = os.environ.get("KTP_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kafka-trace-proxy"


def resolve_version(version: str) -> str:
    """Map a short name ("4", "3.9") to the pinned exact version; exact versions pass through."""
    return KAFKA_VERSIONS.get(version, version)


def major_version(version: str) -> int:
    """The major version number of a (short or exact) Kafka version."""
    return int(resolve_version(version).split(".")[0])


def kafka_home(version: str) -> Path:
    """Cache directory of one Kafka version (holds libs/)."""
    return cache_dir() / f"kafka-{resolve_version(version)}"


def kafka_libs(version: str) -> Path:
    """The libs/ directory of a Kafka version, checked to be complete."""
    home = kafka_home(version)
    if not (home / ".complete").is_file() or not (home / "libs").is_dir():
        raise KafkaNotInstalledError(
            f"Kafka {resolve_version(version)} jars not found in {home}: run scripts/setup"
        )
    return home / "libs"


def java_executable() -> str:
    """The `java` to run Kafka with: $JAVA_HOME/bin/java if set, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaNotInstalledError("java not found: install a JDK 17+ (scripts/setup does)")
    return found


_LOG4J2_TEMPLATE = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = {target}
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""

_LOG4J1_TEMPLATE = """\
log4j.rootLogger={level}, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.Target={target}
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)  # atomic: concurrent writers never expose a half-written file


def logging_jvm_args(version: str, *, level: str = "INFO", to_stderr: bool = False) -> list[str]:
    """JVM system properties that configure logging for `version`'s backend.

    4.x logs through log4j2 (log4j-slf4j-impl), 3.9 through reload4j (log4j 1 API); the config
    files are written next to the jars so every tool run shares them.
    """
    stream = "err" if to_stderr else "out"
    if major_version(version) >= 4:
        target = "SYSTEM_ERR" if to_stderr else "SYSTEM_OUT"
        path = kafka_home(version) / f"testbed-log4j2-{level.lower()}-{stream}.properties"
        _write_if_changed(path, _LOG4J2_TEMPLATE.format(level=level, target=target))
        return [f"-Dlog4j2.configurationFile={path}"]
    target = "System.err" if to_stderr else "System.out"
    path = kafka_home(version) / f"testbed-log4j-{level.lower()}-{stream}.properties"
    _write_if_changed(path, _LOG4J1_TEMPLATE.format(level=level, target=target))
    return [f"-Dlog4j.configuration=file:{path}"]


def _set_parent_death_signal() -> None:
    """In the child before exec: have the kernel SIGKILL the JVM if the test process dies."""
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def spawn(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own process group with output to `log_path`.

    When called from the main thread the child also gets a parent-death signal, so even a
    SIGKILLed pytest leaves no JVM behind (the signal fires when the spawning thread exits, which
    is why worker threads do not get it).
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    preexec = _set_parent_death_signal if in_main_thread else None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )


def kill_process_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL it if it has not exited in `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def random_cluster_id() -> str:
    """A Kafka cluster id (base64url of 16 random bytes, as `StorageTool random-uuid` prints).

    Made in Python to save a JVM start; like Kafka's Uuid.randomUuid it never starts with '-'.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass
class KafkaNode:
    """One KRaft node: its roles, ports, directory and (when running) its JVM."""

    node_id: int
    roles: str
    port: int | None
    controller_port: int | None
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Secured listener name -> port on 127.0.0.1 (brokers of a cluster with `security`).
    secure_ports: dict[str, int] = field(default_factory=dict)

    @property
    def is_broker(self) -> bool:
        return "broker" in self.roles.split(",")

    @property
    def is_controller(self) -> bool:
        return "controller" in self.roles.split(",")

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# librdkafka logs every refused connection while a broker boots; readiness polls discard that.
_QUIET_LOGGER = logging.getLogger("testbed.kafka.readiness")
_QUIET_LOGGER.propagate = False
_QUIET_LOGGER.addHandler(logging.NullHandler())

# Strong references: a running cluster that a caller dropped must still be stopped at exit.
_LIVE_CLUSTERS: set[KafkaCluster] = set()


@atexit.register
def _stop_all_clusters() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        with contextlib.suppress(Exception):
            cluster.stop(timeout=5)


class KafkaCluster:
    """A KRaft cluster on 127.0.0.1 with PLAINTEXT listeners and test-friendly settings.

    brokers=1 runs one combined broker+controller node (id 1). brokers=n>1 runs a dedicated
    controller (id 100) plus brokers 1..n: stopping a broker for a fault test then never touches
    the quorum, and brokers start in parallel once the single controller is up.

    security=SecurityConfig(...) (or a sequence of them, with distinct names) gives every broker
    one more listener per config, on its own free port, with TLS and/or SASL; see
    `secure_bootstrap_servers`. PLAINTEXT stays for inter-broker traffic and readiness checks.
    """

    def __init__(
        self,
        version: str = "4",
        brokers: int = 1,
        workdir: Path | None = None,
        extra_config: Mapping[str, Any] | None = None,
        *,
        heap: str = DEFAULT_HEAP,
        jvm_opts: Sequence[str] = DEFAULT_JVM_OPTS,
        start_timeout: float = 120.0,
        security: SecurityConfig | Sequence[SecurityConfig] | None = None,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        if security is None:
            self.security: tuple[SecurityConfig, ...] = ()
        elif isinstance(security, SecurityConfig):
            self.security = (security,)
        else:
            self.security = tuple(security)
        for listener in self.security:
            listener.validate()
        names = [listener.name for listener in self.security]
        if len(set(names)) != len(names):
            raise ValueError(f"secured listener names must be distinct: {names}")
        self.version = resolve_version(version)
        self.brokers = brokers
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix=f"kafka-{self.version}-"))
        )
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self.heap = heap
        self.jvm_opts = list(jvm_opts)
        self.start_timeout = start_timeout
        self.cluster_id = random_cluster_id()
        self.nodes: dict[int, KafkaNode] = {}
        self.start_seconds: float | None = None
        """Wall time the last start() took (format + JVM start + ready), for reports."""

    # -- addresses ---------------------------------------------------------------------------

    @property
    def broker_ports(self) -> dict[int, int]:
        """Broker node id -> PLAINTEXT port on 127.0.0.1."""
        return {n.node_id: n.port for n in self.nodes.values() if n.is_broker and n.port}

    @property
    def bootstrap_servers(self) -> str:
        """ "127.0.0.1:port,..." over all brokers."""
        if not self.nodes:
            raise RuntimeError("cluster not started")
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports.values())

    def secure_broker_ports(self, listener: str | None = None) -> dict[int, int]:
        """Broker node id -> port of a secured listener (default: the first one configured)."""
        name = self._listener_name(listener)
        return {
            n.node_id: n.secure_ports[name]
            for n in self.nodes.values()
            if n.is_broker and name in n.secure_ports
        }

    def secure_bootstrap(self, listener: str | None = None) -> str:
        """ "127.0.0.1:port,..." of a secured listener over all brokers."""
        if not self.nodes:
            raise RuntimeError("cluster not started")
        ports = self.secure_broker_ports(listener)
        return ",".join(f"127.0.0.1:{port}" for port in ports.values())

    @property
    def secure_bootstrap_servers(self) -> str:
        """ "127.0.0.1:port,..." of the (first) secured listener over all brokers."""
        return self.secure_bootstrap()

    def _listener_name(self, listener: str | None) -> str:
        if not self.security:
            raise RuntimeError("cluster has no secured listener (KafkaCluster(security=...))")
        if listener is None:
            return self.security[0].name
        if listener not in {s.name for s in self.security}:
            known = [s.name for s in self.security]
            raise KeyError(f"no secured listener {listener!r} (listeners: {known})")
        return listener

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Format storage for every node, start the JVMs and wait until all brokers answer."""
        if any(n.running for n in self.nodes.values()):
            raise RuntimeError("cluster already running")
        began = time.monotonic()
        libs = kafka_libs(self.version)  # fail fast with "run scripts/setup"
        self._plan_nodes()
        _LIVE_CLUSTERS.add(self)
        try:
            self._format_all(libs)
            # Controllers first: brokers then find the quorum at their first attempt.
            for node in sorted(self.nodes.values(), key=lambda n: not n.is_controller):
                self._launch(node)
            self._wait_ready(list(self.broker_ports), time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        self.start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every node (brokers before controllers, so controlled shutdown can finish)."""
        brokers_only = [n for n in self.nodes.values() if n.is_broker and not n.is_controller]
        controllers = [n for n in self.nodes.values() if n.is_controller]
        for group in (brokers_only, controllers):
            self._stop_nodes(group, timeout)
        _LIVE_CLUSTERS.discard(self)

    def stop_broker(self, node_id: int, *, graceful: bool = True, timeout: float = 15.0) -> None:
        """Stop one broker: SIGTERM (controlled shutdown) or, with graceful=False, SIGKILL."""
        node = self._broker(node_id)
        if not node.running:
            return
        assert node.process is not None
        if graceful:
            self._stop_nodes([node], timeout)
        else:
            kill_process_group(node.process, timeout=0)

    def start_broker(self, node_id: int, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Restart a stopped broker on the same port and storage; wait until it serves."""
        node = self._broker(node_id)
        if node.running:
            return
        self._launch(node)
        if wait:
            self._wait_ready([node_id], time.monotonic() + timeout)

    def is_running(self, node_id: int) -> bool:
        """Whether node `node_id`'s JVM is alive."""
        return self.nodes[node_id].running

    def log_tail(self, node_id: int, lines: int = 60) -> str:
        """The end of a node's log, for assertion messages."""
        return tail(self.nodes[node_id].log_path, lines)

    # -- internals ---------------------------------------------------------------------------

    def _broker(self, node_id: int) -> KafkaNode:
        node = self.nodes.get(node_id)
        if node is None or not node.is_broker:
            brokers = sorted(self.broker_ports)
            raise KeyError(f"no broker with node id {node_id} (brokers: {brokers})")
        return node

    def _plan_nodes(self) -> None:
        if self.nodes:  # restart after stop(): same ports and storage
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.brokers == 1:
            self.nodes[1] = KafkaNode(
                1, "broker,controller", free_port(), free_port(), self.workdir / "node-1"
            )
        else:
            self.nodes[CONTROLLER_NODE_ID] = KafkaNode(
                CONTROLLER_NODE_ID,
                "controller",
                None,
                free_port(),
                self.workdir / f"node-{CONTROLLER_NODE_ID}",
            )
            for node_id in range(1, self.brokers + 1):
                self.nodes[node_id] = KafkaNode(
                    node_id, "broker", free_port(), None, self.workdir / f"node-{node_id}"
                )
        for node in self.nodes.values():
            if node.is_broker:
                node.secure_ports = {listener.name: free_port() for listener in self.security}
        voters = ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}"
            for n in self.nodes.values()
            if n.is_controller
        )
        for node in self.nodes.values():
            node.directory.mkdir(parents=True, exist_ok=True)
            lines = [f"{k}={v}" for k, v in self._node_config(node, voters).items()]
            node.config_path.write_text("\n".join(lines) + "\n")

    def _node_config(self, node: KafkaNode, voters: str) -> dict[str, Any]:
        listeners = []
        secured = [f"{s.name}://127.0.0.1:{node.secure_ports[s.name]}" for s in self.security]
        if node.is_broker:
            listeners.append(f"PLAINTEXT://127.0.0.1:{node.port}")
            listeners += secured
        if node.is_controller:
            listeners.append(f"CONTROLLER://127.0.0.1:{node.controller_port}")
        protocol_map = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        protocol_map += [f"{s.name}:{s.protocol}" for s in self.security]
        config: dict[str, Any] = {
            "process.roles": node.roles,
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join(listeners),
            "listener.security.protocol.map": ",".join(protocol_map),
            "log.dirs": node.directory / "data",
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
        }
        # Topic defaults go to every node: from 4.x on the controller decides them for
        # auto-created topics (and warns that brokers' values will be ignored in 5.0).
        config.update(
            {
                "auto.create.topics.enable": "true",
                "num.partitions": 1,
                "default.replication.factor": 1,
                "min.insync.replicas": 1,
                "offsets.topic.replication.factor": 1,
                "offsets.topic.num.partitions": 10,
                "transaction.state.log.replication.factor": 1,
                "transaction.state.log.min.isr": 1,
                "transaction.state.log.num.partitions": 10,
                "group.initial.rebalance.delay.ms": 0,
                # A restarted broker cannot register until the controller has expired its
                # previous session (default 9 s), and a killed broker is fenced only then: a
                # shorter session makes fault tests faster, while 1 s heartbeats still leave
                # 5 s of slack for a JVM starved of CPU on a loaded 2-core machine.
                "broker.session.timeout.ms": 6000,
                "broker.heartbeat.interval.ms": 1000,
            }
        )
        if major_version(self.version) >= 4:
            config.update(
                {
                    "share.coordinator.state.topic.replication.factor": 1,
                    "share.coordinator.state.topic.min.isr": 1,
                }
            )
        if node.is_broker:
            config.update(
                {
                    "advertised.listeners": ",".join(
                        [f"PLAINTEXT://127.0.0.1:{node.port}", *secured]
                    ),
                    "inter.broker.listener.name": "PLAINTEXT",
                }
            )
            for listener in self.security:
                config.update(listener.broker_config())
        config.update(self.extra_config)
        return config

    def _jvm_command(
        self,
        libs: Path,
        main_class: str,
        *args: str,
        level: str = "INFO",
        short_lived: bool = False,
    ) -> list[str]:
        # A short-lived tool (StorageTool) starts faster with a small heap and C1 only.
        memory = (
            ["-Xmx128m", "-XX:TieredStopAtLevel=1"]
            if short_lived
            else [f"-Xmx{self.heap}", f"-Xms{self.heap}"]
        )
        return [
            java_executable(),
            *memory,
            *self.jvm_opts,
            *logging_jvm_args(self.version, level=level),
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def _format_all(self, libs: Path) -> None:
        pending = []
        for node in self.nodes.values():
            if (node.directory / "data" / "meta.properties").is_file():
                continue  # formatted by an earlier start()
            cmd = self._jvm_command(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(node.config_path),
                *self._scram_format_args(),
                level="WARN",
                short_lived=True,
            )
            out = node.directory / "format.log"
            pending.append((node, out, spawn(cmd, out)))
        for node, out, proc in pending:
            try:
                rc = proc.wait(120)
            except subprocess.TimeoutExpired:
                kill_process_group(proc, 0)
                rc = -1
            if rc != 0:
                raise KafkaStartError(
                    f"StorageTool format failed for node {node.node_id} (rc={rc}):\n{tail(out)}"
                )

    def _scram_format_args(self) -> list[str]:
        """StorageTool arguments that create the SCRAM users of every secured listener."""
        users: dict[str, str] = {}
        for listener in self.security:
            for user, password in listener.scram_users.items():
                if users.setdefault(user, password) != password:
                    raise ValueError(f"SCRAM user {user!r} has two different passwords")
        args: list[str] = []
        for user, password in users.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        return args

    def _launch(self, node: KafkaNode) -> None:
        libs = kafka_libs(self.version)
        cmd = self._jvm_command(libs, "kafka.Kafka", str(node.config_path))
        env = dict(os.environ)
        env.pop("KAFKA_OPTS", None)
        node.process = spawn(cmd, node.log_path, env=env, cwd=node.directory)

    def _stop_nodes(self, nodes: list[KafkaNode], timeout: float) -> None:
        live = [n for n in nodes if n.process is not None]
        for node in live:
            assert node.process is not None
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in live:
            assert node.process is not None
            kill_process_group(node.process, timeout=max(0.0, deadline - time.monotonic()))

    def _wait_ready(self, broker_ids: list[int], deadline: float) -> None:
        """Wait until each broker accepts TCP and answers Metadata listing every live broker."""
        waiting = set(broker_ids)
        while True:
            for node in self.nodes.values():
                if node.process is not None and node.process.poll() is not None:
                    raise KafkaStartError(
                        f"Kafka {self.version} node {node.node_id} exited with "
                        f"{node.process.returncode} during start-up; log tail:\n"
                        f"{tail(node.log_path)}"
                    )
            expected = {i for i, n in self.nodes.items() if n.is_broker and n.running}
            for node_id in sorted(waiting):
                if _broker_answers(self.nodes[node_id].port or 0, expected):
                    waiting.discard(node_id)
            if not waiting:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- node {i} ({self.nodes[i].log_path}):\n{tail(self.nodes[i].log_path, 40)}"
                    for i in sorted(waiting)
                )
                raise KafkaStartError(
                    f"Kafka {self.version} brokers {sorted(waiting)} not ready after "
                    f"{self.start_timeout:.0f}s\n{logs}"
                )
            time.sleep(0.25)


def _broker_answers(port: int, expected_brokers: set[int]) -> bool:
    """True when the broker on `port` answers a Metadata request that lists `expected_brokers`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    except OSError:
        return False
    from confluent_kafka.admin import AdminClient  # imported late: only needed here

    admin = AdminClient(
        {
            "bootstrap.servers": f"127.0.0.1:{port}",
            "socket.connection.setup.timeout.ms": 2000,
            "logger": _QUIET_LOGGER,
        }
    )
    try:
        metadata = admin.list_topics(timeout=3)
    except Exception:
        return False
    return expected_brokers <= set(metadata.brokers)
