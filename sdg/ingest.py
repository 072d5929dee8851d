"""``sdg ingest``: real, unlabeled images into the stream, as samples of the generator ``real``.

Each image of a folder (any depth: ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``) or each row of a Parquet file
or folder or a Delta table (its image column) becomes a ``GeneratedSample`` on ``sdg.samples.raw``: fitted to the
pipeline's image size and channels, with no class asked for (``conditioning.class_label`` is null) and its
provenance in ``conditioning.params``: the source, the file path or the table row, and the SHA-256 of the
original bytes. From there it is labeled, gated, recorded and exported exactly like a synthetic sample; its id
is derived from the source and the original bytes, so ingesting the same image again names the same sample.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.reference import read_columns
from schemas.errors import SdgError
from schemas.records import REAL, Conditioning, GeneratedSample
from sdg.settings import Settings

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Source:
    """Encoded images with where each came from (``path`` or ``row``)."""

    name: str  # the resolved folder or table
    items: list[tuple[dict[str, str], bytes]]

    @property
    def version(self) -> str:
        """The ``generator_version`` of its samples: a hash of the source's name."""
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]


def read_source(path: Path, *, image_column: str = "image", limit: int | None = None) -> Source:
    """The images of a folder, a Parquet file or folder, or a Delta table (only its ``image_column``)."""
    path = path.expanduser().resolve()
    if path.is_dir() and not (path / "_delta_log").is_dir() and not any(path.glob("*.parquet")):
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())[:limit]
        if not files:
            raise SdgError(f"no {'/'.join(SUFFIXES)} images under {path}")
        return Source(str(path), [({"path": str(p.relative_to(path))}, p.read_bytes()) for p in files])
    try:
        table = read_columns(path, [image_column])
    except (OSError, KeyError, ValueError) as e:
        raise SdgError(f"{path}: not an image folder, and no table with a column {image_column!r}: {e}") from e
    values = table.column(image_column).to_pylist()[:limit]
    return Source(str(path), [({"row": str(i)}, bytes(v)) for i, v in enumerate(values) if v is not None])


@dataclass
class Ingested:
    samples: list[GeneratedSample] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path or row: why"


def real_samples(source: Source, *, size: int, channels: int, run_id: str, node_id: str) -> Ingested:
    """One sample per readable image, at ``size`` × ``size`` with ``channels``; unreadable ones are listed."""
    from PIL import Image, UnidentifiedImageError

    from models.image import encode_image
    from models.runtime import fit_image

    out = Ingested()
    for where, data in source.items:
        try:
            with Image.open(io.BytesIO(data)) as file:
                pixels = np.asarray(file.convert("L" if channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            out.unreadable.append(f"{next(iter(where.values()))}: {e}")
            continue
        image, image_format = encode_image(fit_image(pixels, size, channels))
        original = hashlib.sha256(data).hexdigest()
        sample_id = f"{REAL}-" + hashlib.sha256(f"{source.name}\x00{original}".encode()).hexdigest()[:24]
        out.samples.append(GeneratedSample(
            run_id=run_id, sample_id=sample_id, job_id="", generator=REAL, generator_version=source.version,
            seed=len(out.samples), conditioning=Conditioning(class_label=None, params={
                "source": source.name, **where, "original_sha256": original}),
            image=image, image_format=image_format, image_sha256=hashlib.sha256(image).hexdigest(), width=size,
            height=size, channels=channels, node_id=node_id))
    return out


def ingest(settings: Settings, path: Path, *, image_column: str = "image", limit: int | None = None) -> Iterator[
        GeneratedSample | str]:
    """Read ``path`` and publish its images on ``sdg.samples.raw``; yields each unreadable image's reason, then each
    sample as it is sent."""
    from streams.producer import RecordProducer

    reference = settings.reference()
    found = real_samples(read_source(path, image_column=image_column, limit=limit), size=reference.image_size,
                         channels=reference.channels, run_id=settings.run_id, node_id=settings.worker.node_id)
    yield from found.unreadable
    with RecordProducer(settings.kafka_client) as producer:
        for sample in found.samples:
            producer.send("sdg.samples.raw", sample)
            yield sample
