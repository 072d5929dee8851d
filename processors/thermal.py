"""The thermal processor's logic: per node, telemetry in → alerts and rate caps out.

State per node is a small ``NodeState`` (JSON), in the store of a stateful step (``ThermalProcessor``).
Rules (each an alert with hysteresis: raised once when it trips, cleared once when it recovers):

=================  ==========  ===================================================================
rule               severity    trips when
=================  ==========  ===================================================================
bus_overvoltage    emergency   bus voltage over the insulation limit (500 V): the node is paused
die_over_limit     critical    die temperature over the preset's limit
flow_loss          critical    coolant flow under half of nominal
die_predicted      warning     the die's response to its power, the coolant on its trend, crosses the
                               limit within ``horizon_s``
coolant_ramp       warning     coolant changing faster than 1 °C/min (cold-shock risk)
sensor_stale       warning     no plant reading for ``stale_s`` wall seconds
sensor_stuck       warning     the die sensor repeats one value ``stuck_readings`` times
pue_high           info        PUE (averaged over ``pue_window_s``) above the target (1.10) while working
=================  ==========  ===================================================================

Control: the allowed power ``P_max = (T_limit − margin − T_coolant') / R_th``, where ``T_coolant'``
is the coolant temperature projected one die time constant ahead along its trend, becomes a
rate cap ``full_rate · (P_max − P_idle) / (P_full − P_idle)`` (the node's full rate is learned
from its generators' load readings). Below idle power the node is paused. A cap is re-sent when
it changes by more than ``rate_step`` or half its time-to-live has passed, and lifted after the
node has been safe for ``lift_hold_s``. Readings from a stuck or stale sensor change no cap.
Plant readings are timed in plant time (``ts_ms``); staleness and time-to-live in wall time.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from infra.plant import PRESETS, CoolingPreset, Preset, die_step
from schemas.records import Reading, Record, ThermalAlert, Throttle, now_ms
from streams.runtime import Store

SEVERITY = {"bus_overvoltage": "emergency", "die_over_limit": "critical", "flow_loss": "critical",
            "die_predicted": "warning", "coolant_ramp": "warning", "sensor_stale": "warning",
            "sensor_stuck": "warning", "pue_high": "info"}


class ThermalConfig(BaseModel):
    """Rule thresholds and control settings. Example: ``SDG_THERMAL__MARGIN_C=3``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset = Field(default="cryogenic", description="The cooling preset of the nodes (limits, R_th, power).")
    margin_c: float = Field(default=5.0, ge=0, description="Die headroom the cap keeps below the limit.")
    hysteresis_c: float = Field(default=2.0, ge=0)
    horizon_s: float = Field(default=60.0, gt=0, description="Plant seconds the die trend is projected ahead.")
    coolant_ramp_c_per_min: float = Field(default=1.0, gt=0)
    coolant_window_s: float = Field(default=30.0, gt=0, description="Plant seconds of coolant readings in its trend.")
    pue_target: float = Field(default=1.10, gt=1)
    pue_window_s: float = Field(default=30.0, gt=0)
    insulation_v: float = Field(default=500.0, gt=0)
    flow_loss_fraction: float = Field(default=0.5, gt=0, lt=1)
    stale_s: float = Field(default=3.0, gt=0, description="Wall seconds without a plant reading.")
    stuck_readings: int = Field(default=10, ge=2)
    cap_ttl_s: float = Field(default=30.0, gt=0, description="Wall seconds a cap lasts unless re-sent.")
    lift_hold_s: float = Field(default=20.0, ge=0, description="Plant seconds a node must stay safe before a lift.")
    rate_step: float = Field(default=0.05, gt=0, description="Relative change that re-sends a cap.")
    full_rate_sps: float = Field(default=1000.0, gt=0, description="A node's full rate until its generators report.")

    @property
    def cooling(self) -> CoolingPreset:
        return PRESETS[self.preset]


