"""Tables people read: quality windows against their baseline, decisions per generator."""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from schemas.records import QualityWindow

STATE_STYLE = {"admissible": "green", "inadmissible": "red", "warming_up": "yellow"}


MEASURED_ON = {"samples": "", "objects": " scene objects", "scenes": " whole scenes"}


def quality_table(windows: list[QualityWindow], *, title: str = "quality windows (value / real-vs-real baseline)") -> Table:
    table = Table("generator", "class", "window", "n", "FID", "precision", "recall", "density", "coverage",
                  "memorized", "gate", title=title)
    for w in windows:
        b = w.baseline
        cells = [f"{getattr(w.metrics, m):.3g} / {getattr(b, m):.3g}" if b else f"{getattr(w.metrics, m):.3g}"
                 for m in ("fid", "precision", "recall", "density", "coverage")]
        style = STATE_STYLE[w.gate_state]
        table.add_row(w.generator + MEASURED_ON[w.measured_on], "all" if w.class_label is None else str(w.class_label), w.window_id.split(":", 1)[1],
                      str(w.metrics.n), *cells, f"{w.memorized_fraction:.1%}", f"[{style}]{w.gate_state}[/]")
    if windows:
        table.caption = f"extractor {windows[0].extractor} ({windows[0].extractor_hash}), reference {windows[0].reference_split}"
    return table


def decisions_table(counts: dict[str, Counter[str]], reasons: dict[str, Counter[str]]) -> Table:
    """Accepted / review / rejected per generator, with each generator's most common reason."""
    table = Table("generator", "accepted", "review", "rejected", "most common reason", title="quality gate decisions")
    for generator in sorted(counts):
        c = counts[generator]
        top = reasons[generator].most_common(1)
        table.add_row(generator, str(c["accepted"]), str(c["review"]), str(c["rejected"]),
                      f"{top[0][0]} ({top[0][1]})" if top else "")
    return table
