"""The review loop without a browser: answers joined to the review queue, lineage's human stage, label accounting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from models.reference import distinct_labels, human_budget
from processors.lineage import rows_of
from processors.review import dump, join, load, state_key
from schemas.examples import example
from schemas.records import Gate, HumanLabel, SampleDecision
from streams.config import RunnerConfig
from streams.memory import MemoryBroker
from streams.runtime import Step

OFTEN = RunnerConfig(batch_size=10, commit_interval_s=0.001, poll_timeout_s=0.01)


def queued(i: int) -> SampleDecision:
    record = example(SampleDecision, i, "r")
    return record.model_copy(update={"gate": Gate(decision="review", reason="uncertain label", gate="example")})


def answer(i: int, label: int | None, who: str = "ada") -> HumanLabel:
    return HumanLabel(run_id="console", sample_id=queued(i).sample.sample_id, label=label, rejected=label is None,
                      reviewer=who)


def decisions(broker: MemoryBroker, topic: str) -> list[SampleDecision]:
    return [r for r in broker.records(topic) if isinstance(r, SampleDecision)]


def run(broker: MemoryBroker) -> None:
    step = Step("review", ("sdg.samples.review", "sdg.labels.human"), join, kind="stateful", key_by=state_key,
                load=load, dump=dump)
    broker.runner(step, group="g", config=OFTEN).run(max_idle_s=0.3)


def test_answers_decide_queued_samples_with_the_persons_label_and_wait_for_samples_not_yet_queued() -> None:
    broker = MemoryBroker()
    broker.send("sdg.labels.human", answer(4, 7))  # before its sample: it waits in the state
    for i in range(5):
        broker.send("sdg.samples.review", queued(i))
    broker.send("sdg.labels.human", answer(0, 3))
    broker.send("sdg.labels.human", answer(1, None, "bob"))
    run(broker)
    accepted = {r.sample.sample_id: r for r in decisions(broker, "sdg.samples.accepted")}
    rejected = decisions(broker, "sdg.samples.rejected")
    assert set(accepted) == {queued(0).sample.sample_id, queued(4).sample.sample_id}
    first = accepted[queued(0).sample.sample_id]
    assert (first.label.label, first.label.confidence, first.label_source, first.reviewer) == (3, 1.0, "human", "ada")
    assert first.label.labeler == "human" and first.gate.gate == "human" and first.gate.reason == "ada: label 3"
    assert first.label.agrees == (queued(0).sample.conditioning.class_label == 3)
    assert accepted[queued(4).sample.sample_id].label.label == 7
    assert [(r.sample.sample_id, r.reviewer, r.gate.decision) for r in rejected] == [
        (queued(1).sample.sample_id, "bob", "rejected")]

    broker.send("sdg.labels.human", answer(0, 5))  # a correction, after a restart: the queue came back from the state
    run(broker)
    again = [r for r in decisions(broker, "sdg.samples.accepted") if r.sample.sample_id == queued(0).sample.sample_id]
    assert [r.label.label for r in again] == [3, 5]


def test_a_sample_the_gate_did_not_send_to_review_is_dead_lettered() -> None:
    broker = MemoryBroker()
    broker.send("sdg.samples.review", example(SampleDecision, 0, "r"))  # decided "accepted", on the review topic
    run(broker)
    (letter,) = broker.records("sdg.dlq")
    assert "on the review queue was accepted by labeler" in letter.error  # type: ignore[attr-defined]


def test_an_answer_is_a_label_or_a_rejection() -> None:
    with pytest.raises(ValidationError, match="a label or a rejection"):
        HumanLabel(run_id="c", sample_id="s", label=3, rejected=True, reviewer="ada")
    with pytest.raises(ValidationError, match="a label or a rejection"):
        HumanLabel(run_id="c", sample_id="s", reviewer="ada")


def test_a_human_decision_is_the_human_stage_of_lineage_and_each_answered_sample_is_one_real_label() -> None:
    from processors.review import decided

    record = decided(queued(0), answer(0, 3))
    (row,) = rows_of(record, "sdg.samples.accepted", 0, 0)["lineage"]
    assert (row["stage"], row["decision"], row["label"], row["reason"]) == ("human", "accepted", 3, "ada: label 3")
    ids = [queued(i).sample.sample_id for i in (0, 1, 2, 0)]  # a corrected sample is still one label
    assert human_budget(ids).n_labels == 3
    assert distinct_labels([human_budget(ids[:2]), human_budget(ids[1:])]) == 3


def test_the_labeler_retrained_with_the_answers_counts_them_and_a_running_label_step_picks_it_up(
        quality_state: Path, tmp_path: Path) -> None:
    import shutil

    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake
    from rich.console import Console

    from models.reference import load_digits_reference
    from processors.review import decided
    from schemas.tables import LINEAGE, SAMPLES
    from sdg.settings import Settings
    from sdg.training import human_answers, labeler_budgets, train_quality_models
    from sdg.workers import _latest_labeler

    shutil.copytree(quality_state / "models", tmp_path / "models")
    settings = Settings(state_dir=tmp_path, tables_dir=tmp_path / "tables")
    digits = load_digits_reference()
    samples, lineage = [], []
    for i in range(3):  # three samples a person labeled in the review queue, as the lineage sink writes them
        pixels = np.round(digits.images[i] * 255).astype(np.uint8).tobytes()
        record = queued(i).model_copy(update={"sample": queued(i).sample.model_copy(update={
            "image": pixels, "image_format": "raw", "width": 8, "height": 8})})
        rows = rows_of(record.sample, "sdg.samples.raw", 0, i)
        samples += rows["samples"]
        lineage += rows["lineage"] + rows_of(decided(record, answer(i, int(digits.labels[i]))), "sdg.samples.accepted", 0, i)["lineage"]
    chained = [{**row, "seq": k, "prev_hash": "", "row_hash": ""} for k, row in enumerate(lineage)]
    write_deltalake(settings.delta_tables().path("samples"), pa.Table.from_pylist(samples, schema=SAMPLES))
    write_deltalake(settings.delta_tables().path("lineage"), pa.Table.from_pylist(chained, schema=LINEAGE))

    current = _latest_labeler(settings, every_s=0.0)  # what the label step labels with
    before = current().model.version
    answers = human_answers(settings, digits)
    assert answers is not None and answers.labels.tolist() == digits.labels[:3].tolist()
    assert answers.images.shape == (3, 8, 8) and answers.budget.split == "human"
    train_quality_models(settings, extractor_steps=20, labeler_steps=20, answers=answers, console=Console(quiet=True))
    assert current().model.version != before  # deployed: the running step switched without a restart
    budgets = labeler_budgets(settings)
    assert [(b.split, b.n_labels) for b in budgets] == [("few", 100), ("human", 3)]