class Cap(BaseModel):
    max_rate_sps: float | None = None
    paused: bool = False
    reason: str = ""
    sent_ms: int = 0  # wall


class NodeState(BaseModel):
    """What the processor remembers of one node."""

    coolant: list[tuple[int, float]] = Field(default_factory=list)
    pue: float | None = None  # moving average
    pue_ms: int = 0
    last_die: float | None = None
    repeats: int = 0
    seen_ms: int = 0  # wall time of the last plant reading
    full_rate_sps: float | None = None
    active: dict[str, bool] = Field(default_factory=dict)
    cap: Cap | None = None  # in force (None: no cap)
    safe_since_ms: int | None = None  # plant time since the node could run uncapped


def slope_per_s(points: list[tuple[int, float]]) -> float:
    """Least-squares slope (units per second) of (ms, value) points; 0 with fewer than three."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 1000.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


TREND_POINTS = 20


def _keep(points: list[tuple[int, float]], ts_ms: int, value: float, window_s: float) -> list[tuple[int, float]]:
    """The trend's points over the last ``window_s``, at most ``TREND_POINTS`` of them spaced evenly, the newest
    replacing the last when it comes sooner (the state stays small: it is written per reading)."""
    spacing = window_s * 1000 / TREND_POINTS
    kept = [p for p in points if p[0] > ts_ms - window_s * 1000]
    if len(kept) >= 2 and ts_ms - kept[-2][0] < spacing:
        kept.pop()
    return kept + [(ts_ms, value)]


class ThermalRules:
    """Applies the rules and the control law to one node's state; returns what to publish."""

    def __init__(self, config: ThermalConfig, *, run_id: str) -> None:
        self.config = config
        self.run_id = run_id

    def _alert(self, state: NodeState, node: str, rule: str, tripped: bool, cleared: bool, value: float,
               threshold: float, message: str) -> list[ThermalAlert]:
        """Raise ``rule`` when it trips while inactive; clear it when it recovers while active."""
        active = state.active.get(rule, False)
        if tripped and not active:
            state.active[rule] = True
            return [ThermalAlert(run_id=self.run_id, node_id=node, rule=rule, severity=SEVERITY[rule],  # type: ignore[arg-type]
                                 value=value, threshold=threshold, message=message)]
        if cleared and active:
            state.active[rule] = False
            return [ThermalAlert(run_id=self.run_id, node_id=node, rule=rule, severity=SEVERITY[rule],  # type: ignore[arg-type]
                                 value=value, threshold=threshold, message=f"cleared: {rule} ({value:.2f})",
                                 cleared=True)]
        return []

    def on_reading(self, state: NodeState, reading: Reading, *, now_ms: int) -> tuple[list[ThermalAlert],
                                                                                        Throttle | None]:
        """Take one telemetry reading (plant or generator load) into ``state``."""
        if reading.source == "generator":
            if reading.rate_sps:
                previous = state.full_rate_sps
                state.full_rate_sps = reading.rate_sps if previous is None else 0.8 * previous + 0.2 * reading.rate_sps
            return [], None
        c, p, node = self.config, self.config.cooling, reading.node_id
        alerts = self._alert(state, node, "sensor_stale", False, True, (now_ms - state.seen_ms) / 1000, c.stale_s,
                             "plant readings resumed")
        state.seen_ms = now_ms
        if None in (reading.die_c, reading.coolant_c, reading.bus_v, reading.flow_lpm):
            return alerts, None
        die, coolant, volts, flow = reading.die_c, reading.coolant_c, reading.bus_v, reading.flow_lpm
        assert die is not None and coolant is not None and volts is not None and flow is not None
        state.repeats = state.repeats + 1 if die == state.last_die else 0
        state.last_die = die
        stuck = state.repeats + 1 >= c.stuck_readings
        alerts += self._alert(state, node, "sensor_stuck", stuck, state.repeats == 0, die, c.stuck_readings,
                              f"die sensor repeats {die:.2f} °C")
        alerts += self._alert(state, node, "bus_overvoltage", volts > c.insulation_v,
                              volts < c.insulation_v - 20, volts, c.insulation_v,
                              f"bus {volts:.0f} V over the {c.insulation_v:.0f} V insulation limit: paused")
        flow_fraction = flow / p.flow_lpm
        alerts += self._alert(state, node, "flow_loss", flow_fraction < c.flow_loss_fraction,
                              flow_fraction > c.flow_loss_fraction + 0.1, flow, p.flow_lpm * c.flow_loss_fraction,
                              f"coolant flow {flow:.1f} L/min, {flow_fraction:.0%} of nominal")
        state.coolant = _keep(state.coolant, reading.ts_ms, coolant, c.coolant_window_s)
        if stuck:
            return alerts, None  # a stuck die sensor says nothing about the die: no cap from it
        alerts += self._alert(state, node, "die_over_limit", die > p.die_limit_c,
                              die < p.die_limit_c - c.hysteresis_c, die, p.die_limit_c,
                              f"die {die:.1f} °C over the {p.die_limit_c:.1f} °C limit")
        coolant_slope = slope_per_s(state.coolant)
        # the plant's own physics, the coolant moved along its trend: the die's response to the present power
        predicted = die_step(die, coolant + coolant_slope * c.horizon_s, reading.power_w or 0.0, c.horizon_s, p)
        alerts += self._alert(state, node, "die_predicted", die <= p.die_limit_c < predicted,
                              predicted < p.die_limit_c - c.hysteresis_c, predicted, p.die_limit_c,
                              f"die {die:.1f} °C heading for {predicted:.1f} °C within {c.horizon_s:.0f} s")
        coolant_ramp = coolant_slope * 60
        spans = state.coolant[-1][0] - state.coolant[0][0] >= c.coolant_window_s * 500
        alerts += self._alert(state, node, "coolant_ramp", spans and abs(coolant_ramp) > c.coolant_ramp_c_per_min,
                              abs(coolant_ramp) < 0.8 * c.coolant_ramp_c_per_min, coolant_ramp,
                              c.coolant_ramp_c_per_min, f"coolant changing {coolant_ramp:+.1f} °C/min")
        if reading.pue is not None and reading.power_w is not None and reading.power_w > 1.2 * p.p_idle_w:
            weight = 1 - math.exp(-max(0, reading.ts_ms - state.pue_ms) / 1000 / c.pue_window_s)
            pue = reading.pue if state.pue is None else state.pue + weight * (reading.pue - state.pue)
            state.pue, state.pue_ms = pue, reading.ts_ms
            alerts += self._alert(state, node, "pue_high", pue > c.pue_target, pue < c.pue_target - 0.01, pue,
                                  c.pue_target, f"PUE {pue:.3f} over the {c.pue_target:.2f} target")
        return alerts, self._control(state, node, coolant, coolant_slope, reading.ts_ms, now_ms)

    def _control(self, state: NodeState, node: str, coolant: float, coolant_slope: float, ts_ms: int,
                 now_ms: int) -> Throttle | None:
        c, p = self.config, self.config.cooling
        full_rate = state.full_rate_sps or c.full_rate_sps
        if state.active.get("bus_overvoltage"):
            want = Cap(paused=True, reason="bus_overvoltage: over the insulation limit")
            state.safe_since_ms = None
        else:
            ahead = coolant + max(0.0, coolant_slope) * p.tau_s
            p_max = (p.die_limit_c - c.margin_c - ahead) / p.r_th
            fraction = (p_max - p.p_idle_w) / (p.p_full_w - p.p_idle_w)
            if fraction >= 1.0:
                state.safe_since_ms = state.safe_since_ms if state.safe_since_ms is not None else ts_ms
                if state.cap is None or ts_ms - state.safe_since_ms < c.lift_hold_s * 1000:
                    return self._refresh(state, node, now_ms)
                want = None
            else:
                state.safe_since_ms = None
                why = (f"coolant {coolant:.1f} °C ({coolant_slope * 60:+.1f} °C/min): allowed power "
                       f"{p_max:.0f} W of {p.p_full_w:.0f} W")
                want = (Cap(paused=True, reason=f"thermal: {why}, under idle power") if fraction <= 0 else
                        Cap(max_rate_sps=round(full_rate * fraction, 1), reason=f"thermal: {why}"))
        return self._send(state, node, want, now_ms)

    def _send(self, state: NodeState, node: str, want: Cap | None, now_ms: int) -> Throttle | None:
        have = state.cap
        if want is None:
            if have is None:
                return None
            state.cap = None
            return Throttle(run_id=self.run_id, node_id=node, reason="lifted: the node is safe at full power",
                            ttl_s=self.config.cap_ttl_s)
        same = (have is not None and have.paused == want.paused and
                (want.max_rate_sps is None) == (have.max_rate_sps is None) and
                (want.max_rate_sps is None or have.max_rate_sps is None or
                 abs(want.max_rate_sps - have.max_rate_sps) <= self.config.rate_step * have.max_rate_sps))
        if same:
            return self._refresh(state, node, now_ms)
        want.sent_ms = now_ms
        state.cap = want
        return self._throttle(node, want)

    def _refresh(self, state: NodeState, node: str, now_ms: int) -> Throttle | None:
        """Re-send the cap in force when half its time-to-live has passed."""
        if state.cap is None or now_ms - state.cap.sent_ms < self.config.cap_ttl_s * 500:
            return None
        state.cap.sent_ms = now_ms
        return self._throttle(node, state.cap)

    def _throttle(self, node: str, cap: Cap) -> Throttle:
        return Throttle(run_id=self.run_id, node_id=node, max_rate_sps=cap.max_rate_sps, paused=cap.paused,
                        reason=cap.reason, ttl_s=self.config.cap_ttl_s)

    def on_tick(self, state: NodeState, node: str, *, now_ms: int) -> tuple[list[ThermalAlert], Throttle | None]:
        """Periodic check: a stale sensor raises an alert (the cap in force stays, re-sent; no new one)."""
        c = self.config
        silent_s = (now_ms - state.seen_ms) / 1000
        alerts = self._alert(state, node, "sensor_stale", state.seen_ms > 0 and silent_s > c.stale_s, False,
                             silent_s, c.stale_s, f"no plant reading for {silent_s:.1f} s")
        return alerts, self._refresh(state, node, now_ms)


