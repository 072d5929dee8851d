"""The generate processor: a GenerationJob in, its samples (and the worker's load reading) out."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from models.catalog import GeneratorCatalog
from models.generator import GeneratorError
from models.image import ImageFormat, channels_of, encode_image, png_bytes
from models.scenes import compose_generated, scene_size
from schemas.codec import Encoded, encode_alike
from schemas.identity import sample_ids
from schemas.records import Annotation, Conditioning, GeneratedSample, GenerationJob, Reading, Record


@dataclass(frozen=True)
class GenerateConfig:
    node_id: str = "node-0"
    max_count: int = 4096  # a job is one generation batch; `sdg plan` splits larger requests
    image_format: ImageFormat = "auto"  # raw pixels for small images, PNG for large ones (models.image)


def generate(job: GenerationJob, *, generators: GeneratorCatalog, config: GenerateConfig) -> list[Record]:
    """Generate every sample of ``job``; seeds ``seed_start .. seed_start + count - 1`` cycle through its classes.

    Raises:
        GeneratorError: an unknown generator or version, an absurd count, or a class the generator lacks
            (the runner sends the job to the dead-letter topic with this reason).
    """
    made = _Made(job, generators, config)
    return [*made.records(), made.load()]


def generate_encoded(job: GenerationJob, *, generators: GeneratorCatalog, config: GenerateConfig) -> list[Record | Encoded]:
    """``generate``, its samples already encoded (the processor's hot path: ``schemas.codec.encode_alike``, the bytes
    ``RecordCodec`` gives ``generate``'s records). Scenes stay typed records: each is validated against its image."""
    made = _Made(job, generators, config)
    if made.output.objects:
        return [*made.records(), made.load()]
    dumped = {label: c.model_dump() for label, c in made.conditioning.items()}  # once a class, as encode_alike takes it
    values = encode_alike(made.sample(0), {**made.own, "conditioning": [dumped[label] for label in made.classes]})
    return [Encoded(GeneratedSample, [i.encode() for i in made.ids], values), made.load()]


class _Made:
    """One job's samples generated, before they are records: what they share, and each one's own fields."""

    def __init__(self, job: GenerationJob, generators: GeneratorCatalog, config: GenerateConfig) -> None:
        if job.count > config.max_count:
            raise GeneratorError(f"job {job.job_id} asks for {job.count} samples; a job holds at most {config.max_count}")
        model = generators.get(job.generator, job.generator_version)
        self.job, self.config = job, config
        self.seeds = [job.seed_start + i for i in range(job.count)]
        self.classes = [job.classes[i % len(job.classes)] for i in range(job.count)]
        self.started = time.perf_counter()
        if job.params.get("mode") == "scene" and not getattr(model, "draws_scenes", False):  # (the renderer does)
            self.output = compose_generated(model, self.seeds, self.classes, size=scene_size(model.image_size), params={
                k: v for k, v in job.params.items() if k != "mode"})
        else:
            self.output = model(self.seeds, self.classes, **job.params)
        compute_ms = (time.perf_counter() - self.started) * 1000
        self.ids = sample_ids(model.name, model.version, self.seeds, self.classes, job.params)
        self.conditioning = {c: Conditioning(class_label=c, params=dict(job.params)) for c in set(self.classes)}
        encoded = [encode_image(image, config.image_format) for image in self.output.images]
        self.images, self.formats = [e[0] for e in encoded], [e[1] for e in encoded]
        self.hashes = [hashlib.sha256(image).hexdigest() for image in self.images]
        images = self.output.images
        self.shared: dict[str, Any] = dict(
            run_id=job.run_id, job_id=job.job_id, generator=model.name, generator_version=model.version,
            width=int(images.shape[2]), height=int(images.shape[1]), channels=channels_of(images),
            node_id=config.node_id, scheduler=self.output.scheduler, steps=self.output.steps,
            timings_ms={"batch_compute": compute_ms, "per_sample": compute_ms / job.count})

    @cached_property
    def own(self) -> dict[str, list[Any]]:
        """Each sample's own fields: a list per field."""
        return {"sample_id": self.ids, "seed": self.seeds, "conditioning": [self.conditioning[c] for c in self.classes],
                "image": self.images, "image_format": self.formats, "image_sha256": self.hashes}

    def fields(self, i: int) -> dict[str, Any]:
        return {name: column[i] for name, column in self.own.items()}

    def sample(self, i: int) -> GeneratedSample:
        """Sample ``i``, validated."""
        objects = [Annotation(class_label=o.class_label, bbox=list(o.bbox), mask_png=png_bytes(o.mask.astype("uint8") * 255))
                   for o in (self.output.objects[i] if self.output.objects else [])]
        return GeneratedSample(**self.shared, objects=objects, **self.fields(i))

    def records(self) -> list[GeneratedSample]:
        if self.output.objects:
            return [self.sample(i) for i in range(self.job.count)]
        # siblings differ only in fields made alike (ids of one generator, seeds from a valid start, validated
        # conditionings, images of one shape, hashes): a copy of the first, validated, is as valid as a validation
        first = self.sample(0)
        return [first, *(first.model_copy(update=self.fields(i)) for i in range(1, self.job.count))]

    def load(self) -> Reading:
        """The worker's load reading for this job (its whole time so far)."""
        total_ms = (time.perf_counter() - self.started) * 1000
        return Reading(run_id=self.job.run_id, node_id=self.config.node_id, source="generator",
                       ts_ms=int(time.time() * 1000), rate_sps=self.job.count / (total_ms / 1000), batch_ms=total_ms)


def plan_jobs(
    generator: str,
    *,
    classes: list[int],
    per_class: int,
    seed: int,
    run_id: str,
    version: str | None = None,
    job_size: int = 256,
    params: dict[str, str] | None = None,
) -> list[GenerationJob]:
    """Split a request into jobs of at most ``job_size`` samples.

    Seeds are ``seed * 10**9 + i``: the same plan seed always names the same samples, so a
    re-planned or re-delivered job never creates new identities.
    """
    if per_class < 1 or job_size < 1 or not classes:
        raise GeneratorError("a plan needs classes, per_class >= 1 and job_size >= 1")
    total = per_class * len(classes)
    base = seed * 10**9
    jobs = []
    for k, start in enumerate(range(0, total, job_size)):
        count = min(job_size, total - start)
        # each job starts where the class cycle of the whole plan is at `start`
        rotated = [classes[(start + i) % len(classes)] for i in range(len(classes))]
        jobs.append(GenerationJob(run_id=run_id, job_id=f"{generator}-{seed}-{k:05d}", generator=generator,
                                  generator_version=version, classes=rotated, seed_start=base + start, count=count,
                                  params=dict(params or {})))
    return jobs
