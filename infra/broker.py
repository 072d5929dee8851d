"""The embedded broker: a single-node Apache Kafka (KRaft) run from the official jars.

The jars are resolved from Maven Central by the small Maven project in ``infra/kafka/pom.xml``
(``mvn dependency:copy-dependencies``) into a cache folder. Storage is formatted on first
start and kept under the state directory, so topics and data survive a restart.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from infra.security import (
    ADMIN,
    MECHANISM,
    BrokerSecrets,
    apply,
    broker_properties,
    client_properties,
    private_write,
    scram_bootstrap,
)
from streams.admin import wait_for_broker
from streams.config import KafkaConfig
from streams.errors import BrokerError

POM = Path(__file__).parent / "kafka" / "pom.xml"
PLAINTEXT_WARNING = ("warning: the broker is PLAINTEXT with no authentication: any local process may write any topic "
                     "(unset SDG_BROKER__SECURITY to secure it)")
LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


class BrokerConfig(BaseModel):
    """Where and how the embedded broker runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    controller_port: int = Field(default=9093, ge=1, le=65535)
    heap: str = "768m"
    jars_dir: Path | None = Field(default=None, description="Cache of the Kafka jars (default: <state>/kafka/jars).")
    start_timeout_s: float = Field(default=90, gt=0)
    nodes: int = Field(default=1, ge=1, le=5, description="KRaft nodes on this host: 3 for a replicated cluster.")
    security: Literal["plaintext", "sasl_ssl"] = Field(
        default="sasl_ssl", description="sasl_ssl: TLS, a SCRAM user per processor and least-privilege ACLs; "
                                        "plaintext: anyone who reaches the port may do anything.")
    extra_properties: dict[str, str] = Field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{port}" for port, _ in self.ports())

    def environment(self) -> dict[str, str]:
        """These settings as ``SDG_BROKER__*`` variables: a child process reaches the same embedded broker."""
        return {f"SDG_BROKER__{k.upper()}": json.dumps(v) if isinstance(v, dict) else str(v)
                for k, v in self.model_dump(mode="json").items() if v is not None}

    def ports(self) -> list[tuple[int, int]]:
        """(client port, controller port) of each node: ``port``/``controller_port``, then two higher per node."""
        return [(self.port + 2 * i, self.controller_port + 2 * i) for i in range(self.nodes)]


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None  # the first node's
    bootstrap: str
    data_dir: Path
    jars: int
    pids: tuple[int | None, ...] = ()  # every node's, None where it is down


