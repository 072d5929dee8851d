"""The pass-through processor: forwards each record unchanged.

Used by the demo to show the path of records (and of bad records into ``sdg.dlq``), and by
``bench/broker.py`` to measure what the runner itself costs.
"""

from __future__ import annotations

from schemas.records import Record


def passthrough(record: Record) -> Record:
    """Return ``record`` as it is."""
    return record
