"""The plant model against its closed forms, the thermal rules, and the closed loop: in simulation and
through the real broker (plant, thermal processor and a generator worker as processes)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from infra.plant import PRESETS, NodePlant, die_step, steady_state
from processors.generate import plan_jobs
from processors.thermal import NodeState, ThermalConfig, ThermalRules
from schemas.records import PlantFault, Reading, ThermalAlert, Throttle
from sdg.telemetry import PUMP_FAILURE_SCENARIO, plot, simulate
from streams import admin
from streams.config import KafkaConfig
from streams.producer import RecordProducer
from streams.subscribe import subscribe
from tests.conftest import REPO, sdg_command

CRYO = PRESETS["cryogenic"]


def test_die_step_response_has_the_closed_form_time_constant() -> None:
    die, coolant, power = -180.0, -180.0, 500.0
    steady = coolant + CRYO.r_th * power
    t, dt = 0.0, 0.01
    while t < CRYO.tau_s - 1e-9:
        die = die_step(die, coolant, power, dt, CRYO)
        t += dt
    assert (die - (-180.0)) / (steady - (-180.0)) == pytest.approx(1 - math.exp(-1), abs=1e-6)
    for _ in range(100_000):
        die = die_step(die, coolant, power, 0.1, CRYO)
    assert die == pytest.approx(coolant + CRYO.r_th * power)  # T_die = T_coolant + R_th · P


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("flow", [1.0, 0.05])
def test_plant_settles_at_the_steady_state_and_pue_adds_up(preset: str, flow: float) -> None:
    p = PRESETS[preset]
    node = NodePlant("n", p, noise=0)
    if flow < 1:
        node.inject(PlantFault(run_id="r", node_id="n", kind="pump_failure", magnitude=flow))
    for _ in range(20_000):
        node.step(0.5, 0.7)
    power = p.power_w(0.7)
    die, coolant = steady_state(power, p, flow_fraction=flow)
    assert (node.die_c, node.coolant_c) == (pytest.approx(die, abs=1e-3), pytest.approx(coolant, abs=1e-3))
    # at steady state the chiller removes exactly the IT heat
    expected = (power + p.pump_w * flow + p.chiller_w_per_w * power + p.ups_w + p.ups_loss * power) / power
    assert node.pue == pytest.approx(expected, rel=1e-6)
    reading = node.reading("r", 0)
    assert reading is not None and reading.bus_v is not None and reading.current_a is not None
    assert reading.power_w == pytest.approx(reading.bus_v * reading.current_a)


def _plant_reading(ts_s: float, node: str = "n", **values: float) -> Reading:
    base: dict[str, Any] = {"die_c": -130.0, "coolant_c": -178.0, "power_w": 700.0, "bus_v": 400.0, "current_a": 1.75,
            "flow_lpm": 40.0, "pue": 1.07}
    return Reading(run_id="r", node_id=node, source="plant", ts_ms=int(ts_s * 1000), **{**base, **values})


def test_rules_have_hysteresis_and_the_cap_follows_the_allowed_power() -> None:
    rules, state = ThermalRules(ThermalConfig(), run_id="r"), NodeState()
    rules.on_reading(state, Reading(run_id="r", node_id="n", source="generator", ts_ms=0, rate_sps=900.0), now_ms=0)
    alerts: list[ThermalAlert] = []
    for i in range(200):  # the die wanders around its limit: one alert, not one per crossing
        found, _ = rules.on_reading(state, _plant_reading(i, die_c=-110.0 + (1.5 if i % 2 else -1.5)), now_ms=i)
        alerts += found
    assert [(a.rule, a.cleared) for a in alerts if a.rule == "die_over_limit"] == [("die_over_limit", False)]

    state = NodeState(full_rate_sps=900.0)
    _, cap = rules.on_reading(state, _plant_reading(0, coolant_c=-160.0), now_ms=0)
    p_max = (CRYO.die_limit_c - 5.0 - (-160.0)) / CRYO.r_th
    assert cap is not None and not cap.paused
    assert cap.max_rate_sps == pytest.approx(900 * (p_max - CRYO.p_idle_w) / (CRYO.p_full_w - CRYO.p_idle_w), abs=0.1)
    _, again = rules.on_reading(state, _plant_reading(0.5, coolant_c=-160.01), now_ms=500)
    assert again is None  # the same cap is not re-sent until half its time-to-live has passed
    _, refresh = rules.on_reading(state, _plant_reading(1.0, coolant_c=-160.0), now_ms=16_000)
    assert refresh is not None and refresh.max_rate_sps == cap.max_rate_sps

    alerts, pause = rules.on_reading(state, _plant_reading(1.5, coolant_c=-178.0, bus_v=530.0), now_ms=16_500)
    assert pause is not None and pause.paused and [a.severity for a in alerts] == ["emergency"]


def test_a_stuck_or_silent_sensor_raises_an_alert_and_no_cap() -> None:
    rules, state = ThermalRules(ThermalConfig(stale_s=2.0), run_id="r"), NodeState(full_rate_sps=900.0)
    caps, alerts = [], []
    for i in range(12):  # stuck at a value that would call for a cap
        found, cap = rules.on_reading(state, _plant_reading(i, die_c=-100.0, coolant_c=-150.0 if i > 3 else -178),
                                      now_ms=i * 100)
        alerts += found
        caps += [cap] if cap is not None else []
    assert "sensor_stuck" in [a.rule for a in alerts]
    silent, cap = rules.on_tick(state, "n", now_ms=1100 + 2500)
    assert [a.rule for a in silent] == ["sensor_stale"] and cap is None
    assert rules.on_tick(state, "n", now_ms=1100 + 5000) == ([], None)  # raised once


def test_closed_loop_simulation_keeps_the_die_under_its_limit(tmp_path: Path) -> None:
    trace = simulate(PUMP_FAILURE_SCENARIO, duration_s=720)
    failed = [r for t, r in zip(trace.t_s, trace.rate_sps) if 150 <= t < 420]
    assert max(trace.die_c) < trace.limit_c
    assert 0.3 * trace.full_rate_sps < min(failed) < 0.9 * trace.full_rate_sps  # slower, not stopped
    assert [r for t, r in zip(trace.t_s, trace.rate_sps) if 560 <= t < 600] == [trace.full_rate_sps] * 80  # lifted
    assert min(r for t, r in zip(trace.t_s, trace.rate_sps) if 602 <= t < 615) == 0  # over-voltage: paused
    uncapped = simulate(PUMP_FAILURE_SCENARIO, duration_s=420, obey=False)
    assert max(uncapped.die_c) > uncapped.limit_c  # without the caps the same failure overheats the die
    assert plot(trace, tmp_path / "t.png", title="t").stat().st_size > 10_000


class _Observer:
    """Collects one node's readings, alerts and caps from the broker in a thread."""

    def __init__(self, kafka: KafkaConfig, node: str) -> None:
        self.node = node
        self.records: list[tuple[float, object]] = []
        self.group = f"observe-{uuid.uuid4().hex[:8]}"
        self.stopped = threading.Event()
        admin.start_group_at_end(kafka, self.group, ["sdg.telemetry", "sdg.alerts", "sdg.control"])
        threading.Thread(target=self._run, args=(kafka,), daemon=True).start()

    def _run(self, kafka: KafkaConfig) -> None:
        for r in subscribe(["sdg.telemetry", "sdg.alerts", "sdg.control"], kafka=kafka, group=self.group,
                           stop=self.stopped):
            if getattr(r.record, "node_id", None) == self.node:
                self.records.append((time.monotonic(), r.record))

    def since(self, t: float, kind: type, **match: object) -> list:
        return [r for at, r in list(self.records) if at >= t and isinstance(r, kind)
                and all(getattr(r, k) == v for k, v in match.items())]

    def wait(self, t: float, kind: type, timeout_s: float, **match: object) -> list:
        deadline = time.monotonic() + timeout_s
        while not (found := self.since(t, kind, **match)):
            assert time.monotonic() < deadline, f"no {kind.__name__} {match} within {timeout_s} s"
            time.sleep(0.1)
        return found

    def throughput(self, start: float, end: float) -> float:
        """Samples per second the node's generators produced between two monotonic times."""
        loads = [r for at, r in list(self.records) if start <= at < end and isinstance(r, Reading)
                 and r.source == "generator"]
        return sum((r.rate_sps or 0) * (r.batch_ms or 0) / 1000 for r in loads) / (end - start)


