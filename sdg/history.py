"""Using the Delta history: SQL over the tables (DuckDB over their Arrow datasets), selecting and
re-creating samples for replay."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from models.image import encode_image, png_bytes, sample_image
from schemas.errors import SdgError
from schemas.records import REAL
from schemas.tables import DERIVED_TABLES, NO_CLASS, TABLES, ChainBreak, chain_id, verify_chain
from streams.anchors import Anchors
from streams.delta_sink import DeltaTables

ExportFormat = Literal["imagefolder", "yolo", "yolo-seg", "coco", "parquet"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)


class HistoryError(SdgError):
    """A query, version or table of the Delta history that does not exist or does not work."""


def _at(tables: DeltaTables, name: str, version: int | None, *, latest: Any = None) -> Any:
    """Table ``name`` at Delta ``version`` (default: the latest); ``latest`` is the table if already open.

    Raises:
        HistoryError: no such table, or no such version of it.
    """
    from deltalake import DeltaTable

    latest = latest or tables.open(name)
    if latest is None:
        raise HistoryError(f"there is no {name} table in {tables.root} yet")
    if version is None or version == latest.version():
        return latest
    if not 0 <= version <= latest.version():
        raise HistoryError(f"{name} has versions 0..{latest.version()}, not {version}")
    try:
        return DeltaTable(tables.path(name), version=version, storage_options=tables.storage_options)
    except Exception as e:  # deltalake's errors have no common base: a vacuumed version, a missing log file
        raise HistoryError(f"{name} version {version} cannot be read: {e}") from e


def query(tables: DeltaTables, sql: str, *, versions: dict[str, int] | None = None,
          params: list[Any] | None = None) -> Any:
    """Run ``sql`` with every existing table as a view of its name; returns a ``pyarrow.Table``.

    Args:
        versions: Read these tables at a past Delta version (time travel), e.g. ``{"lineage": 3}``.
    """
    import duckdb

    unknown = sorted(set(versions or {}) - {*TABLES, *DERIVED_TABLES})
    if unknown:
        raise HistoryError(f"no tables named {unknown}; tables: {', '.join([*TABLES, *DERIVED_TABLES])}")
    con = duckdb.connect()
    datasets = {}  # DuckDB does not keep the registered datasets alive: this does, until the query is done
    try:
        for name in [*TABLES, *DERIVED_TABLES]:
            dt = tables.open(name)
            if dt is None:
                continue
            datasets[name] = _at(tables, name, (versions or {}).get(name), latest=dt).to_pyarrow_dataset()
            con.register(name, datasets[name])
        try:
            return con.sql(sql, params=params or None).to_arrow_table()
        except duckdb.Error as e:
            raise HistoryError(f"query failed: {e}") from e
    finally:
        con.close()


LAST_DECISION = (
    "(SELECT sample_id, stage, decision, label FROM lineage WHERE decision IS NOT NULL "
    "QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_ms DESC, kafka_offset DESC) = 1)")
"""A subquery of each sample's last decision in lineage (the gate's, or a person's: stage ``human``)."""


