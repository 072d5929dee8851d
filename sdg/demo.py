"""``sdg demo``: records through every topic and a pass-through processor, then what went where."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from processors.passthrough import passthrough
from schemas.examples import example, example_sample
from schemas.records import GeneratedSample
from sdg.settings import Settings
from streams import admin
from streams.catalog import CATALOG, REPLAY_PREFIX
from streams.catalog import topic as topic_spec
from streams.producer import RecordProducer
from streams.runner import DLQ_TOPIC, Runner, Step
from streams.subscribe import subscribe

# bad input the pass-through must route to the dead-letter topic, each with a reason
POISON = {
    b"not-avro": "plain bytes",
    b"\xc3\x01" + b"\x00" * 8 + b"body": "unknown writer schema",
}


def run_demo(settings: Settings, *, records_per_topic: int, console: Console) -> dict[str, int]:
    """Run the demo and return the log growth per topic."""
    broker = settings.embedded_broker() if settings.embedded else None
    started_here = broker is not None and broker.pid() is None
    if broker is not None:
        with console.status("starting the embedded Apache Kafka broker…"):
            status = broker.start()
        console.print(f"broker: Apache Kafka (KRaft) pid {status.pid} on {status.bootstrap}, data in {status.data_dir}")
    kafka = settings.kafka_client
    run_id = settings.run_id
    try:
        created = admin.create_topics(kafka, settings.topics)
        console.print(f"topics: {sum(v == 'created' for v in created.values())} created, "
                      f"{sum(v == 'exists' for v in created.values())} already there")
        relay = f"{REPLAY_PREFIX}demo"
        admin.create_topics(kafka, settings.topics, [topic_spec(relay)])
        names = [*CATALOG, relay]
        before = admin.log_end_offsets(kafka, names)
        group = f"sdg-demo-{run_id}"
        admin.start_group_at_end(kafka, group, ["sdg.samples.raw"])  # the pass-through reads this run only

        published: dict[str, int] = {}
        with RecordProducer(kafka) as producer, Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing", total=records_per_topic * len(CATALOG))
            for spec in CATALOG.values():
                for i in range(records_per_topic):
                    record = example_sample(i, run_id) if spec.value is GeneratedSample else example(spec.value, i, run_id)
                    producer.send(spec.name, record)
                    progress.advance(task)
                published[spec.name] = records_per_topic
            wrong_type = producer.codec.encode(example(CATALOG["sdg.requests"].value, 0, run_id))
            for bad in [*POISON, wrong_type]:
                producer.send_bytes("sdg.samples.raw", b"poison", bad)
        published["sdg.samples.raw"] += len(POISON) + 1

        step = Step("passthrough", "sdg.samples.raw", passthrough, relay)
        runner = Runner(step, kafka=kafka, config=settings.runner, group=group, run_id=run_id)
        total = published["sdg.samples.raw"]
        thread = threading.Thread(target=runner.run, kwargs={"max_idle_s": 30}, daemon=True)
        with console.status("pass-through processor: sdg.samples.raw → " + relay):
            thread.start()
            while thread.is_alive() and runner.stats.consumed < total:
                time.sleep(0.1)
            runner.stop()
            thread.join()

        after = admin.log_end_offsets(kafka, names)
        growth = {name: after[name] - before[name] for name in names}
        table = Table("topic", "published", "log grew by", "read by pass-through", title=f"what went where ({run_id})")
        for name in names:
            read = runner.stats.consumed if name == "sdg.samples.raw" else 0
            table.add_row(name, str(published.get(name, "")), str(growth[name]), str(read or ""))
        console.print(table)
        console.print(f"pass-through: {runner.stats.consumed} read, {runner.stats.produced[relay]} relayed to {relay}, "
                      f"{sum(runner.stats.dead_letters.values())} to {DLQ_TOPIC}")
        for received in subscribe(DLQ_TOPIC, kafka=kafka, from_beginning=True, idle_timeout_s=3):
            letter = received.record
            if letter.run_id == run_id and letter.step_id != "example":
                console.print(f"  dead letter from {letter.topic}[{letter.partition}]@{letter.offset} "
                              f"({len(letter.original_value or b'')} bytes kept): {letter.error}")
        return growth
    finally:
        if started_here and broker is not None:
            broker.stop()
            console.print("broker stopped")
