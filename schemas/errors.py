"""The root of sdg-edge's exception tree lives here, at the bottom of the dependency chain."""


class SdgError(Exception):
    """Root of every error sdg-edge raises on purpose."""


class SchemaError(SdgError):
    """A schema file is missing, malformed, or disagrees with its Python type."""


class UndecodableRecord(SdgError):
    """Bytes that are not a record of any known schema version (a bad record, not a broken system)."""
