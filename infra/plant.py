"""The modeled plant, the hardware the generators run on: each node's power and cooling, so that
throttling has something real to act on.

Per node (DESIGN §6), with parameters per cooling preset:

* Power: ``P_IT = P_idle + (P_full − P_idle) · u``, where ``u`` is the node's utilization (the
  fraction of time its generators were busy, from their own load readings); the bus delivers it
  as ``P = V · I``.
* Die: ``C_th · dT_die/dt = P − (T_die − T_coolant) / R_th`` (steady state ``T_coolant + R_th · P``,
  time constant ``R_th · C_th``).
* Coolant: ``C_cool · dT_coolant/dt = (T_die − T_coolant) / R_th − G · f · (T_coolant − T_setpoint)``:
  the die heats it, the chiller takes heat out in proportion to the flow fraction ``f``. A pump
  failure drops ``f``, so the coolant warms until the load comes down.
* ``PUE = (P_IT + P_cooling + P_UPS) / P_IT`` with pump power ∝ flow, chiller power ∝ heat removed,
  UPS power fixed plus a loss fraction.

Each equation is integrated exactly over a step with the other temperature held (operator
splitting; exact for the die alone). Time is plant time: ``time_scale`` plant seconds pass per wall
second, so a test can watch a pump failure play out in seconds. Readings carry sensor noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.records import FaultKind, PlantFault, Reading

Preset = Literal["air", "liquid", "cryogenic"]


class CoolingPreset(BaseModel):
    """One cooling technology's parameters (SI units, temperatures in °C)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    coolant_setpoint_c: float
    r_th: float = Field(gt=0, description="Die to coolant thermal resistance, °C/W.")
    c_th: float = Field(gt=0, description="Die (and package) heat capacity, J/°C.")
    coolant_c_th: float = Field(gt=0, description="Heat capacity of the node's coolant loop, J/°C.")
    conductance_w_per_c: float = Field(gt=0, description="Heat the chiller removes per °C over setpoint, full flow.")
    flow_lpm: float = Field(gt=0, description="Nominal coolant flow.")
    die_limit_c: float
    p_idle_w: float = Field(gt=0)
    p_full_w: float = Field(gt=0)
    bus_v: float = Field(default=400.0, gt=0, description="Nominal DC bus voltage.")
    pump_w: float = Field(ge=0, description="Pump (or fan) power at nominal flow.")
    chiller_w_per_w: float = Field(ge=0, description="Chiller power per watt of heat removed (1 / COP).")
    ups_w: float = Field(ge=0, description="UPS standing losses.")
    ups_loss: float = Field(ge=0, description="UPS losses as a fraction of IT power.")

    @property
    def tau_s(self) -> float:
        """The die's thermal time constant R_th · C_th."""
        return self.r_th * self.c_th

    def power_w(self, utilization: float) -> float:
        return self.p_idle_w + (self.p_full_w - self.p_idle_w) * min(1.0, max(0.0, utilization))


PRESETS: dict[str, CoolingPreset] = {
    preset.name: preset for preset in (
        CoolingPreset(name="air", coolant_setpoint_c=25.0, r_th=0.11, c_th=150.0, coolant_c_th=3000.0,
                      conductance_w_per_c=100.0, flow_lpm=2000.0, die_limit_c=85.0, p_idle_w=60.0, p_full_w=450.0,
                      pump_w=25.0, chiller_w_per_w=0.25, ups_w=10.0, ups_loss=0.05),
        CoolingPreset(name="liquid", coolant_setpoint_c=30.0, r_th=0.05, c_th=300.0, coolant_c_th=4000.0,
                      conductance_w_per_c=400.0, flow_lpm=30.0, die_limit_c=85.0, p_idle_w=100.0, p_full_w=700.0,
                      pump_w=15.0, chiller_w_per_w=0.04, ups_w=8.0, ups_loss=0.02),
        # immersion in a cryogenic liquid: coolant around −180 °C, R_th ≈ 0.07 °C/W; the die limit keeps it
        # well inside the regime the cryogenic characterization covers
        CoolingPreset(name="cryogenic", coolant_setpoint_c=-180.0, r_th=0.07, c_th=300.0, coolant_c_th=2000.0,
                      conductance_w_per_c=400.0, flow_lpm=40.0, die_limit_c=-110.0, p_idle_w=150.0, p_full_w=800.0,
                      pump_w=10.0, chiller_w_per_w=0.04, ups_w=5.0, ups_loss=0.02),
    )
}

