"""Label tables: a manifest split's labels, a truth CSV, and the organisers' ``name,discrete`` files.

Every reader returns ``sample_id,label`` with ids as text, so scoring code
never cares where labels came from. A file that cannot be read is a one-line
error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mer.errors import MerError

#: The organisers' columns (MERTools ``MER2025_Track1/evaluation.py``): ``name`` and the discrete label.
ORGANISER_COLUMNS = ("name", "discrete")


class LabelFileError(MerError):
    """A label file that cannot be read as ``sample_id,label`` (or ``name,discrete``)."""


def read_labels(path: str | os.PathLike, what: str = "labels") -> pd.DataFrame:
    """``sample_id,label`` from a truth CSV, a manifest (CSV/JSONL) or an organisers' ``name,discrete`` CSV.

    Other columns are ignored; ``df.attrs["first_row"]`` is the file line of
    the first row and ``df.attrs["format"]`` says which layout was read.

    Raises:
        LabelFileError: missing or unreadable file, or neither column pair.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(path, lines=True, dtype=False)
            first_row = 1
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
            first_row = 2
    except FileNotFoundError:
        raise LabelFileError(f"{what} {path}: no such file") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LabelFileError(f"{what} {path}: not a CSV/JSONL table ({' '.join(str(exc).split())})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if {"sample_id", "label"} <= set(df.columns):
        out, layout = df[["sample_id", "label"]].copy(), "mer"
    elif set(ORGANISER_COLUMNS) <= set(df.columns):
        out, layout = df[list(ORGANISER_COLUMNS)].set_axis(["sample_id", "label"], axis=1), "organisers"
    else:
        raise LabelFileError(f"{what} {path}: needs columns sample_id,label (or the organisers' name,discrete); "
                             f"found {', '.join(df.columns) or 'none'}")
    out["sample_id"] = out["sample_id"].astype(str)
    out.attrs.update(first_row=first_row, format=layout, path=str(path))
    return out


def split_truth(manifest: str | os.PathLike, split: str = "test") -> pd.DataFrame | None:
    """``sample_id,label`` of a split's labeled rows in the manifest; None when it has none."""
    from mer.corpus.manifest import read_manifest

    df = read_manifest(manifest)
    df = df[(df["split"] == split) & df["label"].notna() & (df["label"].astype(str) != "")]
    return None if df.empty else df[["sample_id", "label"]].astype(str).reset_index(drop=True)


def split_labels(manifest: str, store: str, streams: dict, split: str = "test") -> tuple[pd.DataFrame | None, str]:
    """``sample_id,label`` of a split's labeled rows and where they came from: the manifest, else the store.

    A job whose features were written straight into the store (imported, or
    synthetic) may have no manifest file; its tables carry the labels.
    Returns ``(None, "")`` when the split has no label anywhere.
    """
    if Path(manifest).is_file():
        truth = split_truth(manifest, split)
        return (truth, str(manifest)) if truth is not None else (None, "")
    from mer.encoders import feature_ref
    from mer.store import StoreError, open_store

    stream, spec = sorted(streams.items())[0]
    ref = feature_ref(stream, spec)
    try:
        features = open_store(store, create=False).read(ref.alias, ref.version, split=split)
    except StoreError:
        return None, ""
    frame = pd.DataFrame({"sample_id": features.ids.astype(str), "label": features.label}).dropna(subset=["label"])
    return (frame.reset_index(drop=True), f"store {store} ({stream})") if len(frame) else (None, "")


def hidden_truth(path: str | None) -> pd.DataFrame | None:
    """Hidden labels of the unlabeled split (``job.truth``), for reporting pseudo-label accuracy only."""
    return None if not path else read_labels(path, "truth")
