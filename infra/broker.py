"""The embedded broker: a single-node Apache Kafka (KRaft) run from the official jars.

The jars are resolved from Maven Central by the small Maven project in ``infra/kafka/pom.xml``
(``mvn dependency:copy-dependencies``) into a cache folder. Storage is formatted on first
start and kept under the state directory, so topics and data survive a restart.
"""

from __future__ import annotations

import base64
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

from infra.security import ADMIN, MECHANISM, BrokerSecrets, apply, broker_properties, scram_bootstrap
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
    security: Literal["plaintext", "sasl_ssl"] = Field(
        default="sasl_ssl", description="sasl_ssl: TLS, a SCRAM user per processor and least-privilege ACLs; "
                                        "plaintext: anyone who reaches the port may do anything.")
    extra_properties: dict[str, str] = Field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    jars: int


class EmbeddedBroker:
    """Start, stop and inspect a single-node KRaft broker whose files live in ``state_dir/kafka``."""

    def __init__(self, config: BrokerConfig, state_dir: Path) -> None:
        self.config = config
        self.home = state_dir.resolve() / "kafka"
        self.jars_dir = (config.jars_dir or self.home / "jars").resolve()
        self.data_dir = self.home / "data"
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "broker.log"
        self.properties_file = self.home / "server.properties"
        self.secrets = BrokerSecrets(self.home / "security")

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

    def _write_properties(self) -> None:
        c = self.config
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{c.host}:{c.controller_port}",
            "listeners": f"PLAINTEXT://{c.host}:{c.port},CONTROLLER://{c.host}:{c.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{c.host}:{c.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "60000",
            **(broker_properties(self.secrets.ensure(c.host), c.host, c.port, c.controller_port) if self.secured else {}),
            **c.extra_properties,
        }
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)
        # owner-only from the start: it may hold SASL passwords or key store secrets (extra_properties)
        fd = os.open(self.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{k}={v}\n" for k, v in properties.items()))
        (self.home / "log4j2.properties").write_text(LOG4J2)

    def _classpath(self) -> str:
        return str(self.ensure_jars() / "*")

    def _format_storage(self, java: str) -> None:
        mode = self.data_dir / "sdg-security"  # what the storage was formatted for: its users live in it
        if (self.data_dir / "meta.properties").exists():
            formatted = mode.read_text().strip() if mode.exists() else "plaintext"
            if formatted != self.config.security:
                raise BrokerError(f"the broker's storage in {self.data_dir} was formatted for {formatted}, not "
                                  f"{self.config.security}; set SDG_BROKER__SECURITY={formatted} or remove the folder")
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        command = [java, "-cp", self._classpath(), f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                   "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(self.properties_file),
                   *(scram_bootstrap(self.secrets) if self.secured else [])]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} failed:\n{result.stdout}{result.stderr}")
        mode.write_text(self.config.security)

    def pid(self) -> int | None:
        """The broker's process id when it is running (from the pid file)."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_live(pid) and self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is this broker (the pid file may name a reused pid after a reboot)."""
        try:
            return str(self.properties_file).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False

    def start(self) -> BrokerStatus:
        """Start the broker (if it is not running) and wait for a real metadata round trip.

        Raises:
            BrokerError: Java or the jars are missing, the port is taken, or the broker did not come up.
        """
        if self.pid() is not None:
            wait_for_broker(self.kafka, timeout_s=self.config.start_timeout_s)
            return self.status()
        java = self._java()
        for port in (self.config.port, self.config.controller_port):
            _check_free(self.config.host, port)
        self._write_properties()
        self._format_storage(java)
        command = [
            java, f"-Xmx{self.config.heap}", f"-Xms{min(256, _mib(self.config.heap))}m", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp", self._classpath(), "kafka.Kafka", str(self.properties_file),
        ]
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            if process.poll() is not None:
                raise BrokerError(f"the Kafka broker exited with code {process.returncode}; log tail:\n{self._log_tail()}")
            try:
                wait_for_broker(self.kafka, timeout_s=1.0)
                if self.secured:
                    apply(self.kafka, self.secrets)  # every principal's credential and ACLs, new processors' too
                return self.status()
            except BrokerError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        f"the Kafka broker did not answer on {self.config.bootstrap} within "
                        f"{self.config.start_timeout_s}s; log tail:\n{self._log_tail()}"
                    ) from None

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop the broker gracefully (SIGTERM, then SIGKILL after ``timeout_s``); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _is_live(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> BrokerStatus:
        jars = len(list(self.jars_dir.glob("*.jar"))) if self.jars_dir.exists() else 0
        return BrokerStatus(self.pid() is not None, self.pid(), self.config.bootstrap, self.data_dir, jars)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


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
