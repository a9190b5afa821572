"""Errors the feature store raises; each is one line for the CLI."""

from __future__ import annotations

import re

from mer.errors import MerError


class StoreError(MerError):
    """The store cannot be opened, or it holds no table for the encoder asked for."""


class DimensionError(StoreError, ValueError):
    """A write whose vector (or seq) width differs from the table's schema."""


#: Rust source locations lance appends to its messages (``, /home/.../src/io.rs:123:45``).
_RUST_SOURCE = re.compile(r",?\s*\S*\.rs:\d+:\d+")


def lance_message(exc: BaseException, limit: int = 200) -> str:
    """A lance error as a short line for a user: no Rust source paths, collapsed whitespace, cut at ``limit``."""
    text = " ".join(_RUST_SOURCE.sub("", str(exc)).split())
    return text if len(text) <= limit else text[:limit] + "..."
