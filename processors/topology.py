"""The topology as data: one ``ProcessorSpec`` per stream processor.

What each processor reads, what it writes (record types; the catalog says which topics carry them), its
step kind and its state key. ``sdg run``, the OpenLineage run events, the compose file (checked by a test)
and the README's processor table read this one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from schemas.records import (
    GeneratedSample,
    LabeledSample,
    QualityWindow,
    Reading,
    Record,
    SampleDecision,
    ScoredSample,
    ThermalAlert,
    Throttle,
)
from schemas.tables import TABLES
from streams.catalog import LINEAGE_TOPICS, topics_of
from streams.runtime import Kind


@dataclass(frozen=True)
class ProcessorSpec:
    """One processor: ``sdg run <name>`` runs it as step ``name`` of the one runtime."""

    name: str
    kind: Kind
    sources: tuple[str, ...]
    outputs: tuple[type[Record], ...]
    summary: str
    state_key: str | None = None  # stateful: what the state is kept per
    side_inputs: tuple[str, ...] = ()  # topics read besides the step's sources (a generator's rate caps)
    overrides: tuple[Literal["source", "sink"], ...] = ()  # what `sdg run --source/--sink` may replace
    tables: tuple[str, ...] = ()  # the Delta tables it writes

    def output_topics(self) -> list[str]:
        """The catalog topics of the processor's output types."""
        return [name for kind in self.outputs for name in topics_of(kind)]


SPECS = (
    ProcessorSpec("passthrough", "map", (), (), "copies --source to --sink as it is (relays, replays)",
                  overrides=("source", "sink")),
    ProcessorSpec("generate", "map", ("sdg.requests",), (GeneratedSample, Reading),
                  "generation jobs → samples, and the node's load readings; obeys its rate caps",
                  side_inputs=("sdg.control",), overrides=("source",)),
    ProcessorSpec("label", "batch_map", ("sdg.samples.raw",), (LabeledSample,),
                  "labels each batch of samples with the INT8 ONNX labeler", overrides=("source", "sink")),
    ProcessorSpec("quality", "stateful", ("sdg.samples.labeled",), (ScoredSample, SampleDecision, QualityWindow),
                  "scores windows per generator against the real reference and decides every sample",
                  state_key="generator@version"),
    ProcessorSpec("review", "stateful", ("sdg.samples.review", "sdg.labels.human"), (SampleDecision,),
                  "joins people's answers (the console) to the review queue: accepted or rejected, label_source human",
                  state_key="sample_id"),
    ProcessorSpec("thermal", "stateful", ("sdg.telemetry",), (ThermalAlert, Throttle),
                  "thermal rules and the control law per node: alerts and rate caps", state_key="node_id"),
    ProcessorSpec("plant", "map", ("sdg.telemetry", "sdg.plant.faults"), (Reading,),
                  "the modeled coolant/power plant of SDG_PLANT__NODES: load and faults in, readings out"),
    ProcessorSpec("lineage", "sink", LINEAGE_TOPICS, (),
                  "every stage, window, reading, alert and cap → the Delta tables, exactly once per table",
                  tables=tuple(TABLES)),
    ProcessorSpec("train", "sink", ("sdg.samples.accepted",), (),
                  "accepted samples → an INT8 ONNX edge model (model registry) after every SDG_TRAIN__EVERY new ones",
                  tables=("models",)),
)

PROCESSORS = {spec.name: spec for spec in SPECS}
ProcessorName = Literal["passthrough", "generate", "label", "quality", "review", "thermal", "plant", "lineage", "train"]
assert get_args(ProcessorName) == tuple(PROCESSORS), "ProcessorName lists the processors of SPECS"



def markdown() -> str:
    """The table as Markdown (the README's processor table is this, checked by a test)."""
    lines = ["| processor | kind | reads | writes | state per | what it does |", "|---|---|---|---|---|---|"]
    for spec in SPECS:
        reads = ", ".join(f"`{t}`" for t in (*spec.sources, *spec.side_inputs)) or "`--source`"
        writes = ", ".join([*(f"`{t}`" for t in spec.output_topics()), *(f"table `{t}`" for t in spec.tables)])
        lines.append(f"| `{spec.name}` | {spec.kind} | {reads} | {writes or '`--sink`'} | {spec.state_key or '-'} | {spec.summary} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())

__all__ = ["PROCESSORS", "SPECS", "ProcessorName", "ProcessorSpec", "markdown"]