def select_samples(tables: DeltaTables, *, as_of: int | None = None, run: str | None = None,
                   generator: str | None = None, class_label: int | None = None,
                   decision: str | None = None) -> list[dict[str, Any]]:
    """Rows of the samples table (at Delta version ``as_of``), filtered, in the order they were generated.

    ``decision`` keeps the samples whose last decision is that one (accepted, review, rejected): a sample a person
    answered in the review queue is accepted with the person's label (its ``class_label`` here), or rejected; an
    ingested real image has the label it was decided with.
    """
    where, params = ["TRUE"], []
    for column, value in (("s.run_id", run), ("s.generator", generator), ("s.class_label", class_label)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    select, join = "s.*", ""
    if decision is not None:
        select = (f"s.* REPLACE (CASE WHEN d.stage = 'human' OR s.class_label = {NO_CLASS} THEN d.label "
                  "ELSE s.class_label END AS class_label)")  # a person's label; an ingested real image's labeler's
        join = f"JOIN {LAST_DECISION} d ON d.sample_id = s.sample_id"
        where.append("d.decision = ?")
        params.append(decision)
    sql = (f"SELECT {select} FROM samples s {join} WHERE {' AND '.join(where)} "
           "ORDER BY s.created_ms, s.kafka_partition, s.kafka_offset")
    return query(tables, sql, versions={"samples": as_of} if as_of is not None else None, params=params).to_pylist()


def to_sample(row: dict[str, Any]) -> Any:
    """The ``GeneratedSample`` a samples row was written from."""
    from schemas.records import Conditioning, GeneratedSample

    return GeneratedSample(
        run_id=row["run_id"], created_ms=row["created_ms"], sample_id=row["sample_id"], job_id=row["job_id"] or "",
        generator=row["generator"], generator_version=row["generator_version"], seed=row["seed"],
        conditioning=Conditioning(class_label=None if row["class_label"] == NO_CLASS else row["class_label"], params=json.loads(row["params_json"] or "{}")),
        image=row["image"], image_format=row.get("image_format") or "png", image_sha256=row["image_sha256"], width=row["width"], height=row["height"],
        channels=row.get("channels") or 1, node_id=row["node_id"] or "", objects=[_annotation(o) for o in json.loads(row["objects_json"] or "[]")])


def _annotation(o: dict[str, Any]) -> Any:
    """A scene object from the samples table (its mask from COCO RLE back to PNG, as the generator sent it)."""
    from models.scenes import unrle
    from schemas.records import Annotation

    mask = png_bytes(unrle(o["segmentation"]).astype("uint8") * 255) if "segmentation" in o else None
    return Annotation(class_label=o["class_label"], bbox=o["bbox"], mask_png=mask)


def regenerate(rows: list[dict[str, Any]], catalog: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Re-create each sample from its provenance (generator, version, seed, conditioning).

    Returns the rows with the re-created image, and the ids whose bytes do not hash to what was stored. An
    ingested real image has no generator to re-create it: its row comes back as it was stored.
    """
    out, mismatched = [], []
    for row in rows:
        if row["generator"] == REAL:
            out.append(row)
            continue
        model = catalog.get(row["generator"], row["generator_version"])
        params = json.loads(row["params_json"] or "{}")
        image, _ = encode_image(model([row["seed"]], [row["class_label"]], **params).images[0],
                                row.get("image_format") or "png")
        digest = hashlib.sha256(image).hexdigest()
        if digest != row["image_sha256"]:
            mismatched.append(row["sample_id"])
        out.append({**row, "image": image, "image_sha256": digest})
    return out, mismatched


def export(tables: DeltaTables, out: Path, *, fmt: str, rows: list[dict[str, Any]], filters: dict[str, Any],
           as_of: int | None) -> dict[str, Any]:
    """Write ``rows`` (from ``select_samples``) as a dataset training tools read directly, plus ``manifest.json``.

    Formats: ``imagefolder`` (``<class>/<id>.png``), ``yolo`` (``images/``, ``labels/`` with normalized
    boxes, ``data.yaml``), ``yolo-seg`` (the same with each object's mask outline as a normalized polygon),
    ``coco`` (``images/``, ``annotations.json``, masks as RLE), ``parquet`` (``samples.parquet``).
    A single-digit sample is one object covering the image; a scene has its objects' boxes and masks.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.scenes import unrle
    from schemas.tables import SAMPLES

    if fmt not in EXPORT_FORMATS:
        raise HistoryError(f"export formats: {', '.join(EXPORT_FORMATS)}; not {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted({o["class_label"] for r in rows for o in _objects(r)})
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    files: dict[str, str] = {}  # sample id → the SHA-256 of its exported PNG (raw pixels are exported as PNG)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES), out / "samples.parquet")
    for index, row in enumerate(rows if fmt != "parquet" else []):
        name = f"{row['sample_id']}.png"
        png = row["image"] if (row.get("image_format") or "png") == "png" else png_bytes(sample_image(to_sample(row)))
        files[row["sample_id"]] = hashlib.sha256(png).hexdigest()
        if fmt == "imagefolder":
            (out / str(row["class_label"])).mkdir(exist_ok=True)
            (out / str(row["class_label"]) / name).write_bytes(png)
            continue
        (out / "images").mkdir(exist_ok=True)
        (out / "images" / name).write_bytes(png)
        w, h = row["width"], row["height"]
        if fmt in ("yolo", "yolo-seg"):
            (out / "labels").mkdir(exist_ok=True)
            lines = [f"{classes.index(o['class_label'])} " + (_outline(o, w, h) if fmt == "yolo-seg" else
                     f"{(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
                     for o in _objects(row) for x, y, bw, bh in [o["bbox"]]]
            (out / "labels" / f"{row['sample_id']}.txt").write_text("\n".join(lines) + "\n")
        else:
            images.append({"id": index, "file_name": f"images/{name}", "width": w, "height": h})
            for o in _objects(row):
                masked = {"segmentation": o["segmentation"], "area": float(unrle(o["segmentation"]).sum())} \
                    if "segmentation" in o else {"area": o["bbox"][2] * o["bbox"][3]}
                annotations.append({"id": len(annotations), "image_id": index, "category_id": o["class_label"],
                                    "bbox": list(o["bbox"]), "iscrowd": 0, **masked})
    if fmt in ("yolo", "yolo-seg"):
        names = json.dumps([str(c) for c in classes])
        (out / "data.yaml").write_text(f"path: .\ntrain: images\nval: images\nnames: {names}\n")
    if fmt == "coco":
        categories = [{"id": c, "name": str(c), "supercategory": "digit"} for c in classes]
        (out / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                          "categories": categories}))
    dt = tables.open("samples")
    manifest = {"format": fmt, "count": len(rows), "filters": filters,
                "samples_version": as_of if as_of is not None else (dt.version() if dt is not None else None),
                "lineage_version": (lineage.version() if (lineage := tables.open("lineage")) is not None else None),
                "image_sha256": {r["sample_id"]: r["image_sha256"] for r in rows}, "files_sha256": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _outline(o: dict[str, Any], w: int, h: int) -> str:
    """YOLO's segment line after the class: the mask's outline normalized (the box's corners without a mask)."""
    from models.scenes import polygon, unrle

    x, y, bw, bh = o["bbox"]
    points = polygon(unrle(o["segmentation"])) if "segmentation" in o else []
    points = points or [(x, y), (x + bw, y), (x + bw, y + bh), (x, y + bh)]
    return " ".join(f"{min(max(px / w, 0.0), 1.0):.6f} {min(max(py / h, 0.0), 1.0):.6f}" for px, py in points)


def _objects(row: dict[str, Any]) -> list[dict[str, Any]]:
    objects = json.loads(row["objects_json"] or "[]")
    whole = [0.0, 0.0, float(row["width"]), float(row["height"])]  # a single digit: one box, the whole image
    return objects or [{"class_label": row["class_label"], "bbox": whole}]


@dataclass(frozen=True)
class Verified:
    """The lineage table at ``version``: its rows and chains, and the first broken row (None: it verifies)."""

    version: int
    rows: int
    chains: int
    broken: ChainBreak | None
    anchors: int | None = None  # anchor lines checked (None: not asked)
    unanchored: str | None = None  # what the anchors found wrong


def verify_lineage(tables: DeltaTables, *, as_of: int | None = None, anchors: Anchors | None = None) -> Verified:
    """Recompute the lineage hash chains at ``as_of`` (default: the latest version) against the recorded heads,
    and hold the table to every signed anchor (``anchors``, the latest version only)."""
    if anchors is not None and as_of is not None:
        raise ValueError("anchors hold the latest version; verify an older one without them")
    dt = _at(tables, "lineage", as_of)
    rows = dt.to_pyarrow_table().to_pylist()
    broken = verify_chain(rows, tables.recorded_heads(dt.version()))
    chains = len({chain_id(r) for r in rows})
    if anchors is None:
        return Verified(dt.version(), len(rows), chains, broken)
    return Verified(dt.version(), len(rows), chains, broken, len(anchors.read()), anchors.check(rows))
