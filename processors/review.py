"""The review join: people's answers (``sdg.labels.human``, from the console) joined to the review queue.

The quality gate sends uncertain samples to ``sdg.samples.review``; a person answers each with a label or a
rejection. This processor keeps every queued sample in its state (per sample id) and, for each answer,
decides the sample again: ``accepted`` with the person's label, or ``rejected``, with ``label_source`` human.
An answer that arrives before its sample waits in the state for it; a later answer to the same sample (a
correction) decides it again, so the newest answer is the sample's last decision in lineage.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from schemas.codec import RecordCodec
from schemas.records import Gate, HumanLabel, Record, SampleDecision
from streams.runtime import Store

HUMAN: Final = "human"
_WAITING = "answer/"  # state key prefix of an answer whose sample has not arrived yet

_codec = RecordCodec()
load, dump = _codec.decode, _codec.encode  # state values are records, stored as their Avro bytes


def state_key(record: Record) -> str:
    """Answers and queued samples meet under the sample id."""
    if isinstance(record, SampleDecision):
        return record.sample.sample_id
    if isinstance(record, HumanLabel):
        return record.sample_id
    raise ValueError(f"the review join takes samples to review and human labels, not {record.schema_name}")


def decided(queued: SampleDecision, answer: HumanLabel) -> SampleDecision:
    """The sample as the person decided it: their label (confidence 1) or their rejection."""
    label = queued.label
    if answer.label is not None:
        asked = queued.sample.conditioning.class_label  # None: an ingested real image, nothing asked for
        agrees = asked is None or answer.label == asked
        label = label.model_copy(update={"label": answer.label, "confidence": 1.0, "margin": 1.0, "entropy": 0.0,
                                         "agrees": agrees, "labeler": HUMAN, "labeler_version": answer.reviewer,
                                         "objects": answer.objects or label.objects})
    verdict: Literal["accepted", "rejected"] = "rejected" if answer.rejected else "accepted"
    reason = f"{answer.reviewer}: rejected" if answer.rejected else f"{answer.reviewer}: label {answer.label}"
    return SampleDecision(run_id=queued.run_id, created_ms=answer.created_ms, sample=queued.sample, label=label,
                          score=queued.score, gate=Gate(decision=verdict, reason=reason, gate=HUMAN),
                          label_source=HUMAN, reviewer=answer.reviewer)


def join(record: Record, store: Store[Any]) -> list[SampleDecision]:
    """One queued sample or one answer in; the decision it completes (if any) out.

    Raises:
        ValueError: a record that is neither (the error policy dead-letters it), or a sample on the review
            topic that the gate did not send to review.
    """
    key = state_key(record)
    if isinstance(record, HumanLabel):
        queued = store.get(key)
        if queued is None:
            store[_WAITING + key] = record
            return []
        return [decided(queued, record)]
    assert isinstance(record, SampleDecision)
    if record.gate.decision != "review" or record.label_source != "labeler":
        raise ValueError(f"sample {key} on the review queue was {record.gate.decision} by {record.label_source}")
    store[key] = record
    waiting = store.get(_WAITING + key)
    if waiting is None:
        return []
    del store[_WAITING + key]
    return [decided(record, waiting)]
