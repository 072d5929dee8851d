"""Telemetry for people: a closed-loop simulation of a fault scenario, its plot, and the live terminal view
(``sdg telemetry watch``). The plant itself runs as a processor (``processors/plant.py``)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.plant import NodePlant, ScheduledFault
from processors.thermal import NodeState, ThermalConfig, ThermalRules
from schemas.records import PlantFault, Reading, ThermalAlert, Throttle

log = logging.getLogger(__name__)


@dataclass
class Trace:
    """One node's closed loop over time (plant seconds)."""

    t_s: list[float] = field(default_factory=list)
    die_c: list[float] = field(default_factory=list)
    coolant_c: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    rate_sps: list[float] = field(default_factory=list)
    cap_sps: list[float | None] = field(default_factory=list)  # None: no cap; 0: paused
    alerts: list[tuple[float, ThermalAlert]] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    limit_c: float = 0.0
    full_rate_sps: float = 0.0
    time_label: str = "plant time (s)"

    def add(self, t: float, reading: Reading, rate: float, cap: float | None) -> None:
        self.t_s.append(t)
        self.die_c.append(float(reading.die_c or 0))
        self.coolant_c.append(float(reading.coolant_c or 0))
        self.power_w.append(float(reading.power_w or 0))
        self.rate_sps.append(rate)
        self.cap_sps.append(cap)


def simulate(faults: list[ScheduledFault], *, duration_s: float, config: ThermalConfig | None = None,
             full_rate_sps: float = 1000.0, duty: float = 0.85, reading_s: float = 0.5, lag_s: float = 1.0,
             node: str = "node-0", seed: int = 0, obey: bool = True) -> Trace:
    """The plant, the thermal rules and a generator that obeys its caps ``lag_s`` late, in plant time.

    Args:
        faults: What happens when (``node_id`` is ignored: there is one node).
        full_rate_sps: The generator's rate when uncapped; ``duty`` is how busy that keeps the node.
        reading_s: Plant seconds between readings.
        lag_s: Plant seconds from a reading to its cap taking effect (the loop's latency).
        obey: False: the generator ignores the caps (what the failure would do unchecked).
    """
    config = config or ThermalConfig()
    plant = NodePlant(node, config.cooling, seed=seed)
    rules = ThermalRules(config, run_id="simulation")
    state = NodeState()
    trace = Trace(limit_c=config.cooling.die_limit_c, full_rate_sps=full_rate_sps)
    pending = sorted(faults, key=lambda f: f.at_s)
    caps: list[tuple[float, Throttle]] = []  # decided, waiting for the lag
    cap: Throttle | None = None
    t = 0.0
    while t < duration_s:
        while pending and pending[0].at_s <= t:
            fault = pending.pop(0)
            plant.inject(PlantFault(run_id="simulation", node_id=node, kind=fault.kind, magnitude=fault.magnitude,
                                    duration_s=fault.duration_s))
            trace.faults.append((t, fault.kind))
        while caps and caps[0][0] <= t:
            cap = caps.pop(0)[1]
        paused = cap is not None and cap.paused
        limit = cap.max_rate_sps if cap is not None and cap.max_rate_sps is not None else full_rate_sps
        rate = 0.0 if paused else min(full_rate_sps, limit)
        plant.step(reading_s, duty * rate / full_rate_sps)
        now_ms = int(t * 1000)
        rules.on_reading(state, Reading(run_id="simulation", node_id=node, source="generator", ts_ms=now_ms,
                                        rate_sps=full_rate_sps), now_ms=now_ms)
        reading = plant.reading("simulation", now_ms)
        if reading is not None:
            alerts, throttle = rules.on_reading(state, reading, now_ms=now_ms)
            trace.add(t, reading, rate, None if cap is None else 0.0 if cap.paused else cap.max_rate_sps)
        else:
            alerts, throttle = rules.on_tick(state, node, now_ms=now_ms)
        trace.alerts += [(t, a) for a in alerts]
        if throttle is not None and obey:
            caps.append((t + lag_s, throttle))
        t += reading_s
    return trace


PUMP_FAILURE_SCENARIO = [ScheduledFault(at_s=120, node_id="node-0", kind="pump_failure"),
                         ScheduledFault(at_s=420, node_id="node-0", kind="repair"),
                         ScheduledFault(at_s=600, node_id="node-0", kind="over_voltage", duration_s=15)]


def observed_trace(records: list[Any], *, node: str, limit_c: float, window_s: float = 2.0) -> Trace:
    """A node's trace from what went over the broker (plant and load readings, alerts, caps), in wall seconds:
    the rate is the samples the node's generators made over the last ``window_s``."""
    mine = sorted((r for r in records if getattr(r, "node_id", None) == node), key=lambda r: r.created_ms)
    loads = [r for r in mine if isinstance(r, Reading) and r.source == "generator"]
    t0 = mine[0].created_ms if mine else 0
    trace = Trace(limit_c=limit_c, time_label="time (s)")
    cap: float | None = None
    for record in mine:
        t = (record.created_ms - t0) / 1000
        if isinstance(record, Throttle):
            cap = 0.0 if record.paused else record.max_rate_sps
        elif isinstance(record, ThermalAlert):
            trace.alerts.append((t, record))
        elif isinstance(record, Reading) and record.source == "plant" and record.die_c is not None:
            recent = [r for r in loads if record.created_ms - window_s * 1000 < r.created_ms <= record.created_ms]
            rate = sum((r.rate_sps or 0) * (r.batch_ms or 0) / 1000 for r in recent) / window_s
            trace.add(t, record, rate, cap)
    trace.full_rate_sps = max([*trace.rate_sps, *[c for c in trace.cap_sps if c]], default=1.0)
    return trace


