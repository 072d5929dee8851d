"""The one runtime, in memory (the pipeline tier: no broker, seconds): step kinds, the error policy, dead
letters of one shape from every kind, and state that comes back after a crash without double counting."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from processors.passthrough import passthrough
from schemas.codec import RecordCodec
from schemas.examples import example, example_sample
from schemas.records import DeadLetter, GeneratedSample, GenerationJob, Reading, Record, SampleDecision, ThermalAlert
from streams.config import RunnerConfig
from streams.dead_letter import DLQ_TOPIC
from streams.errors import StepReturnError
from streams.memory import MemoryBroker
from streams.runtime import Runner, Step, Store, changelog_topic

CODEC = RecordCodec()
OFTEN = RunnerConfig(batch_size=10, commit_interval_s=1e-9, poll_timeout_s=0.01)  # a checkpoint after every batch, however fast
SOURCE = "sdg.replay.in"
SINK = "sdg.replay.out"


def drain(runner: Runner, **options: Any) -> Any:
    return runner.run(max_idle_s=0.3, **options)


def letters(broker: MemoryBroker) -> list[DeadLetter]:
    return broker.records(DLQ_TOPIC)  # type: ignore[return-value]


def test_a_map_step_relays_good_records_and_dead_letters_bad_data() -> None:
    broker = MemoryBroker()
    good = [example_sample(i, "r") for i in range(20)]
    for record in good[:10]:
        broker.send(SOURCE, record)
    broker.append(SOURCE, b"junk", b"not avro")
    broker.send(SOURCE, example(GenerationJob, 0, "r"))
    for record in good[10:]:
        broker.send(SOURCE, record)

    def picky(record: Record) -> Record:
        if isinstance(record, GenerationJob):
            raise ValueError("no jobs here")
        return record

    stats = drain(broker.runner(Step("picky", (SOURCE,), picky, sink=SINK), group="g"))
    assert stats.consumed == 22 and stats.produced[SINK] == 20
    assert sorted(r.sample_id for r in broker.records(SINK)) == sorted(s.sample_id for s in good)  # type: ignore[attr-defined]
    by_type = {letter.error_type: letter for letter in letters(broker)}
    assert set(by_type) == {"UndecodableRecord", "ValueError"}
    assert all(letter.step_id == "picky" for letter in by_type.values())
    assert by_type["UndecodableRecord"].original_value == b"not avro" and by_type["ValueError"].error == "no jobs here"
    assert sum(broker.committed[("g", SOURCE, p)] for p in range(6) if ("g", SOURCE, p) in broker.committed) == 22


def test_a_failing_model_stops_the_step_and_commits_and_dead_letters_nothing() -> None:
    broker = MemoryBroker()
    for i in range(30):
        broker.send(SOURCE, example_sample(i, "r"))

    def broken_model(batch: list[Record]) -> list[Record]:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory")

    runner = broker.runner(Step("label", (SOURCE,), broken_model, kind="batch_map", sink=SINK), group="g")
    with pytest.raises(RuntimeError, match="out of memory"):
        drain(runner)
    assert not broker.committed and not broker.messages(DLQ_TOPIC) and not broker.messages(SINK)


def test_a_broken_output_stops_the_step() -> None:
    broker = MemoryBroker()
    broker.send(SOURCE, example_sample(0, "r"))
    with pytest.raises(Exception, match="must return records"):
        drain(broker.runner(Step("p", (SOURCE,), lambda record: "a string"), group="g"))
    assert not broker.committed


def test_encoded_outputs_go_to_their_types_topic_and_a_too_large_one_dead_letters_its_input() -> None:
    """A function may return records already encoded (``Encoded``, the generate processor's hot path): they go out as
    they are; one too large sends the input to the dead-letter topic and none of its outputs out."""
    from schemas.codec import Encoded

    broker = MemoryBroker(max_record_bytes=64 * 1024)
    for i in range(3):
        broker.send("sdg.requests", example(GenerationJob, i, "r"))

    def made(job: GenerationJob) -> list[GeneratedSample]:  # job 1's last sample is too large
        return [example_sample(job.seed_start + k, "r", payload_bytes=100_000 if job.seed_start + k == 103 else 64)
                for k in range(4)]

    def samples(job: Record) -> list[Record | Encoded]:
        out = made(job)  # type: ignore[arg-type]
        return [Encoded(GeneratedSample, [s.key().encode() for s in out], [CODEC.encode(s) for s in out]),
                example(Reading, 0, "r")]

    stats = drain(broker.runner(Step("gen", ("sdg.requests",), samples), group="g"))
    assert stats.consumed == 3 and stats.produced["sdg.samples.raw"] == 8 and stats.produced["sdg.telemetry"] == 2
    assert [letter.error_type for letter in letters(broker)] == ["RecordTooLarge"]
    expected = [s.sample_id for i in (0, 2) for s in made(example(GenerationJob, i, "r"))]
    assert sorted(r.sample_id for r in broker.records("sdg.samples.raw")) == sorted(expected)  # type: ignore[attr-defined]
    broker.send(SOURCE, example(GenerationJob, 0, "r"))
    with pytest.raises(StepReturnError, match="no one topic"):  # the step is broken, not the job
        drain(broker.runner(Step("gen", (SOURCE,), samples, sink="sdg.telemetry"), group="h"))


class ListSink:
    def __init__(self) -> None:
        self.written: list[Record] = []
        self.buffer: list[Record] = []

    def write(self, message: Any, record: Record) -> None:
        if getattr(record, "sample_id", "").endswith("13"):
            raise ValueError("unlucky sample")
        self.buffer.append(record)

    def due(self) -> bool:
        return len(self.buffer) >= 5

    def flush(self, *, wait: bool = True) -> list[tuple[Any, Exception]]:
        self.written += self.buffer
        self.buffer = []
        return []

    def unwritten(self) -> dict[tuple[str, int], int]:
        return {}

    def assigned(self) -> None:
        pass


def _unlucky(record: Record) -> None:
    if getattr(record, "sample_id", "").endswith("13"):
        raise ValueError("unlucky sample")


def _by_kind() -> dict[str, Step]:
    def mapped(record: Record) -> Record:
        _unlucky(record)
        return record

    def batched(batch: list[Record]) -> list[Record | Exception]:
        out: list[Record | Exception] = []
        for record in batch:
            try:
                out.append(mapped(record))
            except ValueError as e:
                out.append(e)
        return out

    def counted(record: Record, store: Store[bytes]) -> list[Record]:
        _unlucky(record)
        store["n"] = str(int(store.get("n") or 0) + 1).encode()
        return []

    return {"map": Step("m", (SOURCE,), mapped, sink=SINK), "batch_map": Step("b", (SOURCE,), batched, kind="batch_map", sink=SINK),
            "stateful": Step("s", (SOURCE,), counted, kind="stateful"), "sink": Step("k", (SOURCE,), ListSink(), kind="sink")}


def test_dead_letters_have_one_shape_from_every_step_kind() -> None:
    shapes = {}
    samples = [example_sample(i, "r") for i in range(20)]
    for kind, step in _by_kind().items():
        broker = MemoryBroker()
        for sample in samples:
            broker.send(SOURCE, sample)
        broker.append(SOURCE, b"junk", b"\x00garbage", headers={"trace": b"1"})
        drain(broker.runner(step, group="g", run_id="r"))
        got = sorted(letters(broker), key=lambda letter: letter.error_type)
        assert [letter.error_type for letter in got] == ["UndecodableRecord", "ValueError"], kind
        assert {letter.step_id for letter in got} == {step.step_id}
        shapes[kind] = [letter.model_dump(exclude={"step_id", "created_ms"}) for letter in got]
        assert got[0].headers == {"trace": b"1"} and got[1].error == "unlucky sample"
    for kind, shape in shapes.items():
        assert shape == shapes["map"], kind


def crashing(fn: Any, crash_at: int | None, error: BaseException) -> Any:
    """A stateful function that raises ``error`` at its ``crash_at``-th record (the process dies there)."""
    seen = [0]

    def call(record: Record, store: Store[Any]) -> list[Record]:
        seen[0] += 1
        if seen[0] == crash_at:
            raise error
        return list(fn(record, store))

    return call


def count(record: Record, store: Store[bytes]) -> list[Record]:
    """Counts samples by the last digit of their id."""
    digit = record.sample_id[-1]  # type: ignore[attr-defined]
    store[digit] = str(int(store.get(digit) or 0) + 1).encode()
    return []


def test_state_comes_back_after_a_crash_without_double_counting() -> None:
    broker = MemoryBroker()
    for i in range(200):
        broker.send(SOURCE, example_sample(i, "r"))
    crashed = broker.runner(Step("count", (SOURCE,), crashing(count, 150, RuntimeError("the disk is gone")),
                                 kind="stateful"), group="g", config=OFTEN)
    with pytest.raises(RuntimeError):
        drain(crashed)
    assert 0 < sum(broker.committed.values()) < 150  # checkpoints before the crash; what came after is not committed
    restarted = broker.runner(Step("count", (SOURCE,), count, kind="stateful"), group="g", config=OFTEN)
    drain(restarted)
    assert restarted.stats.restored > 0 and restarted.stats.consumed < 200
    latest = {(m.partition(), m.key()): m.value() for m in broker.messages(changelog_topic("g", "count"))}
    counts: Counter[str] = Counter()
    for (_, key), value in latest.items():
        counts[key.decode()] += int(value)  # type: ignore[union-attr,arg-type]
    assert counts == {str(d): 20 for d in range(10)}  # every sample counted once, across the crash


def test_thermal_node_state_and_alerts_survive_a_crash() -> None:
    from processors.thermal import ThermalConfig, ThermalProcessor, ThermalRules, dump, load

    broker = MemoryBroker()
    base: dict[str, Any] = {"die_c": 20.0, "coolant_c": -40.0, "power_w": 300.0, "bus_v": 400.0, "flow_lpm": 8.0, "pue": 1.05}
    for i in range(60):
        die = base["die_c"] + (90.0 if i >= 10 else 0.0) + 0.01 * i  # over the limit from the 10th reading on
        broker.send("sdg.telemetry", Reading(run_id="r", node_id="node-0", source="plant", ts_ms=1000 * i,
                                             **{**base, "die_c": die}))

    def step(crash_at: int | None = None) -> Step:
        thermal = ThermalProcessor(ThermalRules(ThermalConfig(), run_id="r"))
        process = crashing(thermal.process, crash_at, MemoryError("out of memory"))
        return Step("thermal", ("sdg.telemetry",), process, kind="stateful", load=load, dump=dump)

    with pytest.raises(MemoryError):
        drain(broker.runner(step(crash_at=40), group="t", config=OFTEN))
    assert 10 < sum(broker.committed.values()) < 40
    drain(broker.runner(step(), group="t", config=OFTEN))
    raised = [a for a in broker.records("sdg.alerts") if isinstance(a, ThermalAlert) and a.rule == "die_over_limit"]
    assert len(raised) == 1 and not raised[0].cleared  # raised once; the restart knew it was active


def test_runner_stops_on_request_and_checkpoints() -> None:
    broker = MemoryBroker()
    runner = broker.runner(Step("p", (SOURCE,), passthrough, sink=SINK), group="g")
    thread = threading.Thread(target=runner.run)
    thread.start()
    broker.send(SOURCE, example_sample(0, "r"))
    while not broker.messages(SINK):
        thread.join(0.01)
    runner.stop()
    thread.join(5)
    assert not thread.is_alive() and sum(broker.committed.values()) == 1


def crashing_many(fn: Any, crash_at: int | None, error: BaseException) -> Any:
    """``crashing`` for a batched stateful function: it raises on the batch that holds its ``crash_at``-th record."""
    seen = [0]

    def call(records: list[Record], store: Store[Any]) -> list[Any]:
        seen[0] += len(records)
        if crash_at is not None and seen[0] >= crash_at:
            raise error
        return list(fn(records, store))

    return call


@pytest.mark.parametrize(("tampered", "batch"), [(False, False), (True, False), (False, True)])
def test_quality_windows_survive_a_crash_and_every_sample_is_decided_once(quality_state: Path, tampered: bool,
                                                                          batch: bool) -> None:
    """The real quality step: a crash halfway through a window; the restarted step rebuilds the window from its
    changelog, closes it with every sample once, and the window counts each candidate once. A row of the
    changelog overwritten with garbage (``tampered``) costs that sample only."""
    from models.corruption import mixed_stream
    from models.reference import load_digits_reference, make_splits
    from processors.label import label
    from processors.quality import QualityConfig, QualityProcessor
    from sdg.settings import Settings

    window = 39 if tampered else 40  # the tampered sample is left out of its window
    settings = Settings(state_dir=quality_state, quality=QualityConfig(window_size=window, max_window_s=3600, slide=2))
    stream = [s for s, _ in mixed_stream(make_splits(load_digits_reference()), good=40, noise=0, wrong_class=0,
                                         run_id="q", seed=5)]
    broker = MemoryBroker()
    for record in label(stream, labeler=settings.labeler()):
        assert not isinstance(record, Exception)
        broker.send("sdg.samples.labeled", record)

    def step(crash_at: int | None = None) -> Step:
        quality = QualityProcessor(settings.judge(), max_record_bytes=broker.max_record_bytes)
        if batch:
            return Step("quality", ("sdg.samples.labeled",), crashing_many(quality.process_many, crash_at,
                        RuntimeError("killed")), kind="stateful", key_by=quality.route, batch=True)
        process = crashing(quality.process, crash_at, RuntimeError("killed"))
        return Step("quality", ("sdg.samples.labeled",), process, kind="stateful", key_by=quality.route)

    with pytest.raises(RuntimeError):
        drain(broker.runner(step(crash_at=25), group="q", config=OFTEN))
    assert not broker.messages("sdg.quality")  # the window was open when it crashed
    lost: set[str] = set()
    if tampered:
        row = next(m for m in broker.messages(changelog_topic("q", "quality")) if (m.key() or b"").endswith(b"|3"))
        lost.add(CODEC.decode(row.value()).sample.sample_id)  # type: ignore[attr-defined]
        broker.append(row.topic(), row.key(), b"\x00garbage", partition=row.partition())
    restarted = broker.runner(step(), group="q", config=OFTEN)
    drain(restarted)
    assert restarted.stats.restored > 0
    decided = [r.sample.sample_id for t in ("sdg.samples.accepted", "sdg.samples.review", "sdg.samples.rejected")
               for r in broker.records(t) if isinstance(r, SampleDecision)]
    assert sorted(decided) == sorted(s.sample_id for s in stream if s.sample_id not in lost)  # once each
    [tumbling] = [w for w in broker.records("sdg.quality") if w.kind == "tumbling" and w.class_label is None]  # type: ignore[attr-defined]
    refused = [d for d in broker.records("sdg.samples.rejected") if not d.gate.reason.startswith("inadmissible")]  # type: ignore[attr-defined]
    assert tumbling.metrics.n == 40 - len(lost) - len(refused)  # type: ignore[attr-defined]  # none counted twice


def test_the_batched_quality_step_decides_as_the_one_by_one_step_does(quality_state: Path) -> None:
    """The same labeled stream through ``process`` and ``process_many``: the same windows, scores and decisions."""
    from models.corruption import mixed_stream
    from models.reference import load_digits_reference, make_splits
    from processors.label import label
    from processors.quality import QualityConfig, QualityProcessor
    from sdg.settings import Settings

    settings = Settings(state_dir=quality_state, quality=QualityConfig(window_size=25, max_window_s=3600, slide=2))
    stream = [s for s, _ in mixed_stream(make_splits(load_digits_reference()), good=50, noise=15, wrong_class=15,
                                         run_id="q", seed=3)]
    labeled = [r for r in label(stream, labeler=settings.labeler()) if not isinstance(r, Exception)]
    seen: list[tuple[dict[str, Any], list[Any]]] = []
    for batch in (False, True):
        broker = MemoryBroker()
        for record in labeled:
            broker.send("sdg.samples.labeled", record)
        quality = QualityProcessor(settings.judge(), max_record_bytes=broker.max_record_bytes)
        fn = quality.process_many if batch else quality.process
        drain(broker.runner(Step("quality", ("sdg.samples.labeled",), fn, kind="stateful", key_by=quality.route,
                                 batch=batch), group="q", config=RunnerConfig(batch_size=64, commit_interval_s=0.001,
                                                                             poll_timeout_s=0.01)))
        decisions = {r.sample.sample_id: (r.gate.decision, r.gate.reason, r.score.window_id, r.score.realism)  # type: ignore[attr-defined]
                     for t in ("sdg.samples.accepted", "sdg.samples.review", "sdg.samples.rejected")
                     for r in broker.records(t)}
        windows = sorted((w.window_id, w.kind, w.class_label, w.metrics.n, round(w.metrics.fid, 6))  # type: ignore[attr-defined]
                         for w in broker.records("sdg.quality"))
        seen.append((decisions, windows))
    assert len(seen[0][0]) == 75 and len(seen[0][1]) > 2  # three windows of 25 closed; 5 samples wait in the fourth
    (one, windows), (many, windows_many) = seen
    assert windows == windows_many and one.keys() == many.keys()
    for sample_id, (decision, reason, window_id, realism) in one.items():  # batched ONNX runs round differently
        assert many[sample_id][:3] == (decision, reason, window_id)
        assert many[sample_id][3] == pytest.approx(realism, rel=1e-4)


def test_garbage_in_a_changelog_is_dead_lettered_at_restore_and_the_step_goes_on() -> None:
    """A changelog is a topic like any other: a record there that is not state costs its key, not the processor."""
    from processors.thermal import ThermalConfig, ThermalProcessor, ThermalRules, dump, load

    def step() -> Step:
        thermal = ThermalProcessor(ThermalRules(ThermalConfig(), run_id="r"))
        return Step("thermal", ("sdg.telemetry",), thermal.process, kind="stateful", load=load, dump=dump)

    broker = MemoryBroker()
    reading = Reading(run_id="r", node_id="node-0", source="plant", ts_ms=0, die_c=20.0, coolant_c=-40.0,
                      power_w=300.0, bus_v=400.0, flow_lpm=8.0, pue=1.05)
    broker.send("sdg.telemetry", reading)
    drain(broker.runner(step(), group="t", config=OFTEN))
    changelog = changelog_topic("t", "thermal")
    [kept] = broker.messages(changelog)
    broker.append(changelog, b"node-1", b"{not a node state", partition=kept.partition())
    broker.send("sdg.telemetry", reading.model_copy(update={"ts_ms": 1000}))
    restarted = broker.runner(step(), group="t", config=OFTEN)
    drain(restarted)
    assert restarted.stats.consumed == 1 and restarted.stats.restored == 1  # node-0 came back; node-1 did not
    [letter] = letters(broker)
    assert letter.topic == changelog and letter.original_value == b"{not a node state"
    assert letter.step_id == "thermal" and letter.error_type == "ValidationError"


class SlowSink:
    """A sink whose writes land one checkpoint late (as the Delta sink's writer thread does); it keeps messages."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.writing: list[Any] = []  # the write under way
        self.buffer: list[Any] = []

    def write(self, message: Any, record: Record) -> None:
        self.buffer.append(message)

    def due(self) -> bool:
        return len(self.buffer) >= 5

    def flush(self, *, wait: bool = True) -> list[tuple[Any, Exception]]:
        self.written += self.writing  # the last write landed
        self.writing, self.buffer = self.buffer, []
        if wait:
            self.written, self.writing = self.written + self.writing, []
        return []

    def assigned(self) -> None:
        pass

    def unwritten(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for message in self.writing + self.buffer:
            tp = (message.topic(), message.partition())
            out[tp] = min(out.get(tp, message.offset()), message.offset())
        return out


def test_a_sink_step_commits_no_offset_beyond_what_its_sink_has_written() -> None:
    broker = MemoryBroker()
    for i in range(30):
        broker.send(SOURCE, example_sample(i, "r"))
    sink = SlowSink()
    runner = broker.runner(Step("k", (SOURCE,), sink, kind="sink"), group="g", config=OFTEN)
    committed: list[int] = []
    checkpoint = runner.io.checkpoint

    def watched(offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None:
        landed = {(m.topic(), m.partition(), m.offset()) for m in sink.written}
        for (topic, partition), offset in offsets.items():  # every offset below a committed one has landed
            assert all((topic, partition, o) in landed for o in range(offset)), (topic, partition, offset)
        committed.append(sum(offsets.values()))
        checkpoint(offsets, wait=wait)

    runner.io.checkpoint = watched  # type: ignore[method-assign]
    drain(runner)
    assert len(sink.written) == 30 and sum(broker.committed.values()) == 30 and len(committed) > 2
