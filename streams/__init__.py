"""Kafka plumbing: topic catalog, admin, producer, the processor runtime, subscribe API, dead letters, Delta sink.

Imports no torch at import time.
"""

from streams.catalog import CATALOG, TopicSpec, topic
from streams.config import KafkaConfig, RunnerConfig, TopicConfig
from streams.dead_letter import DLQ_TOPIC
from streams.errors import BrokerError, ConfigError, StepReturnError, UnknownTopic
from streams.producer import RecordProducer
from streams.runtime import Runner, RunStats, Step, Store
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
    "Store",
    "StepReturnError",
    "TopicConfig",
    "TopicSpec",
    "UnknownTopic",
    "subscribe",
    "topic",
]
