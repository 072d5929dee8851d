"""The exception tree of the Kafka plumbing (rooted at ``SdgError``)."""

from schemas.errors import SdgError


class ConfigError(SdgError):
    """A setting, topic or processor name that does not exist, or a value that cannot work."""


class UnknownTopic(ConfigError):
    """A topic name that is not in the catalog."""


class BrokerError(SdgError):
    """The broker cannot be reached or refused an operation (infrastructure, never a bad record)."""


class StepReturnError(SdgError):
    """A processor function returned a value of the wrong shape; the step is broken, not the record."""


class RecordTooLarge(SdgError):
    """A record over the producers' size limit: bad data (its input goes to the dead-letter topic), not a broken system."""
