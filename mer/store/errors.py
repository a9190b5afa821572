"""Errors the feature store raises; each is one line for the CLI."""

from __future__ import annotations

from mer.errors import MerError


class StoreError(MerError):
    """The store cannot be opened, or it holds no table for the encoder asked for."""


class DimensionError(StoreError, ValueError):
    """A write whose vector (or seq) width differs from the table's schema."""
