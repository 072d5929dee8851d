"""Rate caps and pauses from ``sdg.control``: a signal the runner applies by pausing consumption."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError

from schemas.codec import RecordCodec
from schemas.errors import UndecodableRecord
from schemas.records import Throttle
from streams.config import KafkaConfig

log = logging.getLogger(__name__)
CONTROL_TOPIC = "sdg.control"


class RateCap:
    """The current cap of one node: a rate in units/s, a pause, or nothing; each expires after its ttl.

    Units are what the step produces (samples for the generate step). Booking is a virtual
    clock: a batch of ``n`` units at rate ``r`` keeps the next batch waiting ``n / r`` seconds.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._paused = False
        self._expires = 0.0
        self._next_free = 0.0
        self.reason = ""

    def apply(self, throttle: Throttle, *, now: float | None = None) -> None:
        """Take a control record for this node (records for other nodes are ignored).

        Its time-to-live counts from when it was decided (``created_ms``), so a cap replayed from the
        compacted log after it expired changes nothing.
        """
        if throttle.node_id != self.node_id:
            return
        now = time.monotonic() if now is None else now
        age_s = max(0.0, time.time() - throttle.created_ms / 1000)
        with self._lock:
            self._rate, self._paused = throttle.max_rate_sps, throttle.paused
            self._expires = now + throttle.ttl_s - age_s
            self.reason = throttle.reason
        log.info("node %s: cap %s paused=%s for %.0fs (%s)", self.node_id, throttle.max_rate_sps, throttle.paused,
                 throttle.ttl_s, throttle.reason)

    def current(self, now: float | None = None) -> tuple[bool, float | None]:
        """(paused, max rate) in force now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now >= self._expires:
                return False, None
            return self._paused, self._rate

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until the next batch may start (``inf`` while paused)."""
        now = time.monotonic() if now is None else now
        paused, rate = self.current(now)
        if paused:
            return math.inf
        if rate is None:
            return 0.0
        with self._lock:
            return max(0.0, self._next_free - now)

    def book(self, units: int, now: float | None = None) -> None:
        """Account for a batch of ``units`` that starts now."""
        now = time.monotonic() if now is None else now
        _, rate = self.current(now)
        with self._lock:
            if rate is None:
                self._next_free = now
            elif rate <= 0:
                self._next_free = math.inf
            else:
                self._next_free = max(now, self._next_free) + units / rate


class ControlListener:
    """Follows ``sdg.control`` from the start (a compacted log: the latest per node) into a ``RateCap``."""

    def __init__(self, kafka: KafkaConfig, cap: RateCap, *, codec: RecordCodec | None = None) -> None:
        self.cap = cap
        self.codec = codec or RecordCodec()
        self._consumer = Consumer(kafka.librdkafka(**{
            "group.id": f"sdg-control-{cap.node_id}-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50,
        }))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"control-{cap.node_id}", daemon=True)

    def start(self) -> ControlListener:
        self._consumer.subscribe([CONTROL_TOPIC])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.1)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.error("control listener: %s", error.str())
                    continue
                try:
                    record = self.codec.decode(message.value())
                except UndecodableRecord as e:
                    log.warning("control listener skipped %s@%d: %s", message.topic(), message.offset(), e)
                    continue
                if isinstance(record, Throttle):
                    self.cap.apply(record)
        finally:
            self._consumer.close()
