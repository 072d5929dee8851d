"""Kafka plumbing: topic catalog, admin, producer, processor runner, subscribe API, dead letters, faust wiring.

Imports neither torch nor faust at import time.
"""

from streams.catalog import CATALOG, TopicSpec, topic
from streams.config import KafkaConfig, RunnerConfig, TopicConfig
from streams.errors import BrokerError, ConfigError, StepReturnError, UnknownTopic
from streams.producer import RecordProducer
from streams.dead_letter import DLQ_TOPIC
from streams.runner import Runner, RunStats, Step
from streams.subscribe import Received, subscribe

__all__ = [
    "BrokerError",
    "CATALOG",
    "ConfigError",
    "DLQ_TOPIC",
    "KafkaConfig",
    "Received",
    "RecordProducer",
    "RunStats",
    "Runner",
    "RunnerConfig",
    "Step",
    "StepReturnError",
    "TopicConfig",
    "TopicSpec",
    "UnknownTopic",
    "subscribe",
    "topic",
]
