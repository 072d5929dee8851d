"""The thermal processor as a faust app: per node state in a changelog-backed table.

One agent reads ``sdg.telemetry`` (keyed by node, so one worker owns each node): plant readings
go through the rules and the control law, generator load readings teach it the node's full rate.
A node's state is written to the table when an alert or a cap changed it, and otherwise at most
once a second (a restart loses at most a second of trend, never an alert or a cap).
Alerts go to ``sdg.alerts`` and caps to ``sdg.control``; an undecodable record goes to ``sdg.dlq``
with its bytes. A timer notices nodes whose sensors went silent and re-sends caps before their
time-to-live runs out (from the in-memory state: faust lets only agents change a table).
"""

from __future__ import annotations

from typing import Any

from processors.thermal import NodeState, ThermalRules, dump, load
from schemas.codec import RecordCodec
from schemas.errors import UndecodableRecord
from schemas.records import now_ms
from sdg.settings import Settings
from streams.catalog import topic as topic_spec
from streams.dead_letter import DLQ_TOPIC
from streams.faust_app import catalog_topic, create_changelogs, dead_letter, faust_app

SOURCE = "sdg.telemetry"


def thermal_app(settings: Settings, *, app_id: str = "sdg-thermal") -> Any:
    """Build the faust app (run it with ``faust.Worker(app).execute_from_commandline()``)."""
    codec = RecordCodec()
    partitions = topic_spec(SOURCE).partitions
    data_dir = settings.state_dir / "faust" / app_id
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    app = faust_app(app_id, kafka=settings.kafka_client, topics=settings.topics, data_dir=data_dir,
                    topic_partitions=partitions, consumer_auto_offset_reset="latest")  # old readings steer nothing
    source = app.topic(SOURCE, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    nodes = app.Table("thermal-nodes", default=None, key_type=str, value_type=str, partitions=partitions)
    outputs = {name: catalog_topic(app, name) for name in ("sdg.alerts", "sdg.control", DLQ_TOPIC)}
    rules = ThermalRules(settings.thermal, run_id=settings.run_id)
    cache: dict[str, NodeState] = {}
    saved: dict[str, int] = {}  # node → wall ms its state was last written to the table

    def state_of(node: str) -> NodeState:
        if node not in cache:
            cache[node] = load(nodes.get(node))
        return cache[node]

    async def publish(node: str, alerts: list[Any], throttle: Any) -> None:
        for alert in alerts:
            await outputs["sdg.alerts"].send(key=node, value=alert)
        if throttle is not None:
            await outputs["sdg.control"].send(key=node, value=throttle)

    @app.agent(source)
    async def watch(stream: Any) -> None:
        async for event in stream.events():
            try:
                reading = topic_spec(SOURCE).check(codec.decode(event.value))
                node, now = reading.node_id, now_ms()
                state = state_of(node)
                alerts, throttle = rules.on_reading(state, reading, now_ms=now)
            except (UndecodableRecord, ValueError, ArithmeticError) as e:
                await outputs[DLQ_TOPIC].send(key=event.message.key, value=dead_letter(
                    event, run_id=settings.run_id, step_id="thermal.watch", error=e,
                    max_record_bytes=settings.kafka_client.max_record_bytes))
                continue
            await publish(node, alerts, throttle)
            # the table gets what changed alerts or caps at once, the trends at most once a second per node
            if alerts or throttle is not None or now - saved.get(node, 0) >= 1000:
                nodes[node], saved[node] = dump(state), now

    @app.timer(interval=0.5)
    async def tick() -> None:
        now = now_ms()
        for node in list(nodes.keys()):
            state = state_of(node)
            # faust changes tables only from agents: the node's next reading saves what this changed
            await publish(node, *rules.on_tick(state, node, now_ms=now))

    @app.on_rebalance_complete.connect
    async def forget(*_: Any, **__: Any) -> None:
        cache.clear()  # nodes may have moved: read their state from the table again
        saved.clear()

    return app


def run_thermal(settings: Settings, *, app_id: str = "sdg-thermal") -> None:
    """Run the thermal processor in this process until SIGTERM/SIGINT; ``app_id`` is also its consumer group."""
    import faust

    app = thermal_app(settings, app_id=app_id)
    create_changelogs(app, kafka=settings.kafka_client, topics=settings.topics)
    faust.Worker(app, loglevel="WARN", quiet=True).execute_from_commandline()


__all__ = ["run_thermal", "thermal_app"]
