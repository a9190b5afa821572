"""Scores of a predictions table against the truth: the paper's metric and friends.

Weighted F1 is sklearn's ``f1_score(average="weighted")`` (the MER2024 metric);
accuracy, per-class precision/recall/F1/support and the confusion matrix come
from the same sklearn functions, so any reader can recompute them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from mer.errors import MerError


class EvaluationError(MerError):
    """Predictions that cannot be scored (no truth, no overlap, bad columns)."""


def _frame(df: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = {"sample_id", "label"} - set(df.columns)
    if missing:
        raise EvaluationError(f"{what}: missing column(s) {', '.join(sorted(missing))}")
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
    truth = _frame(truth_df, "truth").dropna(subset=["label"])
    truth = truth[truth["label"].astype(str).str.len() > 0]
    merged = truth.merge(_frame(pred_df, "predictions"), on="sample_id", suffixes=("_true", "_pred"))
    if merged.empty:
        raise EvaluationError("no prediction matches a labeled sample_id of the truth")
    y_true = merged["label_true"].astype(str).to_numpy()
    y_pred = merged["label_pred"].astype(str).to_numpy()
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise EvaluationError(f"truth label '{unknown[0]}' is not in the label set ({', '.join(labels)})")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
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


def plot_confusion(metrics: dict, path: str | Path) -> Path:
    """Confusion matrix PNG (counts, rows = truth) with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics["confusion"])
    labels = metrics["labels"]
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"weighted F1 {metrics['weighted_f1']:.4f}, accuracy {metrics['accuracy']:.4f}")
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > top / 2 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(metrics: dict) -> str:
    """Plain-text summary: weighted F1, accuracy and the per-class table."""
    lines = [
        f"weighted F1  {metrics['weighted_f1']:.4f}",
        f"accuracy     {metrics['accuracy']:.4f}   (n={metrics['n']}, without prediction: {metrics['n_missing']})",
        "",
        f"{'label':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name, s in metrics["per_class"].items():
        lines.append(f"{name:<10} {s['precision']:>9.4f} {s['recall']:>7.4f} {s['f1']:>7.4f} {s['support']:>8d}")
    return "\n".join(lines)


def read_truth(path: str | Path) -> pd.DataFrame:
    """``sample_id,label`` from a truth CSV or a manifest (CSV/JSONL; other columns ignored)."""
    path = Path(path)
    try:
        if path.suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=path.suffix == ".jsonl", dtype={"sample_id": str})
        else:
            df = pd.read_csv(path, dtype={"sample_id": str, "label": str}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise EvaluationError(f"{path}: no such file") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise EvaluationError(f"{path}: not a CSV/JSONL table ({str(exc).splitlines()[0]})") from None
    return _frame(df, str(path))


def evaluate_file(pred_csv: str | Path, truth_csv: str | Path | None, out_dir: str | Path | None,
                  labels: list[str] | None = None, extra: dict | None = None) -> dict:
    """Score a predictions CSV; write ``metrics.json`` and ``confusion_test.png`` into ``out_dir``.

    Args:
        pred_csv: ``sample_id,label,p_<label>...`` as written by ``mer predict``.
        truth_csv: truth CSV or manifest; ``None`` looks for ``manifest.csv``
            or ``truth.csv`` beside the predictions.
        out_dir: output folder (default: the predictions' folder).
        labels: label order (default: the ``p_<label>`` columns, else the sorted
            labels seen).
        extra: more keys for ``metrics.json`` (the evaluate stage adds the
            train split's cross-validated score as ``cv_train``).
    """
    pred_csv = Path(pred_csv)
    pred = read_truth(pred_csv)
    if truth_csv is None:
        found = [p for p in (pred_csv.parent / "manifest.csv", pred_csv.parent / "truth.csv") if p.exists()]
        if not found:
            raise EvaluationError(f"{pred_csv}: no --truth given and no manifest.csv/truth.csv beside it")
        truth_csv = found[0]
    truth = read_truth(truth_csv)
    if labels is None:
        header = pd.read_csv(pred_csv, nrows=0).columns
        labels = [c[2:] for c in header if c.startswith("p_")]
        labels = labels or sorted(set(truth["label"].dropna()) | set(pred["label"].dropna()))
    metrics = evaluate(pred, truth, labels)
    metrics.update(predictions=str(pred_csv), truth=str(truth_csv), **(extra or {}))
    out = Path(out_dir) if out_dir else pred_csv.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion(metrics, out / "confusion_test.png")
    metrics["files"] = [str(out / "metrics.json"), str(out / "confusion_test.png")]
    return metrics
