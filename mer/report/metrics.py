"""``mer evaluate`` and the evaluate stage's files: a predictions (or submission) file scored against the truth.

The scoring itself is :mod:`mer.metrics`. Here: reading the two files (a mer
predictions CSV or the organisers' ``name,discrete`` submission; a manifest,
a ``sample_id,label`` truth CSV or the organisers' label file), refusing what
cannot be scored honestly (a duplicated id, a label outside the label set in
any case, a missing label or probability, labeled samples without a
prediction unless asked), and writing ``metrics.json`` plus the confusion
matrix PNG where they cannot overwrite a run's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mer.corpus.labels import read_labels
from mer.metrics import EvaluationError, check_predictions, coverage, evaluate
from mer.runfolder import CONFIG, write_json

#: Labels of a file without ``p_<label>`` columns (a submission): the organisers' six, in their order.
DEFAULT_LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


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
        f"accuracy     {metrics['accuracy']:.4f}   (n={metrics['n']}, labeled without prediction: "
        f"{metrics['n_missing']}, predictions without truth: {metrics.get('n_extra', 0)})",
        "",
        f"{'label':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name, s in metrics["per_class"].items():
        lines.append(f"{name:<10} {s['precision']:>9.4f} {s['recall']:>7.4f} {s['f1']:>7.4f} {s['support']:>8d}")
    return "\n".join(lines)


def _outputs(pred_csv: Path, out_dir: Path | None, run_owned: bool, force: bool) -> tuple[Path, Path]:
    """Where metrics and the confusion PNG go; never over a run's own ``metrics.json`` unless asked."""
    if out_dir is None:
        return pred_csv.with_suffix(".metrics.json"), pred_csv.with_suffix(".confusion.png")
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"--out {out_dir}: is a file; name a folder")
    if not run_owned and not force and (out_dir / CONFIG).exists() and (out_dir / "metrics.json").exists():
        raise EvaluationError(f"--out {out_dir}: is a run folder whose metrics.json the evaluate stage wrote; "
                              "choose another folder, or pass --force to replace it")
    return out_dir / "metrics.json", out_dir / "confusion_test.png"


def _truth(path: Path) -> pd.DataFrame:
    """The labeled rows of a truth file; every row of a label file needs its label (a manifest's unlabeled rows do not)."""
    truth = read_labels(path, "truth")
    manifest = "split" in pd.read_csv(path, nrows=0).columns if path.suffix.lower() == ".csv" else True
    labeled = truth["label"].notna() & (truth["label"].astype(str).str.strip() != "")
    if not manifest and not labeled.all():
        i = int(np.flatnonzero(~labeled.to_numpy())[0])
        raise EvaluationError(f"truth {path}: row {i + truth.attrs['first_row']} "
                              f"(sample_id {truth['sample_id'].iloc[i]!r}): no label")
    truth = truth[labeled].reset_index(drop=True)
    dup = truth["sample_id"].duplicated()
    if dup.any():
        raise EvaluationError(f"truth {path}: sample_id {truth['sample_id'][dup].iloc[0]!r} appears more than once")
    return truth


def evaluate_file(pred_csv: str | Path, truth_csv: str | Path | None, out_dir: str | Path | None,
                  labels: list[str] | None = None, extra: dict | None = None, run_owned: bool = False,
                  allow_missing: bool = False, force: bool = False) -> dict:
    """Score a predictions CSV or a submission; write metrics JSON and the confusion matrix PNG.

    Args:
        pred_csv: ``sample_id,label,p_<label>...`` (``mer predict``) or ``name,discrete`` (a submission).
        truth_csv: manifest, truth CSV or organisers' label CSV; ``None`` looks
            for ``manifest.csv`` or ``truth.csv`` beside the predictions.
        out_dir: folder for ``metrics.json`` and ``confusion_test.png``; default:
            ``<predictions>.metrics.json`` and ``<predictions>.confusion.png`` beside the file.
        labels: label order (default: the ``p_<label>`` columns, else the organisers' six).
        extra: more keys for the metrics JSON (the evaluate stage adds CV scores).
        run_owned: the evaluate stage writing its own run folder.
        allow_missing: score the labeled samples that have a prediction even if some have none.
        force: replace a run folder's ``metrics.json`` given as ``out_dir``.

    Raises:
        EvaluationError: a file that cannot be scored as it is (the message names file, row and problem).
    """
    pred_csv = Path(pred_csv)
    metrics_json, confusion_png = _outputs(pred_csv, None if out_dir is None else Path(out_dir), run_owned, force)
    pred = read_labels(pred_csv, "predictions")
    raw = pd.read_csv(pred_csv, dtype=str, keep_default_na=False, na_values=[""])
    if truth_csv is None:
        found = [p for p in (pred_csv.parent / "manifest.csv", pred_csv.parent / "truth.csv") if p.exists()]
        if not found:
            raise EvaluationError(f"{pred_csv}: no --truth given and no manifest.csv/truth.csv beside it")
        truth_csv = found[0]
    truth = _truth(Path(truth_csv))
    if labels is None:
        labels = [c[2:] for c in raw.columns if c.startswith("p_")] or list(DEFAULT_LABELS)
    check_predictions(raw.assign(sample_id=pred["sample_id"], label=pred["label"]), str(pred_csv), labels,
                      pred.attrs["first_row"])
    missing, unscored = coverage(pred, truth)
    if missing and not allow_missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise EvaluationError(f"{pred_csv}: {len(missing)} of {len(truth)} labeled samples of {truth_csv} have no "
                              f"prediction ({shown}); pass --allow-missing to score the others")
    metrics = evaluate(pred, truth, labels)
    metrics.update(n_extra=len(unscored), predictions=str(pred_csv), truth=str(truth_csv), **(extra or {}))
    write_json(metrics_json, metrics)
    plot_confusion(metrics, confusion_png)
    metrics["files"] = [str(metrics_json), str(confusion_png)]
    return metrics
