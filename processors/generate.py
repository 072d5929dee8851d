"""The generate processor: a GenerationJob in, its samples (and the worker's load reading) out."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from models.catalog import GeneratorCatalog
from models.generator import GeneratorError
from models.image import ImageFormat, channels_of, encode_image, png_bytes
from models.scenes import compose_generated, scene_size
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
    if job.count > config.max_count:
        raise GeneratorError(f"job {job.job_id} asks for {job.count} samples; a job holds at most {config.max_count}")
    model = generators.get(job.generator, job.generator_version)
    seeds = [job.seed_start + i for i in range(job.count)]
    classes = [job.classes[i % len(job.classes)] for i in range(job.count)]
    started = time.perf_counter()
    if job.params.get("mode") == "scene" and not getattr(model, "draws_scenes", False):  # (the renderer does)
        output = compose_generated(model, seeds, classes, size=scene_size(model.image_size), params={
            k: v for k, v in job.params.items() if k != "mode"})
    else:
        output = model(seeds, classes, **job.params)
    compute_ms = (time.perf_counter() - started) * 1000
    samples: list[Record] = []
    ids = sample_ids(model.name, model.version, seeds, classes, job.params)
    conditioning = {c: Conditioning(class_label=c, params=dict(job.params)) for c in set(classes)}
    timings = {"batch_compute": compute_ms, "per_sample": compute_ms / job.count}
    height, width, channels = int(output.images.shape[1]), int(output.images.shape[2]), channels_of(output.images)
    first: GeneratedSample | None = None  # the first sample without objects, validated
    for i, (seed, label) in enumerate(zip(seeds, classes)):
        image, image_format = encode_image(output.images[i], config.image_format)
        objects = [
            Annotation(class_label=o.class_label, bbox=list(o.bbox), mask_png=png_bytes(o.mask.astype("uint8") * 255))
            for o in (output.objects[i] if output.objects else [])
        ]
        own: dict[str, Any] = {"sample_id": ids[i], "seed": seed, "conditioning": conditioning[label],
                               "image": image, "image_format": image_format,
                               "image_sha256": hashlib.sha256(image).hexdigest()}
        if first is not None and not objects:
            # its siblings differ only in fields made alike (ids of one generator, seeds from a valid start,
            # validated conditionings, images of one shape, hashes): a copy is as valid as a validation
            samples.append(first.model_copy(update=own))
            continue
        sample = GeneratedSample(run_id=job.run_id, job_id=job.job_id, generator=model.name,
                                 generator_version=model.version, width=width, height=height, channels=channels,
                                 node_id=config.node_id, scheduler=output.scheduler, steps=output.steps,
                                 timings_ms=timings, objects=objects, **own)
        first = first if objects else sample
        samples.append(sample)
    total_ms = (time.perf_counter() - started) * 1000
    load = Reading(run_id=job.run_id, node_id=config.node_id, source="generator", ts_ms=int(time.time() * 1000),
                   rate_sps=job.count / (total_ms / 1000), batch_ms=total_ms)
    return [*samples, load]


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
