"""Anchors: the lineage sink signs the chain heads of every commit into a log outside the tables, and
``sdg verify --anchors`` catches a table rewritten with recomputed chains, which the chains alone cannot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from pydantic import SecretStr

from processors.lineage import rows_of
from schemas.examples import example_sample
from schemas.tables import GENESIS, LINEAGE, chain_id, row_hash
from sdg.history import verify_lineage
from sdg.settings import Settings
from streams.config import RunnerConfig
from streams.delta_sink import DeltaSink, SinkConfig
from streams.memory import MemoryBroker
from streams.runtime import Step
from tests.conftest import REPO, sdg_command


def _sink(settings: Settings, run_id: str, n: int = 30) -> None:
    broker = MemoryBroker()
    for i in range(n):
        broker.send("sdg.samples.raw", example_sample(i, run_id))
    sink = DeltaSink(fn=rows_of, tables=settings.delta_tables(), group="g", config=SinkConfig(batch_rows=10),
                     anchors=settings.anchors())
    broker.runner(Step("lineage", ("sdg.samples.raw",), sink, kind="sink"), group="g",
                  config=RunnerConfig(batch_size=5, poll_timeout_s=0.01)).run(max_idle_s=0.3)


def _rechained(rows: list[dict], edit_seq: int) -> list[dict]:
    """The rows with one field edited and every chain recomputed, as someone who can rewrite the table would."""
    rows = sorted(rows, key=lambda r: (chain_id(r), r["seq"]))
    previous: dict[str, str] = {}
    for row in rows:
        if row["seq"] == edit_seq:
            row["seed"] += 1
        prev = previous.get(chain_id(row), GENESIS)
        row["prev_hash"], row["row_hash"] = prev, row_hash(row, prev)
        previous[chain_id(row)] = row["row_hash"]
    return rows


def _verify(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SDG_STATE_DIR": str(state)}
    return subprocess.run(sdg_command("verify", *args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_table_rewritten_with_recomputed_chains_fails_its_anchors(tmp_path: Path, run_id: str) -> None:
    settings = Settings(state_dir=tmp_path, run_id=run_id)
    _sink(settings, run_id)
    anchors = settings.anchors()
    assert len(anchors.read()) >= 3  # one signed line per lineage commit
    good = verify_lineage(settings.delta_tables(), anchors=anchors)
    assert good.broken is None and good.unanchored is None and good.rows == 30
    assert (tmp_path / "anchors" / "key").stat().st_mode & 0o077 == 0

    path = settings.delta_tables().path("lineage")
    rows = _rechained(DeltaTable(path).to_pyarrow_table().to_pylist(), edit_seq=3)
    write_deltalake(path, pa.Table.from_pylist(rows, schema=LINEAGE), mode="overwrite")
    rewritten = verify_lineage(settings.delta_tables())
    assert rewritten.broken is None  # the chains alone are fooled: they were recomputed
    caught = verify_lineage(settings.delta_tables(), anchors=anchors)
    assert caught.unanchored is not None and "rewritten" in caught.unanchored
    cli = _verify(tmp_path, "--anchors")
    assert cli.returncode == 1 and "the table was rewritten" in cli.stdout, cli.stdout + cli.stderr
    assert _verify(tmp_path).returncode == 0  # without --anchors it cannot tell


def test_forged_edited_or_removed_anchors_are_caught(tmp_path: Path, run_id: str) -> None:
    settings = Settings(state_dir=tmp_path, run_id=run_id)
    _sink(settings, run_id)
    log = settings.anchors().path
    lines = log.read_text().splitlines()
    ok = _verify(tmp_path, "--anchors")
    assert ok.returncode == 0 and f"held to {len(lines)} signed anchors" in ok.stdout, ok.stdout + ok.stderr

    first = json.loads(lines[0])
    cid = next(iter(first["heads"]))
    first["heads"][cid][1] = "f" * 64  # a forger's hash, without the key
    log.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    forged = verify_lineage(settings.delta_tables(), anchors=settings.anchors())
    assert forged.unanchored is not None and "not signed" in forged.unanchored

    log.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # a line removed from the middle
    removed = verify_lineage(settings.delta_tables(), anchors=settings.anchors())
    assert removed.unanchored is not None and "removed or reordered" in removed.unanchored

    log.write_text("\n".join(lines) + "\n")
    other_key = Settings(state_dir=tmp_path, run_id=run_id, sink=SinkConfig(anchor_key=SecretStr("another key, 16+ chars")))
    assert "not signed" in (verify_lineage(settings.delta_tables(), anchors=other_key.anchors()).unanchored or "")