def plot(trace: Trace, out: Path, *, title: str) -> Path:
    """Die and coolant temperature, power, rate and cap, alerts and faults over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (temps, power, rate, alerts) = plt.subplots(4, 1, figsize=(10, 9), sharex=True,
                                                     gridspec_kw={"height_ratios": [3, 2, 2, 2]})
    temps.plot(trace.t_s, trace.die_c, label="die", color="tab:red")
    temps.plot(trace.t_s, trace.coolant_c, label="coolant", color="tab:blue")
    temps.axhline(trace.limit_c, color="tab:red", linestyle="--", linewidth=1, label="die limit")
    temps.set_ylabel("°C")
    temps.legend(loc="center left")
    power.plot(trace.t_s, trace.power_w, color="tab:orange")
    power.set_ylabel("IT power (W)")
    rate.plot(trace.t_s, trace.rate_sps, label="generation rate", color="tab:green")
    caps = [c if c is not None else float("nan") for c in trace.cap_sps]
    rate.step(trace.t_s, caps, where="post", label="rate cap (0: paused)", color="black", linestyle="--")
    rate.set_ylabel("samples/s")
    rate.set_ylim(bottom=-0.05 * trace.full_rate_sps, top=1.15 * trace.full_rate_sps)
    rate.legend(loc="lower left")
    for t, kind in trace.faults:
        for ax in (temps, power, rate, alerts):
            ax.axvline(t, color="grey", linewidth=1)
        temps.annotate(kind.replace("_", " "), (t, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                       va="top", ha="right", fontsize=8, color="grey")
    colors = {"emergency": "purple", "critical": "red", "warning": "orange", "info": "grey"}
    rules = sorted({a.rule for _, a in trace.alerts})
    end = trace.t_s[-1] if trace.t_s else 0.0
    spans: list[tuple[str, str, float, float]] = []
    raised: dict[str, float] = {}
    for t, alert in trace.alerts:  # (rule, severity, raised at, cleared at)
        if alert.cleared:
            spans.append((alert.rule, alert.severity, raised.pop(alert.rule, t), t))
        else:
            raised[alert.rule] = t
    spans += [(rule, next(a.severity for _, a in trace.alerts if a.rule == rule), t, end) for rule, t in raised.items()]
    for rule, severity, start, stop in spans:
        alerts.barh(rules.index(rule), max(stop - start, end / 300), left=start, color=colors[severity])
    alerts.set_yticks(range(len(rules)), [r.replace("_", " ") for r in rules], fontsize=8)
    alerts.set_ylabel("alerts")
    alerts.set_xlabel(trace.time_label)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def watch(kafka: Any, *, node: str | None, duration_s: float | None, console: Any) -> None:
    """A live table per node: its latest plant and load readings, active alerts and the cap in force."""
    from rich.live import Live
    from rich.table import Table

    from streams.subscribe import subscribe

    latest: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    stop = threading.Event()

    def follow() -> None:
        for received in subscribe(["sdg.telemetry", "sdg.alerts", "sdg.control"], kafka=kafka, stop=stop):
            record = received.record
            if node is not None and getattr(record, "node_id", None) != node:
                continue
            with lock:
                view = latest.setdefault(record.node_id, {"alerts": {}})  # type: ignore[attr-defined]
                if isinstance(record, Reading):
                    view[record.source] = record
                elif isinstance(record, ThermalAlert):
                    if record.cleared:
                        view["alerts"].pop(record.rule, None)
                    else:
                        view["alerts"][record.rule] = record
                elif isinstance(record, Throttle):
                    view["cap"] = record

    def render() -> Table:
        table = Table("node", "die °C", "coolant °C", "power W", "bus V", "flow L/min", "PUE", "rate/s", "cap",
                      "alerts", title="sdg telemetry (Ctrl-C to stop)")
        with lock:
            for name, view in sorted(latest.items()):
                plant, load, cap = view.get("plant"), view.get("generator"), view.get("cap")
                cells = [f"{getattr(plant, f):.{d}f}" if plant is not None and getattr(plant, f) is not None else "-"
                         for f, d in (("die_c", 1), ("coolant_c", 1), ("power_w", 0), ("bus_v", 0), ("flow_lpm", 1),
                                      ("pue", 3))]
                rate = f"{load.rate_sps:.0f}" if load is not None and load.rate_sps else "-"
                capped = ("-" if cap is None or (cap.max_rate_sps is None and not cap.paused) else
                          "[red]paused[/]" if cap.paused else f"[yellow]{cap.max_rate_sps:.0f}/s[/]")
                colors = {"emergency": "magenta", "critical": "red", "warning": "yellow", "info": "dim"}
                alerts = " ".join(f"[{colors[a.severity]}]{rule}[/]" for rule, a in sorted(view["alerts"].items()))
                table.add_row(name, *cells, rate, capped, alerts or "-")
        return table

    following = threading.Thread(target=follow, name="telemetry-watch", daemon=True)
    following.start()
    started = time.monotonic()
    with Live(render(), console=console, refresh_per_second=4) as live:
        try:
            while duration_s is None or time.monotonic() - started < duration_s:
                time.sleep(0.25)
                live.update(render())
        except KeyboardInterrupt:
            pass
    stop.set()
    following.join(10)
