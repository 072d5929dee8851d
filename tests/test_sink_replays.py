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


def test_chain_heads_are_read_in_one_go_and_follow_commits_made_after_the_first_read(tmp_path: Path) -> None:
    """The sink reads the heads of all the chains a batch starts (the last seq and hash of each) in one read, through
    a handle it keeps up to date: a row another writer appends later is seen."""
    import pyarrow as pa
    from deltalake import write_deltalake

    tables = DeltaTables(tmp_path)
    genesis = (0, "0" * 64)
    assert tables.chain_heads([("r", "d", "x", 0)]) == {("r", "d", "x", 0): genesis}

    def rows(*values: tuple[str, str, int, int, str]) -> pa.Table:
        run, topic, partition, seq, digest = zip(*values)
        return pa.table({"run_id": run, "date": ["d"] * len(run), "kafka_topic": topic,
                         "kafka_partition": pa.array(partition, pa.int32()), "seq": seq, "row_hash": digest})

    write_deltalake(str(tmp_path / "lineage"), rows(("r", "x", 0, 0, "a"), ("r", "x", 0, 1, "b"), ("r", "x", 1, 0, "c"),
                                                   ("r", "y", 0, 0, "d"), ("s", "x", 0, 0, "f")), partition_by=["run_id", "date"])
    keys = [("r", "d", "x", 0), ("r", "d", "x", 1), ("r", "d", "y", 0), ("s", "d", "x", 0), ("r", "d", "z", 0)]
    assert tables.chain_heads(keys) == dict(zip(keys, [(2, "b"), (1, "c"), (1, "d"), (1, "f"), genesis]))
    write_deltalake(str(tmp_path / "lineage"), rows(("r", "x", 0, 2, "g")), mode="append", partition_by=["run_id", "date"])
    assert tables.chain_heads(keys[:1]) == {keys[0]: (3, "g")}
