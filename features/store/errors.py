"""The feature store's errors; each message says what to do."""

from __future__ import annotations

from saes.errors import SaesteerError


class StoreError(SaesteerError):
    """A feature store problem; the message says what to do."""


class StoreMismatchError(StoreError, ValueError):
    """The store was built from another SAE or cache than the one given."""


class FeatureIndexError(StoreError, IndexError):
    """A feature id outside 0..d_sae-1."""


class FeatureNotWrittenError(StoreError, KeyError):
    """The build has not written this feature yet."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class StoreReadOnlyError(StoreError):
    """A write on a store opened read-only."""
