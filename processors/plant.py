"""The plant processor: the modeled coolant/power plant of ``SDG_PLANT__NODES`` as a map step.

Generator load readings (``sdg.telemetry``) and faults (``sdg.plant.faults``) come in through ``take``; the
step's timer (``tick``, ``reading_hz`` per second) advances each node's physics (``infra.plant.NodePlant``) and
sends its sensor readings. Readings are stamped in plant time: the wall time the plant started plus the plant
seconds since. Nothing here imports Kafka.
"""

from __future__ import annotations

import logging
import time

from infra.plant import NodePlant, PlantConfig, Utilization
from schemas.records import PlantFault, Reading, Record

log = logging.getLogger(__name__)


class PlantProcessor:
    """The plant's nodes, their utilization and the fault schedule."""

    def __init__(self, config: PlantConfig, *, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self.nodes = {n: NodePlant(n, config.cooling, seed=i, noise=config.noise) for i, n in enumerate(config.nodes)}
        self.busy = {n: Utilization(config.busy_window_s) for n in config.nodes}
        self.schedule = sorted(config.faults, key=lambda f: f.at_s)
        self.started_ms = time.time() * 1000
        self.started = self.last = time.monotonic()
        self.plant_s = 0.0

    def take(self, record: Record) -> None:
        """A generator's load reading or an injected fault (``ValueError``: a fault out of range)."""
        if isinstance(record, Reading) and record.source == "generator" and record.node_id in self.busy:
            self.busy[record.node_id].add(time.monotonic(), (record.batch_ms or 0) / 1000)
        elif isinstance(record, PlantFault):
            self.inject(record)

    def inject(self, fault: PlantFault) -> None:
        if fault.node_id in self.nodes:
            log.info("plant: %s on %s", fault.kind, fault.node_id)
            self.nodes[fault.node_id].inject(fault)

    def tick(self, store: object, now_ms: int) -> list[Record]:
        """Advance the plant to now (``time_scale`` plant seconds per wall second); each node's reading."""
        now = time.monotonic()
        self.plant_s += (now - self.last) * self.config.time_scale
        self.last = now
        while self.schedule and self.schedule[0].at_s <= self.plant_s:
            f = self.schedule.pop(0)
            self.inject(PlantFault(run_id=self.run_id, node_id=f.node_id, kind=f.kind, magnitude=f.magnitude,
                                   duration_s=f.duration_s))
        out: list[Record] = []
        for node_id, node in self.nodes.items():
            node.step(self.plant_s - node.t_s, self.busy[node_id].value(now))
            reading = node.reading(self.run_id, int(self.started_ms + self.plant_s * 1000))
            if reading is not None:
                out.append(reading)
        return out


__all__ = ["PlantProcessor"]
