"""The labeled examples a fine-tuning job trains on (driver side, no Ray).

Rows of the manifest's ``train`` split with a known label and the role's input
(transcript or video), optionally plus the accepted pseudo-labels of a
self-training run (``finetune.pseudo_labels: <run_id>``) on ``unlabeled`` rows.
"""

from __future__ import annotations

import pandas as pd

from mer.errors import MerError
from mer.finetune.settings import FinetuneSettings

INPUT_COLUMN = {"text": "text", "video": "video"}


def _has_input(series: pd.Series) -> pd.Series:
    return series.notna() & (series.astype(str).str.strip() != "")


def labeled_examples(ft: FinetuneSettings) -> pd.DataFrame:
    """``sample_id, input, label, source`` rows for ``finetune.role``.

    ``label`` is the index into the label set; ``source`` is ``train`` or
    ``pseudo``.

    Raises:
        MerError: unknown role, or no usable labeled row.
    """
    from mer.corpus.manifest import read_manifest

    role = ft.cfg.role
    if role not in INPUT_COLUMN:
        raise MerError(f"finetune.role: expected text or video, got {role!r}")
    column = INPUT_COLUMN[role]
    manifest = read_manifest(ft.manifest)
    usable = manifest[_has_input(manifest[column])]
    train = usable[(usable["split"] == "train") & usable["label"].isin(ft.labels)]
    parts = [train.assign(source="train")]
    if ft.cfg.pseudo_labels:
        parts.append(_pseudo_rows(ft, usable[usable["split"] == "unlabeled"]))
    rows = pd.concat(parts, ignore_index=True)
    if rows.empty:
        raise MerError(f"{ft.manifest}: no labeled train row has a {column} for finetune.role={role}")
    index = {label: i for i, label in enumerate(ft.labels)}
    return pd.DataFrame(
        {
            "sample_id": rows["sample_id"].astype(str),
            "input": rows[column].astype(str),
            "label": rows["label"].map(index).astype(int),
            "source": rows["source"],
        }
    )


def _pseudo_rows(ft: FinetuneSettings, unlabeled: pd.DataFrame) -> pd.DataFrame:
    """Unlabeled rows with the last accepted pseudo-label of run ``finetune.pseudo_labels``."""
    from mer.store import open_store

    pseudo = open_store(ft.store).read_pseudo_labels(ft.cfg.pseudo_labels)
    if pseudo.empty:
        raise MerError(f"finetune.pseudo_labels: run {ft.cfg.pseudo_labels!r} has no pseudo-labels in {ft.store}")
    last = pseudo.sort_values("round").drop_duplicates("sample_id", keep="last")
    merged = unlabeled.drop(columns=["label"]).merge(last[["sample_id", "label"]], on="sample_id")
    return merged[merged["label"].isin(ft.labels)].assign(source="pseudo")
