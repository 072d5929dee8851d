"""faust-streaming, wired from settings, runs a stateful agent with a table against the real broker."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from schemas.examples import example
from schemas.records import Reading
from streams.config import KafkaConfig, TopicConfig
from streams.faust_app import catalog_topic, faust_app
from streams.producer import RecordProducer


def test_agent_with_table_counts_catalog_records(kafka: KafkaConfig, run_id: str, tmp_path: Path) -> None:
    import faust

    with RecordProducer(kafka) as producer:
        for i in range(40):
            producer.send("sdg.telemetry", example(Reading, i, run_id))

    app = faust_app(f"test-{run_id}", kafka=kafka, topics=TopicConfig(), data_dir=tmp_path, topic_partitions=6)
    assert app.conf.web_enabled is False
    telemetry = catalog_topic(app, "sdg.telemetry")
    readings = app.Table("readings_per_node", default=int, partitions=6)
    seen: list[Reading] = []

    @app.agent(telemetry)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for reading in stream:
            if reading.run_id == run_id:
                readings[reading.node_id] += 1
                seen.append(reading)

    # its own stdout: faust's spinner writes there at exit, after pytest has closed the captured one
    worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False, stdout=io.StringIO())

    @app.task
    async def stop_when_done() -> None:
        for _ in range(600):
            if len(seen) >= 40:
                break
            await asyncio.sleep(0.1)
        await worker.stop()

    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    assert len(seen) == 40 and all(isinstance(r, Reading) for r in seen)
    assert {node: readings[node] for node in sorted(readings.keys())} == {f"example-node-{n}": 10 for n in range(4)}
