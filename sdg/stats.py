"""What the label-cost report may claim: 95% intervals over seeds, and paired comparisons of two arms.

An accuracy difference is a claim only with at least ``MIN_SEEDS`` seeds and a 95% interval that excludes
zero; otherwise the report says "within noise". Arms are compared per seed (the same split, labels and seed),
so the interval is Student's t on the paired differences.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal, Sequence

from scipy import stats

MIN_SEEDS = 5
Verdict = Literal["beats", "within noise", "worse than", "too few seeds"]


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its 95% t-interval."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n}


def interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval of ``values`` (a single value: an interval of zero width, and n = 1)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, mean, mean, len(values))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``, seed by seed: the mean difference (a − b) and its 95% interval."""

    difference: Interval
    verdict: Verdict

    def as_dict(self) -> dict[str, object]:
        return {**self.difference.as_dict(), "verdict": self.verdict}

    def sentence(self, a: str, b: str, *, scale: float = 100.0, unit: str = " pt") -> str:
        d = self.difference
        numbers = f"{scale * d.mean:+.2f}{unit}, 95% interval [{scale * d.low:+.2f}, {scale * d.high:+.2f}], {d.n} seeds"
        if self.verdict == "within noise":
            return f"{a} and {b} are within noise ({numbers})"
        if self.verdict == "too few seeds":
            return f"{a} against {b}: too few seeds for a claim ({numbers})"
        return f"{a} {self.verdict} {b} ({numbers})"


def paired(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Compare two arms measured on the same seeds, in the same order."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same seeds: {len(a)} against {len(b)} values")
    difference = interval([x - y for x, y in zip(a, b)])
    verdict: Verdict
    if difference.n < MIN_SEEDS:
        verdict = "too few seeds"
    elif difference.low > 0:
        verdict = "beats"
    elif difference.high < 0:
        verdict = "worse than"
    else:
        verdict = "within noise"
    return Comparison(difference, verdict)
