"""The lineage sink into real Delta tables through the real broker: killed with SIGKILL at random
points and restarted, it still writes every record exactly once per table; the chain verifies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from processors.lineage import rows_of
from schemas.examples import example, example_sample
from schemas.records import Gate, GeneratedSample, LabeledSample, QualityWindow, SampleDecision
from schemas.tables import verify_chain
from streams.config import KafkaConfig
from streams.producer import RecordProducer
from tests.conftest import REPO, sdg_command

pytestmark = pytest.mark.integration  # the broker, Delta tables or Spark

N = 600


def _stream(producer: RecordProducer, run_id: str) -> None:
    for i in range(N):
        sample = example_sample(i, run_id)
        labeled = example(LabeledSample, i, run_id).model_copy(update={"sample": sample})
        decision = example(SampleDecision, i, run_id).model_copy(update={
            "sample": sample, "gate": Gate(decision=("accepted", "review", "rejected")[i % 3], reason="r", gate="t")})
        producer.send("sdg.samples.raw", sample)
        producer.send("sdg.samples.labeled", labeled)
        producer.send(f"sdg.samples.{decision.gate.decision}", decision)
    for i in range(20):
        producer.send("sdg.quality", example(QualityWindow, i, run_id))
    producer.send_bytes("sdg.samples.raw", b"bad", b"not a record")


def _rows(tables: Path, table: str, run_id: str) -> list[dict]:
    return [r for r in DeltaTable(str(tables / table)).to_pyarrow_table().to_pylist() if r["run_id"] == run_id]


def test_sink_killed_at_random_points_writes_every_record_exactly_once(kafka: KafkaConfig, run_id: str,
                                                                        tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    with RecordProducer(kafka) as producer:
        _stream(producer, run_id)
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path),
           "SDG_RUN_ID": run_id, "SDG_SINK__BATCH_ROWS": "40", "SDG_SINK__MAX_BATCH_S": "0.5",
           "SDG_SINK__COMPACT_EVERY": "25"}
    group = f"lineage-{run_id}"
    rng = random.Random(run_id)
    kills = 0
    events = tmp_path / "openlineage" / "events.jsonl"

    def started() -> int:
        return len(events.read_text().splitlines()) if events.exists() else 0

    for _ in range(4):  # start, let it write for a while, SIGKILL it mid-stream
        before = started()
        sink = subprocess.Popen(sdg_command("run", "lineage", "--group", group), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while started() == before and time.monotonic() < deadline:  # its START event: it is running
            time.sleep(0.05)
        time.sleep(rng.uniform(0.5, 2.5))
        if sink.poll() is None:
            sink.send_signal(signal.SIGKILL)
            kills += 1
        sink.wait(30)
    final = subprocess.Popen(sdg_command("run", "lineage", "--group", group), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            lineage = _rows(tables, "lineage", run_id) if (tables / "lineage").exists() else []
            if len(lineage) >= 3 * N and (tables / "quality_windows").exists():
                break
            time.sleep(1)
        time.sleep(2)  # anything still arriving would be a duplicate: give it the chance to show
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0, final.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    assert kills == 4

    samples = _rows(tables, "samples", run_id)
    lineage = _rows(tables, "lineage", run_id)
    assert len(samples) == N and len({r["sample_id"] for r in samples}) == N
    stages = Counter(r["stage"] for r in lineage)
    assert stages == {"generated": N, "labeled": N, "accepted": N // 3, "review": N // 3, "rejected": N // 3}
    assert len({(r["sample_id"], r["stage"]) for r in lineage}) == len(lineage)  # no duplicate rows
    assert len(_rows(tables, "quality_windows", run_id)) == 20
    from streams.delta_sink import DeltaTables

    heads = {k: v for k, v in DeltaTables(tables).recorded_heads().items() if k.startswith(f"{run_id}|")}
    assert verify_chain(lineage, heads) is None and len(heads) == len({(r["kafka_topic"], r["kafka_partition"])
                                                                        for r in lineage})
    versions = DeltaTable(str(tables / "lineage")).transaction_version(f"{group}/sdg.samples.labeled/0")
    assert versions is not None and versions > 0

    # OpenLineage: a START per run, a COMPLETE for the one that was stopped, none for the killed ones
    import json

    emitted = [json.loads(line) for line in events.read_text().splitlines()]
    assert Counter(e["eventType"] for e in emitted) == {"START": kills + 1, "COMPLETE": 1}
    complete = next(e for e in emitted if e["eventType"] == "COMPLETE")
    assert complete["job"]["namespace"] == "sdg-edge" and complete["job"]["name"] == "lineage"
    assert "sdg.samples.raw" in {d["name"] for d in complete["inputs"]}
    assert {"samples", "lineage"} <= {d["name"] for d in complete["outputs"]}


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "insert"])
def test_verify_finds_the_first_broken_row(tamper: str) -> None:
    from schemas.tables import GENESIS, row_hash

    rows, previous = [], GENESIS
    for i in range(6):
        row = rows_of(example_sample(i, "r"), "sdg.samples.raw", 0, i)["lineage"][0]
        row["seq"], row["prev_hash"] = i, previous
        row["row_hash"] = previous = row_hash(row, previous)
        rows.append(row)
    assert verify_chain([dict(r) for r in rows]) is None
    if tamper == "edit":
        rows[3]["class_label"] = 9 if rows[3]["class_label"] != 9 else 8
    elif tamper == "delete":
        del rows[2]
    elif tamper == "swap":
        rows[1]["seq"], rows[4]["seq"] = 4, 1
    else:
        forged = dict(rows[2], sample_id="forged")
        forged["row_hash"] = row_hash(forged, forged["prev_hash"])
        rows.insert(3, forged)
    broken = verify_chain(rows)
    assert broken is not None
    assert broken.seq == {"edit": 3, "delete": 3, "swap": 1, "insert": 2}[tamper], broken


def test_sdg_verify_on_a_table_the_sink_wrote_and_then_tampered(kafka: KafkaConfig, run_id: str, tmp_path: Path,
                                                                fresh_topic) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    from deltalake import write_deltalake

    from schemas.tables import LINEAGE
    from streams.delta_sink import DeltaTables, SinkConfig, delta_runner

    topic = fresh_topic()
    with RecordProducer(kafka) as producer:
        for i in range(30):
            producer.send(topic, example_sample(i, run_id))
    tables = DeltaTables(tmp_path / "tables")
    sink = delta_runner([topic], fn=rows_of, kafka=kafka, tables=tables, group=f"v-{run_id}", run_id=run_id,
                     config=SinkConfig(batch_rows=10))
    sink.run(max_idle_s=3)
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path)}
    ok = subprocess.run(sdg_command("verify"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "verify" in ok.stdout, ok.stdout + ok.stderr
    rows = DeltaTable(tables.path("lineage")).to_pyarrow_table().to_pylist()
    target = next(r for r in rows if r["run_id"] == run_id and r["seq"] == 2)
    target["seed"] += 1  # one edited field, rewritten as a Delta overwrite would
    write_deltalake(tables.path("lineage"), pa.Table.from_pylist(rows, schema=LINEAGE), mode="overwrite")
    bad = subprocess.run(sdg_command("verify"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "breaks at seq 2" in bad.stdout and "edited" in bad.stdout, bad.stdout
    previous = subprocess.run(sdg_command("verify", "--as-of", "0"), cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert previous.returncode == 0, previous.stdout  # time travel: the version before the edit still verifies

    target["seed"] -= 1  # undo the edit, but cut the last row off one chain
    end = max((r for r in rows if r["run_id"] == run_id), key=lambda r: r["seq"])
    kept = [r for r in rows if r is not end]
    write_deltalake(tables.path("lineage"), pa.Table.from_pylist(kept, schema=LINEAGE), mode="overwrite")
    cut = subprocess.run(sdg_command("verify"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert cut.returncode == 1 and "truncated" in cut.stdout, cut.stdout


def test_query_reads_the_tables_the_sink_wrote_now_and_as_of_a_version(kafka: KafkaConfig, run_id: str, tmp_path: Path,
                                                                         fresh_topic) -> None:  # type: ignore[no-untyped-def]
    import polars as pl

    from sdg.history import query
    from streams.delta_sink import DeltaTables, SinkConfig, delta_runner

    topic = fresh_topic()
    tables = DeltaTables(tmp_path / "tables")
    for start in (0, 15):  # two runs of the sink, the second after more samples arrived
        with RecordProducer(kafka) as producer:
            for i in range(start, start + (15 if start == 0 else 25)):
                producer.send(topic, example_sample(i, run_id))
        delta_runner([topic], fn=rows_of, kafka=kafka, tables=tables, group=f"q-{run_id}", run_id=run_id,
                  config=SinkConfig(batch_rows=1000, max_batch_s=60)).run(max_idle_s=2)  # one commit a run
    counted = query(tables, "SELECT stage, count(*) AS n FROM lineage GROUP BY stage").to_pylist()
    assert counted == [{"stage": "generated", "n": 40}]
    joined = query(tables, "SELECT s.generator, count(*) AS n FROM samples s JOIN lineage l USING (sample_id) "
                           "GROUP BY s.generator").to_pylist()
    assert joined == [{"generator": "example", "n": 40}]
    first = query(tables, "SELECT count(*) AS n FROM samples", versions={"samples": 0}).to_pylist()[0]["n"]
    assert first == 15  # version 0 is the first run's commit
    assert pl.read_delta(tables.path("samples")).height == 40  # polars reads the same table


def test_replay_a_past_version_and_regenerate_from_provenance(kafka: KafkaConfig, run_id: str, tmp_path: Path,
                                                              fresh_topic) -> None:  # type: ignore[no-untyped-def]
    from models.catalog import GeneratorCatalog
    from models.render import ProceduralRenderer
    from processors.generate import GenerateConfig, generate, plan_jobs
    from sdg.history import select_samples
    from streams.delta_sink import DeltaTables, SinkConfig, delta_runner
    from streams.subscribe import subscribe

    catalog = GeneratorCatalog(tmp_path / "models")
    catalog.put(ProceduralRenderer())
    jobs = plan_jobs("procedural", classes=list(range(10)), per_class=3, seed=4, run_id=run_id, job_size=15)
    source, target = fresh_topic(), fresh_topic(partitions=1)  # one partition: the replay order is kept
    tables = DeltaTables(tmp_path / "tables")
    for job in jobs:  # one sink run per job: version 0 of the samples table holds the first job only
        with RecordProducer(kafka) as producer:
            for record in generate(job, generators=catalog, config=GenerateConfig()):
                if isinstance(record, GeneratedSample):
                    producer.send(source, record)
        delta_runner([source], fn=rows_of, kafka=kafka, tables=tables, group=f"r-{run_id}", run_id=run_id,
                  config=SinkConfig(batch_rows=1000, max_batch_s=60)).run(max_idle_s=2)
    first = select_samples(tables, as_of=0, run=run_id)
    assert len(first) == 15 and len(select_samples(tables, run=run_id)) == 30
    assert len(select_samples(tables, run=run_id, class_label=3)) == 3

    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path)}
    done = subprocess.run(sdg_command("replay", "--to", target, "--as-of", "0", "--run", run_id, "--regenerate",
                                      "--rate", "200"), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "15 match their stored hash" in done.stdout and "replayed 15 samples" in done.stdout
    replayed = [r.record for r in subscribe(target, kafka=kafka, from_beginning=True, idle_timeout_s=3)
                if isinstance(r.record, GeneratedSample)]
    assert [s.sample_id for s in replayed] == [r["sample_id"] for r in first]  # exactly that version, in order
    assert [s.image_sha256 for s in replayed] == [r["image_sha256"] for r in first]


@pytest.mark.parametrize("fmt", ["coco", "yolo", "yolo-seg", "imagefolder", "parquet"])
def test_exports_load(fmt: str, kafka: KafkaConfig, run_id: str, tmp_path: Path,
                      fresh_topic) -> None:  # type: ignore[no-untyped-def]
    import contextlib
    import hashlib
    import io
    import json

    import pyarrow.parquet as pq
    from PIL import Image

    from models.catalog import GeneratorCatalog
    from models.image import decode_png
    from models.render import ProceduralRenderer
    from processors.generate import GenerateConfig, generate, plan_jobs
    from streams.delta_sink import DeltaTables, delta_runner

    catalog = GeneratorCatalog(tmp_path / "models")
    catalog.put(ProceduralRenderer())
    jobs = [*plan_jobs("procedural", classes=list(range(10)), per_class=2, seed=5, run_id=run_id),
            *plan_jobs("procedural", classes=list(range(10)), per_class=1, seed=6, run_id=run_id,
                       params={"mode": "scene"})]
    source = fresh_topic()
    accepted = 0
    masks = {}  # (sample id, box) → the renderer's mask, as the generate step sent it
    with RecordProducer(kafka) as producer:
        for job in jobs:
            for i, sample in enumerate(r for r in generate(job, generators=catalog, config=GenerateConfig())
                                       if isinstance(r, GeneratedSample)):
                masks.update({(sample.sample_id, tuple(o.bbox)): decode_png(o.mask_png) > 127
                              for o in sample.objects if o.mask_png})
                producer.send(source, sample)
                decision = example(SampleDecision, i, run_id).model_copy(update={
                    "sample": sample, "gate": Gate(decision="accepted" if i % 2 == 0 else "rejected", reason="r",
                                                   gate="t")})
                producer.send(source, decision)
                accepted += i % 2 == 0
    tables = DeltaTables(tmp_path / "tables")
    delta_runner([source], fn=rows_of, kafka=kafka, tables=tables, group=f"e-{run_id}",
              run_id=run_id).run(max_idle_s=2)
    out = tmp_path / fmt
    env = {**os.environ, "SDG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "SDG_STATE_DIR": str(tmp_path)}
    done = subprocess.run(sdg_command("export", str(out), "--format", fmt, "--decision", "accepted", "--run", run_id),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == accepted == 15 and manifest["samples_version"] == 0
    files = {p.stem: p for p in out.rglob("*.png")}
    if fmt == "parquet":
        table = pq.read_table(out / "samples.parquet")
        assert table.num_rows == accepted
        assert {r["sample_id"]: hashlib.sha256(r["image"]).hexdigest() for r in table.to_pylist()} \
            == manifest["image_sha256"]
        return
    assert {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()} == manifest["files_sha256"]
    assert manifest["image_sha256"].keys() == files.keys()  # the samples' own hashes: the lineage table's key
    for path in files.values():
        Image.open(path).verify()
    if fmt == "imagefolder":
        assert all(p.parent.name.isdigit() for p in files.values())
    elif fmt in ("yolo", "yolo-seg"):
        labels = sorted((out / "labels").glob("*.txt"))
        assert len(labels) == len(list((out / "images").glob("*.png"))) == accepted
        for path in labels:
            for line in path.read_text().split("\n")[:-1]:
                cls, *values = line.split()
                assert int(cls) >= 0 and all(0 <= float(v) <= 1 for v in values)
                assert len(values) == 4 if fmt == "yolo" else len(values) >= 8 and len(values) % 2 == 0
        assert "names:" in (out / "data.yaml").read_text()
    else:
        coco = json.loads((out / "annotations.json").read_text())
        ids = {i["id"]: i for i in coco["images"]}
        assert len(ids) == accepted and {a["image_id"] for a in coco["annotations"]} == set(ids)
        categories = {c["id"] for c in coco["categories"]}
        for a in coco["annotations"]:
            image = ids[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert a["category_id"] in categories and w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6
        assert len(coco["annotations"]) > accepted  # scenes carry several boxes each
        # re-read by pycocotools: every scene object's mask is the one the renderer drew
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            reread = COCO(str(out / "annotations.json"))
        names = {i["id"]: Path(i["file_name"]).stem for i in coco["images"]}
        masked = [a for a in coco["annotations"] if "segmentation" in a]
        assert len(masked) == len([k for k in masks if k[0] in names.values()]) > 0
        for a in masked:
            drawn = masks[(names[a["image_id"]], tuple(a["bbox"]))]
            assert (reread.annToMask(reread.anns[a["id"]]).astype(bool) == drawn).all()
