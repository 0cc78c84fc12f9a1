"""Errors raised by the data pipeline."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt or inconsistent with the dataset's index.

    The message always names the offending file, so a user can find and regenerate or delete it.
    """
