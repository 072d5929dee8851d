"""Benchmark: rows/s into Delta through the lineage sink versus a bare ``write_deltalake`` loop.

For batches of 100, 1,000 and 10,000 rows:
- bare: the same rows (a ``samples`` and a ``lineage`` row per generated sample), already built,
  appended with ``write_deltalake`` in a loop through an open table, one commit per table per batch;
- sink: the samples through the embedded broker (6 partitions) into a ``DeltaSink`` step of the runtime (consume,
  decode column-wise, rows, hash chain, one commit per table per batch carrying the Kafka offsets as
  app-transaction versions, offset commit), timed from its first consumed batch until its last commit (joining the
  consumer group, a one-time cost, is left out of the ratio and reported apart: ``*_with_startup_rows_per_s``).

Each size writes at least 20 commits per table and 20,000 samples. Writes ``bench/results/sink.json``. Usage:
``python bench/sink.py [--quick]`` (``--quick``: 8 commits, 4,000 samples).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.broker import free_port  # noqa: E402
from infra.broker import BrokerConfig, EmbeddedBroker  # noqa: E402
from processors.lineage import rows_of  # noqa: E402
from schemas.examples import example_sample  # noqa: E402
from schemas.tables import PARTITION_BY, TABLES, row_hash  # noqa: E402
from streams import admin  # noqa: E402
from streams.catalog import TopicSpec  # noqa: E402
from streams.config import TopicConfig  # noqa: E402
from streams.delta_sink import DeltaTables, SinkConfig, delta_runner  # noqa: E402
from streams.producer import RecordProducer  # noqa: E402

console = Console()
SCRATCH = Path(tempfile.mkdtemp(prefix="sdg-bench-sink-"))


def bare(samples: list, batch: int) -> float:  # type: ignore[type-arg]
    from deltalake import DeltaTable, write_deltalake

    root = SCRATCH / f"bare-{uuid.uuid4().hex[:8]}"
    rows = {"samples": [], "lineage": []}  # type: ignore[var-annotated]
    for i, sample in enumerate(samples):
        for table, table_rows in rows_of(sample, "sdg.samples.raw", 0, i).items():
            for row in table_rows:
                if table == "lineage":
                    row |= {"seq": i, "prev_hash": "0" * 64}
                    row["row_hash"] = row_hash(row, "0" * 64)
                rows[table].append(row)
    tables = {t: [pa.Table.from_pylist(r[k:k + batch], schema=TABLES[t]) for k in range(0, len(r), batch)]
              for t, r in rows.items()}
    start = time.perf_counter()
    for t, parts in tables.items():
        target: Any = str(root / t)
        for part in parts:  # through an open table after the first commit, as the sink writes
            write_deltalake(target, part, mode="append", partition_by=PARTITION_BY)
            if isinstance(target, str):
                target = DeltaTable(target)
    return 2 * len(samples) / (time.perf_counter() - start)


def through_sink(kafka, samples: list, batch: int) -> float:  # type: ignore[no-untyped-def, type-arg]
    topic = f"sdg.replay.bench-{uuid.uuid4().hex[:8]}"  # its own topic: the sink reads it from the start
    admin.create_topics(kafka, TopicConfig(), [TopicSpec(topic, "sample_id", None, 6, "bench", {})])
    with RecordProducer(kafka) as producer:
        for sample in samples:
            producer.send(topic, sample)
    tables = DeltaTables(SCRATCH / f"sink-{uuid.uuid4().hex[:8]}")
    sink = delta_runner([topic], fn=rows_of, kafka=kafka, tables=tables, group=f"bench-{uuid.uuid4().hex[:6]}",
                     run_id="bench",
                     config=SinkConfig(batch_rows=batch, max_batch_s=5.0, compact_every=10_000))
    start = time.monotonic()
    run = sink.run(max_idle_s=1.0)
    stats = sink.step.fn.stats
    assert stats.rows == {"samples": len(samples), "lineage": len(samples)}, stats.rows
    through_sink.rows_per_commit = 2 * len(samples) / stats.commits  # type: ignore[attr-defined]
    through_sink.with_startup = 2 * len(samples) / (stats.last_commit_s - start)  # type: ignore[attr-defined]
    return 2 * len(samples) / (stats.last_commit_s - run.first_batch_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    commits, minimum = (8, 4_000) if args.quick else (20, 20_000)
    broker = EmbeddedBroker(BrokerConfig(port=free_port(), controller_port=free_port(), security="plaintext",
                                         jars_dir=ROOT / ".sdg" / "kafka" / "jars"), SCRATCH / "broker")
    with console.status("starting the embedded broker"):
        broker.start()
    results: dict[str, object] = {"commits_per_table": commits, "rows_per_sample": 2}
    table = Table("batch rows", "bare rows a commit", "sink rows a commit", "bare write_deltalake rows/s",
                  "through the sink rows/s", "sink / bare",
                  title="rows into Delta (samples + lineage)")
    try:
        admin.create_topics(broker.kafka, TopicConfig())
        for batch in (100, 1_000, 10_000):
            run = f"bench-{batch}"
            samples = [example_sample(i, run, payload_bytes=300) for i in range(max(minimum, commits * batch // 2))]
            # a batch of B rows holds B/2 samples: both tables get B/2 rows a commit
            with console.status(f"batches of {batch} rows"):
                bare_rate = bare(samples, batch // 2)
                sink_rate = through_sink(broker.kafka, samples, batch)
            ratio = sink_rate / bare_rate
            per_commit = through_sink.rows_per_commit  # type: ignore[attr-defined]
            results |= {f"bare_{batch}_rows_per_s": round(bare_rate), f"sink_{batch}_rows_per_s": round(sink_rate),
                        f"sink_vs_bare_{batch}_ratio": round(ratio, 3), f"samples_{batch}": len(samples),
                        f"sink_{batch}_with_startup_rows_per_s": round(through_sink.with_startup),  # type: ignore[attr-defined]
                        f"sink_{batch}_rows_per_table_commit": round(per_commit)}
            table.add_row(f"{batch:,}", f"{batch // 2:,}", f"{per_commit:,.0f}", f"{bare_rate:,.0f}",
                          f"{sink_rate:,.0f}", f"{ratio:.2f}")
    finally:
        broker.stop()
        shutil.rmtree(SCRATCH, ignore_errors=True)  # the broker's logs and the tables: gigabytes after a run
    console.print(table)
    out = ROOT / "bench" / "results" / "sink.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