def test_pump_failure_is_throttled_in_time_through_the_broker(kafka: KafkaConfig, run_id: str, tmp_path: Path,
                                                              fresh_topic) -> None:  # type: ignore[no-untyped-def]
    node = f"node-{uuid.uuid4().hex[:6]}"
    jobs = fresh_topic()
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path),
           "SDG_RUN_ID": run_id, "SDG_WORKER__NODE_ID": node, "SDG_PLANT__NODES": f'["{node}"]',
           "SDG_PLANT__TIME_SCALE": "10", "SDG_PLANT__BUSY_WINDOW_S": "0.5", "SDG_THERMAL__STALE_S": "2",
           "SDG_THERMAL__CAP_TTL_S": "20"}
    with RecordProducer(kafka) as producer:  # enough work to keep the node at full rate throughout
        for job in plan_jobs("procedural", classes=list(range(10)), per_class=8000, seed=3, run_id=run_id,
                             job_size=25):
            producer.send(jobs, job)
    observer = _Observer(kafka, node)
    admin.start_group_at_end(kafka, f"thermal-{run_id}", ["sdg.telemetry"])
    processes = [subprocess.Popen(sdg_command("run", *args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
                 for args in (("thermal", "--group", f"thermal-{run_id}"), ("plant", "--group", f"plant-{run_id}"),
                              ("generate", "--source", jobs, "--group", f"generate-{run_id}"))]

    def fault(kind: str, *options: str) -> float:
        before = time.monotonic()
        done = subprocess.run(sdg_command("telemetry", "fault", kind, "--node", node, *options), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return before

    try:
        start = time.monotonic()
        observer.wait(start, Reading, 60, source="generator")
        observer.wait(start, Reading, 60, source="plant")
        time.sleep(10)  # 100 plant seconds at full rate
        full = observer.throughput(time.monotonic() - 5, time.monotonic())
        assert observer.since(start, Throttle) == []  # a healthy node at full rate is not capped

        failed = fault("pump-failure")
        first = observer.wait(failed, Throttle, 30)[0]
        assert first.max_rate_sps and not first.paused and first.reason.startswith("thermal:")
        time.sleep(20)  # 200 plant seconds without the pump
        during = observer.throughput(time.monotonic() - 10, time.monotonic())
        assert 0.2 * full < during < 0.9 * full, (full, during)  # slower, not stopped
        assert "flow_loss" in {a.rule for a in observer.since(failed, ThermalAlert)}

        repaired = fault("repair")
        observer.wait(repaired, Throttle, 30, max_rate_sps=None, paused=False)  # the cap lifts
        time.sleep(4)
        assert observer.throughput(time.monotonic() - 3, time.monotonic()) > 0.8 * full

        spiked = fault("over-voltage", "--duration", "5")
        pause = observer.wait(spiked, Throttle, 30, paused=True)[0]
        assert pause.reason.startswith("bus_overvoltage")
        observer.wait(spiked, Throttle, 30, paused=False)  # lifted once the bus is back and the hold passed

        time.sleep(1)
        dropped = fault("sensor-dropout", "--duration", "60")
        observer.wait(dropped, ThermalAlert, 30, rule="sensor_stale", cleared=False)
        assert observer.since(dropped, Throttle) == []  # a silent sensor makes no cap
        observer.wait(dropped, ThermalAlert, 30, rule="sensor_stale", cleared=True)

        plant = [r for r in observer.since(start, Reading, source="plant")]
        assert max(r.die_c for r in plant) < PRESETS["cryogenic"].die_limit_c  # the caps came in time
    finally:
        observer.stopped.set()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    for process in processes:
        output = process.stdout.read().decode()  # type: ignore[union-attr]
        assert process.returncode == 0 and "Traceback" not in output, output[-3000:]


def test_thermal_node_state_comes_back_after_a_kill_9(kafka: KafkaConfig, run_id: str, tmp_path: Path) -> None:
    """The node's state lives in the step's changelog: a thermal processor killed with an alert active and started
    again knows the alert is active (no second alert) and clears it once."""
    node, group = f"node-{uuid.uuid4().hex[:6]}", f"thermal-{run_id}"
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path),
           "SDG_RUN_ID": run_id}
    admin.start_group_at_end(kafka, group, ["sdg.telemetry"])
    observer = _Observer(kafka, node)
    hot = CRYO.die_limit_c + 5
    clock = [0.0]

    def feed(die_c: float, seconds: float) -> None:
        with RecordProducer(kafka) as producer:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                clock[0] += 0.5
                producer.send("sdg.telemetry", _plant_reading(clock[0], node, die_c=die_c))
                producer.flush()
                time.sleep(0.1)

    def start() -> subprocess.Popen:  # type: ignore[type-arg]
        return subprocess.Popen(sdg_command("run", "thermal", "--group", group), cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    started = time.monotonic()
    first = start()
    try:
        deadline = time.monotonic() + 60
        while not observer.since(started, ThermalAlert, rule="die_over_limit"):
            assert time.monotonic() < deadline and first.poll() is None, "no die_over_limit alert"
            feed(hot, 1.0)
        feed(hot, 2.0)  # a checkpoint or two: the state with the active alert is committed
        first.kill()
        first.wait(30)
        second = start()
        try:
            feed(hot, 8.0)  # the restarted processor reads on, with the node's state from the changelog
            feed(CRYO.die_limit_c - 20, 1.0)
            observer.wait(started, ThermalAlert, 60, rule="die_over_limit", cleared=True)
        finally:
            second.send_signal(signal.SIGTERM)
            output = second.communicate(timeout=60)[0].decode()
        assert second.returncode == 0, output[-3000:]
    finally:
        observer.stopped.set()
        if first.poll() is None:
            first.kill()
    alerts = observer.since(started, ThermalAlert, rule="die_over_limit")
    assert [a.cleared for a in alerts] == [False, True]  # raised once before the kill, cleared once after it
