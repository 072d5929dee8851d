"""`sdg demo` (scaled down) on the session broker: every topic gets its records, bad ones reach the DLQ."""

from __future__ import annotations

import io

from rich.console import Console

from sdg.demo import POISON, run_demo
from sdg.settings import Settings
from streams.catalog import CATALOG
from streams.config import KafkaConfig


def test_demo_reports_what_went_where(kafka: KafkaConfig, run_id: str) -> None:
    settings = Settings(kafka=KafkaConfig(bootstrap_servers=kafka.bootstrap_servers), run_id=run_id)
    assert not settings.embedded
    out = io.StringIO()
    growth = run_demo(settings, records_per_topic=20, console=Console(file=out, width=200))
    bad = len(POISON) + 1  # plus one record of the wrong type
    for name in CATALOG:
        expected = 20 + (bad if name in ("sdg.samples.raw", "sdg.dlq") else 0)
        assert growth[name] == expected, name
    assert growth["sdg.replay.demo"] == 20
    text = out.getvalue()
    assert "what went where" in text and "20 relayed to sdg.replay.demo, 3 to sdg.dlq" in text
    assert text.count("dead letter from sdg.samples.raw") == bad