# what a fault does when its record gives no magnitude
DEFAULT_MAGNITUDE: dict[str, float] = {"pump_failure": 0.02, "coolant_ramp": 5.0, "over_voltage": 540.0}
# the magnitudes the model is meant for: flow fraction left, °C/min, volts
MAGNITUDE_RANGE: dict[str, tuple[float, float]] = {"pump_failure": (0.0, 1.0), "coolant_ramp": (-60.0, 60.0),
                                                   "over_voltage": (0.0, 2000.0)}


def die_step(die_c: float, coolant_c: float, power_w: float, dt_s: float, preset: CoolingPreset) -> float:
    """The die temperature ``dt_s`` later, coolant and power held: the exact first-order response."""
    steady = coolant_c + preset.r_th * power_w
    return steady + (die_c - steady) * math.exp(-dt_s / preset.tau_s)


def steady_state(power_w: float, preset: CoolingPreset, *, flow_fraction: float = 1.0,
                 setpoint_c: float | None = None) -> tuple[float, float]:
    """(die, coolant) temperatures the node settles at under constant power and flow."""
    setpoint = preset.coolant_setpoint_c if setpoint_c is None else setpoint_c
    coolant = setpoint + power_w / (preset.conductance_w_per_c * flow_fraction)
    return coolant + preset.r_th * power_w, coolant


@dataclass
class _Active:
    magnitude: float | None
    until_s: float | None  # plant time; None: until repaired
    held: float | None = None  # the stuck sensor's frozen value


