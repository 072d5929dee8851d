"""The review queue as the console shows it: samples waiting for a person, ordered by what an answer is worth.

An answer is worth most where the labeler is least sure (a small margin between its top two classes) and
where it disagrees with what the generator was asked for; the queue is then spread across (generator, class)
groups, so one generator's or one class's doubts do not fill the page while others wait. Measured by
``bench/active_learning.py``: margin alone beat margin plus entropy, and the spread beat margin alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from schemas.records import SampleDecision


def worth(decision: SampleDecision, num_classes: int) -> float:
    """How much a person's answer to this sample is worth: doubt plus disagreement, in [0, 2]."""
    label = decision.label
    return (1.0 - label.margin) + (0.0 if label.agrees else 1.0)


def ordered(queue: list[SampleDecision], num_classes: int) -> list[SampleDecision]:
    """The queue by worth, spread round-robin across (generator, labeler's class) groups, best group first."""
    groups: dict[tuple[str, int], list[SampleDecision]] = defaultdict(list)
    for decision in sorted(queue, key=lambda d: (-worth(d, num_classes), d.sample.sample_id)):
        groups[(decision.sample.generator, decision.label.label)].append(decision)
    rounds = sorted(groups.values(), key=lambda g: -worth(g[0], num_classes))
    out: list[SampleDecision] = []
    depth = 0
    while len(out) < len(queue):
        out += [group[depth] for group in rounds if depth < len(group)]
        depth += 1
    return out


@dataclass
class ReviewQueue:
    """Samples sent to review and not answered yet (answers seen on ``sdg.labels.human`` or given here)."""

    waiting: dict[str, SampleDecision] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)

    def queued(self, decision: SampleDecision) -> None:
        if decision.sample.sample_id not in self.answered:
            self.waiting[decision.sample.sample_id] = decision

    def answer(self, sample_id: str) -> None:
        self.answered.add(sample_id)
        self.waiting.pop(sample_id, None)