def dump(state: NodeState) -> bytes:
    return state.model_dump_json().encode()


def load(data: bytes) -> NodeState:
    return NodeState.model_validate_json(data)


class ThermalProcessor:
    """The thermal step's functions over a partition's ``Store`` of ``NodeState`` (telemetry is keyed by node)."""

    def __init__(self, rules: ThermalRules) -> None:
        self.rules = rules

    def process(self, reading: Reading, store: Store[NodeState]) -> list[Record]:
        """One reading of a node: its alerts and cap, if any."""
        node = reading.node_id
        state = store.get(node) or NodeState()
        alerts, throttle = self.rules.on_reading(state, reading, now_ms=now_ms())
        store[node] = state
        return [*alerts, *([throttle] if throttle is not None else [])]

    def tick(self, store: Store[NodeState] | None, now: int) -> list[Record]:
        """Every node's periodic check: sensors gone silent, caps due to be re-sent."""
        assert store is not None
        out: list[Record] = []
        for node in store.keys():
            state = store[node]
            alerts, throttle = self.rules.on_tick(state, node, now_ms=now)
            if alerts or throttle is not None:  # what a tick changes it also publishes: the rest stays unwritten
                store[node] = state
            out += [*alerts, *([throttle] if throttle is not None else [])]
        return out


__all__ = ["NodeState", "ThermalConfig", "ThermalProcessor", "ThermalRules", "dump", "load", "slope_per_s"]