@dataclass
class NodePlant:
    """One node of the plant, integrated in plant seconds."""

    node_id: str
    preset: CoolingPreset
    seed: int = 0
    noise: float = 1.0  # scales every sensor's noise; 0 for exact readings
    t_s: float = 0.0
    faults: dict[str, _Active] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.node_id}/{self.seed}")
        self.setpoint_c = self.preset.coolant_setpoint_c
        self.die_c, self.coolant_c = steady_state(self.preset.p_idle_w, self.preset)
        self.power_w = self.preset.p_idle_w

    # faults ---------------------------------------------------------------------------------------
    def inject(self, fault: PlantFault) -> None:
        """Start ``fault`` now (``repair`` clears every fault).

        Raises:
            ValueError: a magnitude outside what the model is meant for (``MAGNITUDE_RANGE``).
        """
        low, high = MAGNITUDE_RANGE.get(fault.kind, (-math.inf, math.inf))
        if fault.magnitude is not None and not low <= fault.magnitude <= high:
            raise ValueError(f"{fault.kind} magnitude {fault.magnitude} is outside [{low}, {high}]")
        if fault.kind == "repair":
            self.faults.clear()
            return
        until = self.t_s + fault.duration_s if fault.duration_s is not None else None
        active = _Active(fault.magnitude if fault.magnitude is not None else DEFAULT_MAGNITUDE.get(fault.kind), until)
        if fault.kind == "stuck_sensor":
            active.held = self.die_c
        self.faults[fault.kind] = active

    def active(self, kind: FaultKind) -> _Active | None:
        return self.faults.get(kind)

    @property
    def flow_fraction(self) -> float:
        pump = self.active("pump_failure")
        return float(pump.magnitude) if pump is not None and pump.magnitude is not None else 1.0

    @property
    def bus_v(self) -> float:
        spike = self.active("over_voltage")
        return float(spike.magnitude) if spike is not None and spike.magnitude is not None else self.preset.bus_v

    # dynamics -------------------------------------------------------------------------------------
    def step(self, dt_s: float, utilization: float) -> None:
        """Advance ``dt_s`` plant seconds with the generators busy a fraction ``utilization`` of the time."""
        p = self.preset
        self.faults = {k: a for k, a in self.faults.items() if a.until_s is None or a.until_s > self.t_s}
        ramp = self.active("coolant_ramp")
        if ramp is not None and ramp.magnitude is not None:
            self.setpoint_c += ramp.magnitude / 60.0 * dt_s
        elif self.setpoint_c != p.coolant_setpoint_c:  # the operator brings it back at the same pace
            back = DEFAULT_MAGNITUDE["coolant_ramp"] / 60.0 * dt_s
            self.setpoint_c += max(-back, min(back, p.coolant_setpoint_c - self.setpoint_c))
        self.power_w = p.power_w(utilization)
        die = die_step(self.die_c, self.coolant_c, self.power_w, dt_s, p)
        heat_in = (self.die_c - self.coolant_c) / p.r_th
        conductance = p.conductance_w_per_c * self.flow_fraction
        settle = self.setpoint_c + heat_in / conductance  # coolant's steady state with the die held
        self.coolant_c = settle + (self.coolant_c - settle) * math.exp(-dt_s * conductance / p.coolant_c_th)
        self.die_c = die
        self.t_s += dt_s

    @property
    def pue(self) -> float:
        p = self.preset
        removed = max(0.0, p.conductance_w_per_c * self.flow_fraction * (self.coolant_c - self.setpoint_c))
        cooling = p.pump_w * self.flow_fraction + p.chiller_w_per_w * removed
        return (self.power_w + cooling + p.ups_w + p.ups_loss * self.power_w) / self.power_w

    def reading(self, run_id: str, ts_ms: int) -> Reading | None:
        """What the node's sensors report now (None while they drop out)."""
        if self.active("sensor_dropout") is not None:
            return None
        noise = self.noise
        gauss = self.rng.gauss
        stuck = self.active("stuck_sensor")
        die = stuck.held if stuck is not None and stuck.held is not None else self.die_c + gauss(0, 0.1 * noise)
        volts = self.bus_v + gauss(0, 0.5 * noise)
        amps = self.power_w / self.bus_v + gauss(0, 0.01 * noise)
        return Reading(run_id=run_id, node_id=self.node_id, source="plant", ts_ms=ts_ms,
                       coolant_c=self.coolant_c + gauss(0, 0.05 * noise), die_c=die, power_w=volts * amps,
                       bus_v=volts, current_a=amps,
                       flow_lpm=self.preset.flow_lpm * self.flow_fraction * (1 + gauss(0, 0.01 * noise)),
                       pue=self.pue)


class ScheduledFault(BaseModel):
    """A fault the plant injects by itself ``at_s`` plant seconds after it starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_s: float = Field(ge=0)
    node_id: str
    kind: FaultKind
    magnitude: float | None = None
    duration_s: float | None = Field(default=None, gt=0)


class PlantConfig(BaseModel):
    """The plant service: which nodes it models and how. Example: ``SDG_PLANT__NODES='["node-0","node-1"]'``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: list[str] = Field(default_factory=lambda: ["node-0"])
    preset: Preset = "cryogenic"
    reading_hz: float = Field(default=10.0, gt=0, description="Readings per node per wall second.")
    time_scale: float = Field(default=1.0, gt=0, description="Plant seconds per wall second.")
    busy_window_s: float = Field(default=1.0, gt=0, description="Wall seconds over which utilization is measured.")
    noise: float = Field(default=1.0, ge=0)
    faults: list[ScheduledFault] = Field(
        default_factory=list, description='Scheduled faults, e.g. [{"at_s": 30, "node_id": "node-0", "kind": '
                                          '"pump_failure", "duration_s": 60}].')

    @property
    def cooling(self) -> CoolingPreset:
        return PRESETS[self.preset]


class Utilization:
    """A node's busy fraction over the last ``window_s`` wall seconds, from its generators' load readings."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._busy: list[tuple[float, float]] = []  # (end, busy seconds) per batch

    def add(self, end_s: float, busy_s: float) -> None:
        self._busy.append((end_s, busy_s))

    def value(self, now_s: float) -> float:
        start = now_s - self.window_s
        self._busy = [(end, busy) for end, busy in self._busy if end > start]
        busy = sum(min(b, end - start) for end, b in self._busy)
        return min(1.0, busy / self.window_s)
