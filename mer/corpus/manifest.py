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
from pathlib import Path

import pandas as pd

from mer.errors import MerError

COLUMNS = ["sample_id", "video", "audio", "text", "label", "split"]
REQUIRED = ["sample_id", "split"]
MEDIA = ["video", "audio"]
SPLITS = ("train", "unlabeled", "test")


class ManifestError(MerError):
    """The file cannot be read as a manifest; the message names the file and the problem."""


def _read_table(path: Path) -> pd.DataFrame:
    """Parse CSV (or JSON lines for ``.jsonl``/``.json``) with every value as text."""
    try:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(path, lines=True, dtype=False)
            df.attrs["first_row"] = 1
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", skipinitialspace=True)
            df.attrs["first_row"] = 2  # line 1 is the header
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: empty file") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{path}: not a readable CSV/JSONL manifest ({' '.join(str(exc).split())})") from None
    return df


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


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest into a DataFrame with the six contract columns.

    Args:
        path: CSV (header row) or JSONL (one object per line) file.

    Returns:
        DataFrame (object columns) with ``sample_id, video, audio, text, label,
        split`` first (extra columns kept after them); empty values are None;
        ``video`` and ``audio`` are absolute paths. ``df.attrs["first_row"]`` is
        the file line of the first row (for messages that name a row).

    Raises:
        ManifestError: missing or unreadable file, no rows, or missing required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    df = _read_table(path)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        found = ", ".join(df.columns[:6]) or "none"
        raise ManifestError(f"{path}: not a manifest: missing required column(s) {', '.join(missing)} (found: {found})")
    if df.empty:
        raise ManifestError(f"{path}: manifest has a header but no rows")
    columns = {}
    for col in COLUMNS + [c for c in df.columns if c not in COLUMNS]:
        columns[col] = [_clean(v) for v in df[col]] if col in df.columns else [None] * len(df)
    base = path.resolve().parent
    for col in MEDIA:
        columns[col] = [_absolute(v, base) for v in columns[col]]
    # object dtype keeps None as None (pandas' string dtype would turn it into NaN)
    out = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in columns.items()})
    out.attrs["first_row"] = df.attrs.get("first_row", 1)
    return out
