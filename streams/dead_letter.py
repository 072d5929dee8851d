"""Dead letters: the one way every processor hands over a record it cannot take.

A dead letter carries the record's bytes, where it was read, the step and the reason. A record too
large to travel whole inside a dead letter keeps its first ``KEPT_BYTES``, its size and its hash.
"""

from __future__ import annotations

import hashlib
import logging

from schemas.records import DeadLetter

log = logging.getLogger(__name__)

DLQ_TOPIC = "sdg.dlq"
MAX_ERROR_CHARS = 4000
KEPT_BYTES = 64 * 1024  # of a value too large for the dead-letter topic
ENVELOPE_BYTES = 16 * 1024  # room kept for the dead letter's own fields


def record_bytes(key: bytes | None, value: bytes | None, headers: dict[str, bytes] | None = None) -> int:
    """What a record weighs against a producer's size limit (key, value and headers)."""
    size = len(key or b"") + len(value or b"")
    return size + sum(len(k) + len(v) for k, v in headers.items()) if headers else size


def dead_letter(*, run_id: str, step_id: str, error: BaseException, topic: str, partition: int, offset: int,
                key: bytes | None, value: bytes | None, headers: dict[str, bytes] | None = None,
                max_record_bytes: int) -> DeadLetter:
    """The dead letter of the record at ``topic[partition]@offset``, sized to fit ``max_record_bytes``."""
    headers = dict(headers or {})
    whole = record_bytes(key, value, headers) + ENVELOPE_BYTES <= max_record_bytes
    text = f"{error}"[:MAX_ERROR_CHARS]
    log.warning("step %s: %s[%d]@%d to %s: %s", step_id, topic, partition, offset, DLQ_TOPIC, text)
    return DeadLetter(
        run_id=run_id, topic=topic, partition=partition, offset=offset, step_id=step_id,
        error_type=type(error).__name__, error=text,
        original_key=key if whole or key is None else key[:KEPT_BYTES],
        original_value=value if whole or value is None else value[:KEPT_BYTES],
        headers=headers if whole else {},
        original_size=None if value is None else len(value),
        original_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
        truncated=not whole,
    )


__all__ = ["DLQ_TOPIC", "dead_letter", "record_bytes"]
