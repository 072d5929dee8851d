"""The quality processor as a faust app: windowed state per generator in tables, recovered from changelogs.

Two agents:

- ``route`` reads ``sdg.samples.labeled`` (raw bytes: a record it cannot decode goes to ``sdg.dlq``
  with its bytes), decides multi-object scenes at once, and re-keys every other sample by generator and version
  onto an internal topic, so one worker owns each generator version's windows.
- ``judge`` keeps each generator's open window in the ``quality-rows`` table (one row per sample:
  its record bytes; one row per closed window the sliding window still spans: its candidates' features) and a
  small header in ``quality-heads``. When a window is full it scores and decides it; a timer sends
  a tick for windows older than ``max_window_s``, so a generator that stops still gets judged.

In memory, a generator's windows are a ``GeneratorWindows`` with running moments updated per sample;
after a restart they are rebuilt from the table (the same per-sample scoring and updates, replayed).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np

from models.generator import decode_png
from processors.quality import Closed, GeneratorWindows, QualityJudge, sink_of
from schemas.codec import RecordCodec
from schemas.errors import UndecodableRecord
from schemas.records import NAME_PATTERN, LabeledSample, now_ms
from sdg.settings import Settings
from streams import admin
from streams.catalog import TopicSpec
from streams.catalog import topic as topic_spec
from streams.dead_letter import DLQ_TOPIC, ENVELOPE_BYTES
from streams.errors import RecordTooLarge
from streams.faust_app import catalog_topic, create_changelogs, dead_letter, faust_app

SOURCE = "sdg.samples.labeled"
TICK = b""


def internal_topic(app_id: str) -> str:
    return f"{app_id}-by-generator"


def _pack_closed(closed: Closed) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=closed.features, labels=closed.labels, sample_ids=np.array(sorted(closed.sample_ids)))
    return buf.getvalue()


def _unpack_closed(data: bytes, dim: int) -> Closed:
    from models.quality import RunningMoments

    arrays = np.load(io.BytesIO(data))
    return Closed(RunningMoments(dim).update(arrays["features"]), arrays["features"], arrays["labels"],
                  frozenset(str(i) for i in arrays["sample_ids"]))


def quality_app(settings: Settings, judge: QualityJudge, *, app_id: str = "sdg-quality") -> Any:
    """Build the faust app (run it with ``faust.Worker(app).execute_from_commandline()``)."""
    codec = RecordCodec()
    partitions = topic_spec(SOURCE).partitions
    data_dir = settings.state_dir / "faust" / app_id
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    app = faust_app(app_id, kafka=settings.kafka_client, topics=settings.topics, data_dir=data_dir,
                    topic_partitions=partitions)
    source = app.topic(SOURCE, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    by_generator = app.topic(internal_topic(app_id), key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=partitions, internal=True)
    rows = app.Table("quality-rows", default=None, key_type=str, value_type=bytes,
                     partitions=partitions)
    heads = app.Table("quality-heads", default=None, key_type=str, value_type=str,
                      partitions=partitions)
    outputs = {name: catalog_topic(app, name) for name in ("sdg.samples.scored", "sdg.samples.accepted",
                                                          "sdg.samples.review", "sdg.samples.rejected",
                                                          "sdg.quality", DLQ_TOPIC)}
    max_bytes = settings.kafka_client.max_record_bytes
    # a sample's scored and decided copies add a few hundred bytes to it: a larger one has no room for them
    max_input = max_bytes - ENVELOPE_BYTES
    size, channels = judge.reference.image_size, judge.reference.channels
    blank = np.zeros((1, size, size) if channels == 1 else (1, size, size, channels), np.uint8)
    dim = int(judge.extractor.run(blank).shape[1])  # type: ignore[attr-defined]
    cache: dict[str, GeneratorWindows] = {}
    slide = settings.quality.slide

    async def publish(records: list[Any]) -> None:
        for record in records:
            await outputs[sink_of(record)].send(key=record.key(), value=record)

    async def reject(event: Any, step_id: str, error: Exception) -> None:
        await outputs[DLQ_TOPIC].send(key=event.message.key, value=dead_letter(
            event, run_id=settings.run_id, step_id=step_id, error=error, max_record_bytes=max_bytes))

    def labeled(data: bytes | None) -> LabeledSample:
        if data is not None and len(data) > max_input:
            raise RecordTooLarge(f"a {len(data):,}-byte record leaves its scored and decided copies no room under "
                                 f"the {max_bytes:,}-byte limit (SDG_KAFKA__MAX_RECORD_BYTES)")
        return topic_spec(SOURCE).check(codec.decode(data))  # type: ignore[return-value]

    @app.agent(source)
    async def route(stream: Any) -> None:
        async for event in stream.events():
            try:
                record = labeled(event.value)
                sample = record.sample
                image = decode_png(sample.image_png, shape=(sample.height, sample.width), channels=sample.channels)
                if image.shape[0] != image.shape[1] or (not sample.objects and image.shape[0] != size):
                    raise ValueError(f"a {image.shape[1]}×{image.shape[0]} image; the reference set is {size}×{size}")
                if sample.channels != channels:
                    raise ValueError(f"a {sample.channels}-channel image; the reference set has {channels}")
                decided = judge.decide_scene(record) if record.sample.objects else None
            except (UndecodableRecord, ValueError, RecordTooLarge) as e:
                await reject(event, "quality.route", e)
                continue
            if decided is not None:
                await publish(decided)
            else:
                key = f"{record.sample.generator}@{record.sample.generator_version}"
                await by_generator.send(key=key.encode(), value=event.value)

    def windows_of(generator: str) -> GeneratorWindows:
        """The generator's windows from the cache, or rebuilt from the tables (after a start or rebalance)."""
        if generator in cache:
            return cache[generator]
        name, version = generator.split("@", 1)
        windows = GeneratorWindows(name, dim, slide, version=version)
        head = heads.get(generator)
        if head is not None:
            state = json.loads(head)
            windows.seq, opened, count = state["seq"], state["opened_ms"], state["count"]
            for back in range(slide - 1, 0, -1):
                closed = rows.get(f"{generator}|h|{windows.seq - back}")
                if closed is not None:
                    windows.remember(_unpack_closed(closed, dim))
            records = [codec.decode(rows[f"{generator}|{windows.seq}|{i}"]) for i in range(count)]
            for item in judge.assess(records, windows.window_id()) if records else []:  # type: ignore[arg-type]
                windows.add(item, opened)
        cache[generator] = windows
        return windows

    def save_head(generator: str, windows: GeneratorWindows) -> None:
        heads[generator] = json.dumps({"seq": windows.seq, "opened_ms": windows.opened_ms,
                                       "count": len(windows.pending)})

    def generator_of(key: Any) -> str:
        name, _, version = key.decode(errors="replace").partition("@") if isinstance(key, bytes) else ("", "", "")
        if not (re.match(NAME_PATTERN, name) and re.match(NAME_PATTERN, version)):
            raise UndecodableRecord(f"key {key!r} is not <generator>@<version>")
        return f"{name}@{version}"

    @app.agent(by_generator)
    async def judge_windows(stream: Any) -> None:
        async for event in stream.events():
            try:  # the internal topic is a topic like any other: anyone who can write to it is a producer
                generator = generator_of(event.key)
                windows = windows_of(generator)
                item = None if event.value == TICK else judge.assess([labeled(event.value)], windows.window_id())[0]
            except (UndecodableRecord, ValueError, RecordTooLarge) as e:
                await reject(event, "quality.judge", e)
                continue
            if item is not None:
                rows[f"{generator}|{windows.seq}|{len(windows.pending)}"] = event.value
                windows.add(item, now_ms())
            if windows.pending and judge.due(windows, now_ms()):
                seq, count = windows.seq, len(windows.pending)
                await publish(judge.close(windows))
                for i in range(count):
                    del rows[f"{generator}|{seq}|{i}"]
                if slide > 1:  # the sliding window spans this one: keep it, drop the one that left the span
                    rows[f"{generator}|h|{seq}"] = _pack_closed(windows.history[-1])
                    if f"{generator}|h|{seq - slide + 1}" in rows:
                        del rows[f"{generator}|h|{seq - slide + 1}"]
            save_head(generator, windows)

    @app.timer(interval=1.0)
    async def tick() -> None:
        now = now_ms()
        for generator, head in list(heads.items()):
            state = json.loads(head)
            if state["count"] and now - state["opened_ms"] >= settings.quality.max_window_s * 1000:
                await by_generator.send(key=generator.encode(), value=TICK)

    return app


def run_quality(settings: Settings, *, app_id: str = "sdg-quality") -> None:
    """Run the quality processor in this process until SIGTERM/SIGINT; ``app_id`` is also its consumer group."""
    import faust

    from sdg.labeling import load_judge

    # aiokafka drops a subscribed topic that does not exist yet and never comes back to it, so the
    # internal topic is created before the worker subscribes
    spec = TopicSpec(internal_topic(app_id), "generator", LabeledSample, topic_spec(SOURCE).partitions,
                     "the quality processor's samples, keyed by generator", {"retention.ms": str(24 * 3600 * 1000)})
    admin.create_topics(settings.kafka_client, settings.topics, [spec])
    app = quality_app(settings, load_judge(settings), app_id=app_id)
    create_changelogs(app, kafka=settings.kafka_client, topics=settings.topics)
    faust.Worker(app, loglevel="WARN", quiet=True).execute_from_commandline()


__all__ = ["quality_app", "run_quality"]