@dataclass(frozen=True)
class Node:
    """One KRaft node (broker and controller) of the embedded cluster: node ids count from 1."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    pid_file: Path
    log_file: Path
    properties_file: Path


def kraft_properties(node_id: int, voters: dict[int, str], host: str, port: int, controller_port: int,
                     log_dir: Path | str, secrets: BrokerSecrets | None, *, bind: str | None = None) -> dict[str, str]:
    """``server.properties`` of one node of a KRaft cluster (broker and controller) whose controllers are
    ``voters`` (node id: host:port): advertised as ``host``, listening on ``bind`` (``host`` by default), secured
    when given the cluster's ``secrets``; with three or more nodes, internal topics are replicated 3 times with a
    minimum ISR of 2."""
    listen = bind if bind is not None else host
    replicas, isr = str(min(3, len(voters))), str(min(2, len(voters)))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(f"{n}@{address}" for n, address in voters.items()),
        "listeners": f"PLAINTEXT://{listen}:{port},CONTROLLER://{listen}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "min.insync.replicas": isr,
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.check.interval.ms": "60000",
        **(broker_properties(secrets, host, port, controller_port, bind=bind) if secrets is not None else {}),
    }


def write_cluster_files(secrets: BrokerSecrets, hosts: list[str], *, port: int = 9092, controller_port: int = 9093,
                        log_dir: Path | str = "/var/lib/kafka/data", bind: str = "0.0.0.0") -> list[Path]:
    """A secured cluster of one node per host (the compose file's ``kafka-1`` ...), in the secrets folder:
    ``node-<id>.properties`` for each node, ``client.properties`` (the admin, for Kafka's own tools) and
    ``admin-scram`` (the ``kafka-storage format --add-scram`` argument). Owner-only, like the secrets."""
    secrets.ensure(*hosts)
    voters = {i: f"{host}:{controller_port}" for i, host in enumerate(hosts, start=1)}
    files = {f"node-{i}.properties": kraft_properties(i, voters, host, port, controller_port, log_dir, secrets,
                                                      bind=bind)
             for i, host in enumerate(hosts, start=1)}
    files["client.properties"] = client_properties(secrets)
    for name, properties in files.items():
        write_properties(secrets.folder / name, properties)
    private_write(secrets.folder / "admin-scram", scram_bootstrap(secrets)[1].encode())
    return [secrets.folder / name for name in [*files, "admin-scram"]]


def write_properties(path: Path, properties: dict[str, str]) -> None:
    """A Java ``.properties`` file, owner-only: it may hold SASL passwords and key store secrets."""
    private_write(path, "".join(f"{k}={v}\n" for k, v in properties.items()).encode())


class EmbeddedBroker:
    """Start, stop and inspect a KRaft cluster of ``config.nodes`` local nodes (one by default) whose files live
    in ``state_dir/kafka``; with three or more, internal topics are replicated 3 times with a minimum ISR of 2."""

    def __init__(self, config: BrokerConfig, state_dir: Path) -> None:
        self.config = config
        self.home = state_dir.resolve() / "kafka"
        self.jars_dir = (config.jars_dir or self.home / "jars").resolve()
        self.secrets = BrokerSecrets(self.home / "security")
        self.nodes: list[Node] = []
        for i, (port, controller) in enumerate(config.ports()):
            suffix = "" if i == 0 else f"-{i + 1}"  # the first node keeps a single node's file names
            self.nodes.append(Node(i + 1, port, controller, self.home / f"data{suffix}", self.home / f"broker{suffix}.pid",
                                   self.home / f"broker{suffix}.log", self.home / f"server{suffix}.properties"))
        self.data_dir, self.log_file = self.nodes[0].data_dir, self.nodes[0].log_file

    @property
    def secured(self) -> bool:
        return self.config.security == "sasl_ssl"

    @property
    def kafka(self) -> KafkaConfig:
        """Client settings that reach this broker (as the admin when it is secured)."""
        return self.client(ADMIN)

    def client(self, user: str) -> KafkaConfig:
        """Client settings that reach this broker as ``user`` (its SCRAM principal when the broker is secured)."""
        if not self.secured:
            return KafkaConfig(bootstrap_servers=self.config.bootstrap)
        self.secrets.ensure(self.config.host)  # made before the first start too: the broker takes the same ones
        return KafkaConfig(bootstrap_servers=self.config.bootstrap, security_protocol="SASL_SSL",
                           sasl_mechanism=MECHANISM, sasl_username=user,
                           sasl_password=SecretStr(self.secrets.password(user)), ssl_ca_location=str(self.secrets.ca))

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "the embedded broker needs Java 17+ on PATH (`java` not found); install a JRE "
                "(e.g. apt-get install openjdk-17-jre-headless) or set SDG_KAFKA__BOOTSTRAP_SERVERS to a running cluster"
            )
        return java

    def ensure_jars(self) -> Path:
        """Resolve the Kafka jars from Maven Central once; later calls reuse the cache."""
        done = self.jars_dir / ".complete"
        if done.exists():
            return self.jars_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                f"the Kafka jars are not in {self.jars_dir} and Maven (`mvn`) is not on PATH to fetch them; "
                "install Maven or set SDG_BROKER__JARS_DIR to a folder with the Kafka jars"
            )
        self.jars_dir.mkdir(parents=True, exist_ok=True)
        command = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                   f"-DoutputDirectory={self.jars_dir}", "-DincludeScope=runtime"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"resolving the Kafka jars failed ({' '.join(command)}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        done.touch()
        return self.jars_dir

    def _write_properties(self, node: Node) -> None:
        c = self.config
        properties = {
            **kraft_properties(node.node_id, {n.node_id: f"{c.host}:{n.controller_port}" for n in self.nodes},
                               c.host, node.port, node.controller_port, node.data_dir,
                               self.secrets.ensure(c.host) if self.secured else None),
            **c.extra_properties,
        }
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)
        write_properties(node.properties_file, properties)
        (self.home / "log4j2.properties").write_text(LOG4J2)

    def _classpath(self) -> str:
        return str(self.ensure_jars() / "*")

    def _format_storage(self, java: str, node: Node, cluster_id: str) -> None:
        mode = node.data_dir / "sdg-security"  # what the storage was formatted for: its users live in it
        if (node.data_dir / "meta.properties").exists():
            formatted = mode.read_text().strip() if mode.exists() else "plaintext"
            if formatted != self.config.security:
                raise BrokerError(f"the broker's storage in {node.data_dir} was formatted for {formatted}, not "
                                  f"{self.config.security}; set SDG_BROKER__SECURITY={formatted} or remove the folder")
            return
        command = [java, "-cp", self._classpath(), f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                   "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config",
                   str(node.properties_file), *(scram_bootstrap(self.secrets) if self.secured else [])]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage in {node.data_dir} failed:\n{result.stdout}{result.stderr}")
        mode.write_text(self.config.security)

    def _cluster_id(self) -> str:
        """The id every node's storage is formatted with: the first node's when it is formatted, else a new one."""
        meta = self.nodes[0].data_dir / "meta.properties"
        if meta.exists():
            return next(line.split("=", 1)[1].strip() for line in meta.read_text().splitlines()
                        if line.startswith("cluster.id="))
        return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def node_pid(self, node: Node) -> int | None:
        """A node's process id when it is running (from its pid file)."""
        try:
            pid = int(node.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_live(pid) and self._is_ours(pid, node) else None

    def pid(self) -> int | None:
        """The first node's process id when it is running."""
        return self.node_pid(self.nodes[0])

    def _is_ours(self, pid: int, node: Node) -> bool:
        """Whether ``pid`` is this node (the pid file may name a reused pid after a reboot)."""
        try:
            return str(node.properties_file).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False

    def start(self) -> BrokerStatus:
        """Start the nodes that are not running and wait until every one answers a metadata round trip.

        Raises:
            BrokerError: Java or the jars are missing, a port is taken, or a node did not come up.
        """
        down = [node for node in self.nodes if self.node_pid(node) is None]
        kafka = self.kafka
        if not down:
            wait_for_broker(kafka, timeout_s=self.config.start_timeout_s)
            return self.status()
        java = self._java()
        for node in down:
            for port in (node.port, node.controller_port):
                _check_free(self.config.host, port)
        processes, cluster_id = {}, self._cluster_id()
        for node in down:
            self._write_properties(node)
            self._format_storage(java, node, cluster_id)
            command = [
                java, f"-Xmx{self.config.heap}", f"-Xms{min(256, _mib(self.config.heap))}m", "-XX:+UseG1GC",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "-cp", self._classpath(), "kafka.Kafka", str(node.properties_file),
            ]
            with node.log_file.open("ab") as log:
                processes[node] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)
            node.pid_file.write_text(str(processes[node].pid))
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            for node, process in processes.items():
                if process.poll() is not None:
                    raise BrokerError(f"Kafka node {node.node_id} exited with code {process.returncode}; log tail:\n"
                                      f"{self._log_tail(node)}")
            try:
                if wait_for_broker(kafka, timeout_s=1.0) >= len(self.nodes):
                    if self.secured and len(down) == len(self.nodes):  # (a node rejoining finds them in place)
                        apply(kafka, self.secrets)  # every principal's credential and ACLs, new processors' too
                    return self.status()
            except BrokerError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"the Kafka broker did not answer on {self.config.bootstrap} with {len(self.nodes)} node(s) "
                    f"within {self.config.start_timeout_s}s; log tail:\n{self._log_tail(down[0])}")
            time.sleep(0.2)

    def kill(self, node_id: int) -> bool:
        """SIGKILL one node (a crash, for fault tests); False if it was not running."""
        node = self.nodes[node_id - 1]
        pid = self.node_pid(node)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        while _is_live(pid):
            time.sleep(0.05)
        return True

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop every node gracefully (SIGTERM, then SIGKILL after ``timeout_s``); False if none was running."""
        pids = {node: self.node_pid(node) for node in self.nodes}
        for node, pid in pids.items():
            if pid is None:
                node.pid_file.unlink(missing_ok=True)
            else:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node, pid in pids.items():
            while pid is not None and _is_live(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            node.pid_file.unlink(missing_ok=True)
        return any(pid is not None for pid in pids.values())

    def status(self) -> BrokerStatus:
        jars = len(list(self.jars_dir.glob("*.jar"))) if self.jars_dir.exists() else 0
        pids = tuple(self.node_pid(node) for node in self.nodes)
        return BrokerStatus(all(p is not None for p in pids), pids[0], self.config.bootstrap, self.data_dir, jars, pids)

    def _log_tail(self, node: Node, lines: int = 30) -> str:
        try:
            return "\n".join(node.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """The first of ``size`` consecutive free ports on ``host`` (a cluster of size/2 nodes: ``port`` = it,
    ``controller_port`` = it + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        try:
            for port in range(base, base + size):
                _check_free(host, port)
            return base
        except BrokerError:
            continue
    raise BrokerError(f"no {size} consecutive free ports on {host}")


def _check_free(host: str, port: int) -> None:
    """Raise when something else listens on ``host:port`` (it would answer in place of our broker)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise BrokerError(
                f"port {host}:{port} is in use by another process; stop it or set SDG_BROKER__PORT / "
                "SDG_BROKER__CONTROLLER_PORT"
            ) from e


def _is_live(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed child its parent has not reaped yet)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _mib(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()]) if size[-1].lower() in units else int(size) // 2**20
