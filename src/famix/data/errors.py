"""The errors of a dataset on disk that does not match what famix expects (each message says what to fix)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk does not match what famix expects; the message says what to fix."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A dataset folder, file or split list is missing."""
