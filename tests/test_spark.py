"""The cluster path in local mode: Spark (delta-spark, jars from Maven Central) reads the tables the
Python sink wrote, writes generator_stats and compacts lineage; the Python side (deltalake, DuckDB,
polars) reads what Spark wrote, the chain still verifies, and the sink goes on exactly once."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from deltalake import DeltaTable

from processors.lineage import rows_of
from schemas.examples import example, example_sample
from schemas.records import Gate, LabeledSample, SampleDecision
from sdg.history import query, verify_lineage
from sdg.spark import SparkConfig, compact, session, write_generator_stats
from streams.config import KafkaConfig
from streams.delta_sink import DeltaTables, SinkConfig, delta_runner
from streams.producer import RecordProducer
from tests.conftest import REPO, sdg_command

pytestmark = pytest.mark.integration  # the broker, Delta tables or Spark

DECISIONS: tuple[Literal["accepted", "review", "rejected"], ...] = ("accepted", "accepted", "review", "rejected")


def _send(producer: RecordProducer, topic: str, run_id: str, indices: range) -> None:
    for i in indices:
        sample = example_sample(i, run_id).model_copy(update={"generator": "gan" if i % 2 else "diffusion"})
        labeled = example(LabeledSample, i, run_id).model_copy(update={"sample": sample})
        decision = example(SampleDecision, i, run_id).model_copy(update={
            "sample": sample, "gate": Gate(decision=DECISIONS[i % 4], reason="r", gate="t")})
        for record in (sample, labeled, decision):
            producer.send(topic, record)


def _sink(kafka: KafkaConfig, topic: str, tables: DeltaTables, run_id: str) -> None:
    delta_runner([topic], fn=rows_of, kafka=kafka, tables=tables, group=f"spark-{run_id}", run_id=run_id,
              config=SinkConfig(batch_rows=30, max_batch_s=60, compact_every=1000)).run(max_idle_s=3)


def _expected(n: int) -> dict[str, dict[str, int]]:
    expected: dict[str, Counter] = {"diffusion": Counter(), "gan": Counter()}
    for i in range(n):
        expected["gan" if i % 2 else "diffusion"].update(["generated", "labeled", DECISIONS[i % 4]])
    return {g: dict(c) for g, c in expected.items()}


@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    spark = session(SparkConfig(), ivy_dir=REPO / ".sdg" / "ivy", app_name="sdg-test")
    yield spark
    spark.stop()


def test_spark_reads_the_sink_tables_and_python_reads_what_spark_wrote(spark, kafka: KafkaConfig, run_id: str,
                                                                        tmp_path: Path, fresh_topic) -> None:  # type: ignore[no-untyped-def]
    topic = fresh_topic()
    tables = DeltaTables(tmp_path / "tables")
    with RecordProducer(kafka) as producer:
        _send(producer, topic, run_id, range(40))
    _sink(kafka, topic, tables, run_id)
    assert spark.read.format("delta").load(tables.path("samples")).count() == 40

    assert write_generator_stats(spark, tables.root, run=run_id) == 2
    rows = {r["generator"]: r for r in DeltaTable(tables.path("generator_stats")).to_pyarrow_table().to_pylist()}
    for generator, counts in _expected(40).items():
        row = rows[generator]
        assert {k: row[k] for k in counts} == counts
        assert row["acceptance_rate"] == pytest.approx(counts["accepted"] / 20)
        assert (row["labels_saved"], row["labels_to_review"]) == (counts["accepted"], counts.get("review", 0))
    duck = query(tables, "SELECT sum(accepted) AS a FROM generator_stats WHERE run_id = ?", params=[run_id])
    assert duck.to_pylist() == [{"a": 20}]
    assert pl.read_delta(tables.path("generator_stats")).height == 2

    files = len(DeltaTable(tables.path("lineage")).file_uris())
    metrics = compact(spark, tables.root, "lineage")
    assert files > 1 and metrics["numFilesRemoved"] == files and metrics["numFilesAdded"] < files
    assert len(DeltaTable(tables.path("lineage")).file_uris()) == metrics["numFilesAdded"]
    assert verify_lineage(tables).broken is None  # Spark's rewrite keeps every row and its hash

    # the sink goes on after Spark's commits: the app-transaction versions survive, nothing is written twice
    with RecordProducer(kafka) as producer:
        _send(producer, topic, run_id, range(40, 60))
    _sink(kafka, topic, tables, run_id)
    lineage = DeltaTable(tables.path("lineage")).to_pyarrow_table().to_pylist()
    assert Counter(r["stage"] for r in lineage) == Counter(
        {"generated": 60, "labeled": 60, "accepted": 30, "review": 15, "rejected": 15})
    assert verify_lineage(tables).broken is None

    assert write_generator_stats(spark, tables.root, run=run_id) == 2  # replaces the run's rows
    rows = {r["generator"]: r for r in DeltaTable(tables.path("generator_stats")).to_pyarrow_table().to_pylist()}
    assert len(rows) == 2 and {g: {k: rows[g][k] for k in c} for g, c in _expected(60).items()} == _expected(60)


def test_sdg_spark_stats_prints_the_table(kafka: KafkaConfig, run_id: str, tmp_path: Path,
                                          fresh_topic) -> None:  # type: ignore[no-untyped-def]
    topic = fresh_topic()
    tables = DeltaTables(tmp_path / "tables")
    with RecordProducer(kafka) as producer:
        _send(producer, topic, run_id, range(8))
    _sink(kafka, topic, tables, run_id)
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path),
           "SDG_SPARK__IVY_DIR": str(REPO / ".sdg" / "ivy"), "COLUMNS": "200"}
    done = subprocess.run(sdg_command("spark", "stats", "--run", run_id), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generator_stats: 2 rows written" in done.stdout
    assert "diffusion" in done.stdout and "gan" in done.stdout, done.stdout
