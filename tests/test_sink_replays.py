"""The lineage sink keeps one row per sample and stage when an upstream processor publishes the same outputs
again under new offsets (a generator or labeler killed before its offset commit), within a run of the sink
and across its restarts; a person's correction is kept."""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable

from processors.lineage import rows_of
from schemas.examples import example, example_sample
from schemas.records import LabeledSample
from sdg.history import verify_lineage
from streams.config import RunnerConfig
from streams.delta_sink import DeltaSink, DeltaTables, SinkConfig
from streams.memory import MemoryBroker
from streams.runtime import Step


def _drain(broker: MemoryBroker, tables: DeltaTables) -> DeltaSink:
    sink = DeltaSink(fn=rows_of, tables=tables, group="g", config=SinkConfig(batch_rows=8))
    step = Step("lineage", ("sdg.samples.raw", "sdg.samples.labeled"), sink, kind="sink")
    broker.runner(step, group="g", config=RunnerConfig(batch_size=4, poll_timeout_s=0.01)).run(max_idle_s=0.3)
    return sink


def _labeled(i: int, run_id: str, label: int) -> LabeledSample:
    record = example(LabeledSample, i, run_id).model_copy(update={"sample": example_sample(i, run_id)})
    return record.model_copy(update={"label": record.label.model_copy(update={"label": label})})


def test_replayed_outputs_are_kept_once_per_sample_and_stage(tmp_path: Path, run_id: str) -> None:
    tables, broker = DeltaTables(tmp_path), MemoryBroker()
    for i in [*range(20), *range(10)]:  # the generator published 0–9 twice
        broker.send("sdg.samples.raw", example_sample(i, run_id))
    for i in [*range(5), *range(5)]:
        broker.send("sdg.samples.labeled", _labeled(i, run_id, label=3))
    first = _drain(broker, tables)
    assert first.stats.duplicates == 10 * 2 + 5  # a repeated sample makes a samples and a lineage row; a label, one
    for i in range(5, 15):  # after a restart of the sink, the generator replays again
        broker.send("sdg.samples.raw", example_sample(i, run_id))
    broker.send("sdg.samples.labeled", _labeled(0, run_id, label=3))
    broker.send("sdg.samples.labeled", _labeled(0, run_id, label=5))  # a different label is another row
    second = _drain(broker, tables)
    assert second.stats.duplicates == 10 * 2 + 1
    samples = DeltaTable(tables.path("samples")).to_pyarrow_table().to_pylist()
    lineage = DeltaTable(tables.path("lineage")).to_pyarrow_table().to_pylist()
    assert sorted(r["seed"] for r in samples) == sorted(example_sample(i, run_id).seed for i in range(20))
    stages = sorted((r["sample_id"], r["stage"], r["label"]) for r in lineage)
    assert len(stages) == len(set(stages)) == 20 + 5 + 1
    assert verify_lineage(tables).broken is None


def test_a_restarted_sink_skips_what_its_tables_hold_column_wise_too(tmp_path: Path, run_id: str) -> None:
    """A consumed batch big enough for the column-wise path, read again after a restart that lost the Kafka offsets:
    every record is skipped by the tables' versions, nothing is written twice, and the chains verify."""
    tables, broker = DeltaTables(tmp_path), MemoryBroker()
    for i in range(100):
        broker.send("sdg.samples.raw", example_sample(i, run_id))

    def drain() -> DeltaSink:
        sink = DeltaSink(fn=rows_of, tables=tables, group="g", config=SinkConfig(batch_rows=64))
        step = Step("lineage", ("sdg.samples.raw",), sink, kind="sink")
        broker.runner(step, group="g", config=RunnerConfig(batch_size=100, poll_timeout_s=0.01)).run(max_idle_s=0.3)
        return sink

    first = drain()
    assert first.stats.rows == {"samples": 100, "lineage": 100}
    broker.committed.clear()  # the offsets are lost: the restarted sink reads every record again
    again = drain()
    assert again.stats.skipped == 100 and again.stats.rows == {}
    assert DeltaTable(str(tmp_path / "samples")).to_pyarrow_table().num_rows == 100
    assert verify_lineage(tables).broken is None
