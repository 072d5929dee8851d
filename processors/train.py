"""The train processor: a sink of accepted samples that retrains the edge model after every ``every`` new ones.

It keeps the samples in memory and commits no offsets: at start it reads the accepted topic from the
beginning (its retention is the training set). A sample whose image cannot be read is bad data (the
runtime dead-letters it). Nothing here imports Kafka; ``train`` is the training function it is given.
"""

from __future__ import annotations

from typing import Any, Callable

from models.image import sample_image
from schemas.records import Record, SampleDecision


class TrainSink:
    """Collects accepted samples; ``flush`` (the runtime's checkpoint) trains when ``every`` new ones came."""

    def __init__(self, train: Callable[[list[SampleDecision]], Any], *, every: int) -> None:
        self.train = train
        self.every = every
        self.records: list[SampleDecision] = []
        self.fresh = 0

    def write(self, message: Any, record: Record) -> None:
        assert isinstance(record, SampleDecision)
        sample = record.sample
        sample_image(sample)
        self.records.append(record)
        self.fresh += 1

    def due(self) -> bool:
        return self.fresh >= self.every

    def flush(self, *, wait: bool = True) -> list[tuple[Any, Exception]]:
        if self.fresh >= self.every:
            self.fresh = 0
            self.train(self.records)
        return []

    def unwritten(self) -> dict[tuple[str, int], int]:
        return {}

    def assigned(self) -> None:
        pass


__all__ = ["TrainSink"]
