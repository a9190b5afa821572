"""Manifest reading: CSV or JSONL, one row per sample (DESIGN.md "Manifest").

Columns: ``sample_id`` and ``split`` required; ``video``, ``audio``, ``text`` and
``label`` optional. Media paths relative to the manifest's folder become
absolute, so a manifest and its media move together. A file that is not a
manifest (unreadable, empty, missing required columns) raises ``ManifestError``:
one line, exit code 2. Row-level problems are not raised here: ``validate``
quarantines them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mer.errors import MerError

COLUMNS = ["sample_id", "video", "audio", "text", "label", "split"]
REQUIRED = ["sample_id", "split"]
MEDIA = ["video", "audio"]
SPLITS = ("train", "unlabeled", "test")
CHUNK_ROWS = 20_000


class ManifestError(MerError):
    """The file cannot be read as a manifest; the message names the file and the problem."""


def _raw_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """Parse CSV (or JSON lines for ``.jsonl``/``.json``) ``rows`` at a time, every value as text."""
    try:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            first_row, reader = 1, pd.read_json(path, lines=True, dtype=False, chunksize=rows)
        else:
            first_row = 2  # line 1 is the header
            reader = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", skipinitialspace=True,
                                 chunksize=rows)
        with reader:
            for chunk in reader:
                chunk.attrs["first_row"] = first_row
                first_row += len(chunk)
                yield chunk
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: empty file") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{path}: not a readable CSV/JSONL manifest ({' '.join(str(exc).split())})") from None


def _clean(value) -> str | None:
    """Text value stripped; NaN, None and '' become None."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _absolute(value: str | None, base: Path) -> str | None:
    if value is None or "://" in value:  # URIs (s3://...) are left to the reader
        return value
    return os.path.abspath(base / os.path.expanduser(value))


def read_manifest_chunks(path: str | os.PathLike, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """Read a manifest ``rows`` rows at a time (memory holds one chunk, whatever the file's size).

    Args:
        path: CSV (header row) or JSONL (one object per line) file.
        rows: rows per chunk (default ``CHUNK_ROWS``).

    Yields:
        DataFrames (object columns) with ``sample_id, video, audio, text, label,
        split`` first (extra columns kept after them); empty values are None;
        ``video`` and ``audio`` are absolute paths; the index counts from 0 in
        each chunk and ``df.attrs["first_row"]`` is the file line of the chunk's
        first row (for messages that name a row).

    Raises:
        ManifestError: missing or unreadable file, no rows, or missing required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base, empty = path.resolve().parent, True
    for df in _raw_chunks(path, rows or CHUNK_ROWS):
        df.columns = [str(c).strip() for c in df.columns]
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            found = ", ".join(df.columns[:6]) or "none"
            raise ManifestError(f"{path}: not a manifest: missing required column(s) {', '.join(missing)} "
                                f"(found: {found})")
        if df.empty:
            continue
        empty = False
        columns = {}
        for col in COLUMNS + [c for c in df.columns if c not in COLUMNS]:
            columns[col] = [_clean(v) for v in df[col]] if col in df.columns else [None] * len(df)
        for col in MEDIA:
            columns[col] = [_absolute(v, base) for v in columns[col]]
        # object dtype keeps None as None (pandas' string dtype would turn it into NaN)
        out = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in columns.items()})
        out.attrs["first_row"] = df.attrs["first_row"]
        yield out
    if empty:
        raise ManifestError(f"{path}: manifest has a header but no rows")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The whole manifest as one DataFrame (``read_manifest_chunks`` concatenated; same columns and errors)."""
    chunks = list(read_manifest_chunks(path))
    df = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    df.attrs["first_row"] = chunks[0].attrs["first_row"]
    return df
