"""What the chaos and soak benches share: a secured embedded broker in a fresh state directory, trained quality
models, and ``sdg run <processor>`` child processes that connect as their own principals."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from infra.broker import BrokerConfig, EmbeddedBroker, free_port_block
from sdg.history import query
from sdg.settings import Settings
from sdg.training import train_quality_models
from streams import admin

ROOT = Path(__file__).resolve().parents[1]


class Pipeline:
    """A secured broker of ``nodes`` nodes, the tables, and the processes started by :meth:`launch`."""

    def __init__(self, name: str, *, nodes: int, console: Console) -> None:
        self.state = Path(tempfile.mkdtemp(prefix=f"sdg-{name}-"))
        base = free_port_block(2 * nodes)
        self.broker = BrokerConfig(nodes=nodes, port=base, controller_port=base + 1, heap="384m",
                                   start_timeout_s=180, jars_dir=ROOT / ".sdg" / "kafka" / "jars")
        self.settings = Settings(state_dir=self.state, broker=self.broker, run_id=name)
        self.cluster: EmbeddedBroker = self.settings.embedded_broker()
        with console.status(f"a secured {nodes}-node cluster"):
            self.cluster.start()
            admin.create_topics(self.settings.kafka_client, self.settings.topics)
        train_quality_models(self.settings, extractor_steps=100, labeler_steps=150, console=console)
        self.env = {**os.environ, "SDG_STATE_DIR": str(self.state), "SDG_RUN_ID": name, "SDG_SINK__MAX_BATCH_S": "1",
                    **self.broker.environment()}
        self.logs = self.state / "logs"
        self.logs.mkdir()
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) ``sdg run <name>``, its output appended to ``logs/<name>.log``."""
        with open(self.logs / f"{name}.log", "ab") as log:
            self.running[name] = subprocess.Popen([sys.executable, "-m", "sdg", "run", name], cwd=ROOT, env=self.env,
                                                  stdout=log, stderr=subprocess.STDOUT)
        return self.running[name]

    def decided(self) -> int:
        """Samples of this run with a decision row in the lineage table."""
        if not (self.state / "tables" / "lineage").exists():
            return 0
        return int(query(self.settings.delta_tables(), "SELECT count(DISTINCT seed) AS n FROM lineage WHERE "
                         "run_id = ? AND stage IN ('accepted', 'review', 'rejected')",
                         params=[self.settings.run_id]).to_pylist()[0]["n"])

    def wait_decided(self, planned: int, *, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (n := self.decided()) < planned and time.monotonic() < deadline:
            time.sleep(3)
        return n

    def stop(self) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            process.wait(60)
        self.cluster.stop()
