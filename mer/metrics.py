"""Scores of predictions against the truth: the paper's metric and friends (no Ray, no model).

Weighted F1 is sklearn's ``f1_score(average="weighted")`` (the MER2024/MER2025
metric, as the organisers' ``score_calculation`` computes it); accuracy,
per-class precision/recall/F1/support and the confusion matrix come from the
same sklearn functions, so any reader can recompute them. Every stage that
scores (train, self-training, robustness, ablation, evaluate) and ``mer
evaluate`` use these functions; :func:`check_predictions` is what a file from
outside must pass before it is scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from mer.errors import MerError


class EvaluationError(MerError):
    """Predictions that cannot be scored (no truth, no overlap, bad columns or values)."""


def label_frame(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """``sample_id,label`` of a table (ids as text); EvaluationError naming ``what`` when a column is missing."""
    missing = {"sample_id", "label"} - set(df.columns)
    if missing:
        raise EvaluationError(f"{what}: missing column(s) {', '.join(sorted(missing))} (found: {', '.join(map(str, df.columns))})")
    out = df[["sample_id", "label"]].copy()
    out["sample_id"] = out["sample_id"].astype(str)
    return out


def evaluate(pred_df: pd.DataFrame, truth_df: pd.DataFrame, labels: list[str]) -> dict:
    """Weighted F1, accuracy, per-class scores and confusion over samples in both tables.

    Args:
        pred_df: ``sample_id,label`` (extra columns ignored).
        truth_df: ``sample_id,label``; rows without a label are ignored.
        labels: label order of the per-class table and the confusion matrix.

    Returns:
        ``{weighted_f1, accuracy, per_class: {label: {precision, recall, f1, support}},
        confusion (rows = truth, columns = prediction), labels, n, n_missing}``
        where ``n_missing`` counts truth rows without a prediction.
    """
    truth = label_frame(truth_df, "truth").dropna(subset=["label"])
    truth = truth[truth["label"].astype(str).str.len() > 0]
    merged = truth.merge(label_frame(pred_df, "predictions"), on="sample_id", suffixes=("_true", "_pred"))
    if merged.empty:
        raise EvaluationError("no prediction matches a labeled sample_id of the truth")
    y_true = merged["label_true"].astype(str).to_numpy()
    y_pred = merged["label_pred"].astype(str).to_numpy()
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise EvaluationError(f"truth label '{unknown[0]}' is not in the label set ({', '.join(labels)})")
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(labels),
        "n": int(len(merged)),
        "n_missing": int(len(truth) - len(merged)),
    }


def score(pred: pd.DataFrame, truth: pd.DataFrame | None, labels: list[str]) -> dict | None:
    """:func:`evaluate`, or None when there is no truth to score against (a split without labels)."""
    return None if truth is None else evaluate(pred, truth, labels)


def seed_cell(metrics: list[dict | None]) -> dict:
    """Per-seed metric dicts -> lists the report shows as mean +- std: ``waf`` and ``f1_<class>`` per class."""
    ok = [m for m in metrics if m]
    cell = {"waf": [m["weighted_f1"] for m in ok]}
    for c in (ok[0]["per_class"] if ok else {}):
        cell[f"f1_{c}"] = [m["per_class"][c]["f1"] for m in ok]
    return cell


def per_class_f1(metrics: dict | None) -> dict[str, float]:
    """Per-class F1 of one metrics dict, rounded (for summaries)."""
    return {c: float(np.round(m["f1"], 4)) for c, m in (metrics or {}).get("per_class", {}).items()}


def _rows(frame: pd.DataFrame, mask: np.ndarray, first_row: int) -> str:
    """``row 3 (id a), row 9 (id b)`` for the first few rows where ``mask`` holds (file line numbers)."""
    where = np.flatnonzero(mask)
    shown = ", ".join(f"row {i + first_row} (sample_id {frame['sample_id'].iloc[i]!r})" for i in where[:3])
    return shown + (f" and {len(where) - 3} more" if len(where) > 3 else "")


def check_predictions(pred: pd.DataFrame, what: str, labels: list[str], first_row: int = 2) -> None:
    """EvaluationError naming the file and rows when a predictions table cannot be scored as it is.

    Refused: a missing ``sample_id`` or ``label``, a duplicated ``sample_id``, a
    label outside ``labels`` (case matters: the organisers' scorer matches the
    strings exactly) and a ``p_<label>`` column with a missing or non-finite
    value or a value outside [0, 1].
    """
    frame = label_frame(pred, what)
    bad_id = frame["sample_id"].isin(["", "nan", "None"]).to_numpy() | pred["sample_id"].isna().to_numpy()
    if bad_id.any():
        raise EvaluationError(f"{what}: {_rows(frame, bad_id, first_row)}: no sample_id")
    dup = frame["sample_id"].duplicated(keep="first").to_numpy()
    if dup.any():
        raise EvaluationError(f"{what}: {_rows(frame, dup, first_row)}: sample_id appears more than once")
    missing = pred["label"].isna().to_numpy() | (frame["label"].astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise EvaluationError(f"{what}: {_rows(frame, missing, first_row)}: no label")
    unknown = ~frame["label"].isin(labels).to_numpy()
    if unknown.any():
        first = frame["label"].iloc[int(np.flatnonzero(unknown)[0])]
        raise EvaluationError(f"{what}: {_rows(frame, unknown, first_row)}: label {first!r} is not one of "
                              f"{', '.join(labels)} (labels are matched exactly)")
    for col in [c for c in pred.columns if str(c).startswith("p_")]:
        values = pd.to_numeric(pred[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            raise EvaluationError(f"{what}: {_rows(frame, bad, first_row)}: {col} is not a probability in [0, 1]")


def coverage(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(truth ids without a prediction, predicted ids without a truth row)``, each sorted."""
    have, want = set(pred["sample_id"].astype(str)), set(truth["sample_id"].astype(str))
    return sorted(want - have), sorted(have - want)
