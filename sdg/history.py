"""Using the Delta history: SQL over the tables (DuckDB over their Arrow datasets), selecting and
re-creating samples for replay."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from models.generator import png_bytes

from schemas.tables import TABLES
from streams.delta_sink import DeltaTables


def query(tables: DeltaTables, sql: str, *, versions: dict[str, int] | None = None,
          params: list[Any] | None = None) -> Any:
    """Run ``sql`` with every existing table as a view of its name; returns a ``pyarrow.Table``.

    Args:
        versions: Read these tables at a past Delta version (time travel), e.g. ``{"lineage": 3}``.
    """
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    datasets = {}  # DuckDB does not keep the registered datasets alive: this does, until the query is done
    try:
        for name in TABLES:
            dt = tables.open(name)
            if dt is None:
                continue
            if versions and name in versions:
                dt = DeltaTable(tables.path(name), version=versions[name])
            datasets[name] = dt.to_pyarrow_dataset()
            con.register(name, datasets[name])
        return con.sql(sql, params=params or None).to_arrow_table()
    finally:
        con.close()


def select_samples(tables: DeltaTables, *, as_of: int | None = None, run: str | None = None,
                   generator: str | None = None, class_label: int | None = None,
                   decision: str | None = None) -> list[dict[str, Any]]:
    """Rows of the samples table (at Delta version ``as_of``), filtered, in the order they were generated.

    ``decision`` keeps the samples whose lineage has that decision (accepted, review, rejected).
    """
    where, params = ["TRUE"], []
    for column, value in (("s.run_id", run), ("s.generator", generator), ("s.class_label", class_label)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if decision is not None:
        where.append("s.sample_id IN (SELECT sample_id FROM lineage WHERE stage = ?)")
        params.append(decision)
    sql = f"SELECT s.* FROM samples s WHERE {' AND '.join(where)} ORDER BY s.created_ms, s.kafka_partition, s.kafka_offset"
    return query(tables, sql, versions={"samples": as_of} if as_of is not None else None, params=params).to_pylist()


def to_sample(row: dict[str, Any]) -> Any:
    """The ``GeneratedSample`` a samples row was written from (scene masks are not kept in the table)."""
    from schemas.records import Annotation, Conditioning, GeneratedSample

    return GeneratedSample(
        run_id=row["run_id"], created_ms=row["created_ms"], sample_id=row["sample_id"], job_id=row["job_id"] or "",
        generator=row["generator"], generator_version=row["generator_version"], seed=row["seed"],
        conditioning=Conditioning(class_label=row["class_label"], params=json.loads(row["params_json"] or "{}")),
        image_png=row["image_png"], image_sha256=row["image_sha256"], width=row["width"], height=row["height"],
        node_id=row["node_id"] or "", objects=[Annotation(**o) for o in json.loads(row["objects_json"] or "[]")])


def regenerate(rows: list[dict[str, Any]], catalog: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Re-create each sample from its provenance (generator, version, seed, conditioning).

    Returns the rows with the re-created image, and the ids whose bytes do not hash to what was stored.
    """
    out, mismatched = [], []
    for row in rows:
        model = catalog.get(row["generator"], row["generator_version"])
        params = json.loads(row["params_json"] or "{}")
        image = png_bytes(model([row["seed"]], [row["class_label"]], **params).images[0])
        digest = hashlib.sha256(image).hexdigest()
        if digest != row["image_sha256"]:
            mismatched.append(row["sample_id"])
        out.append({**row, "image_png": image, "image_sha256": digest})
    return out, mismatched
