"""The ``evaluate`` and ``report`` stages of a job."""

from __future__ import annotations

import json
from pathlib import Path

from mer.config import Job
from mer.errors import MerError


def test_labels(job: Job):
    """``sample_id,label`` of the test split and where it came from: the manifest, else the store."""
    import pandas as pd

    if Path(job.manifest).exists():
        from mer.corpus.manifest import read_manifest

        manifest = read_manifest(job.manifest)
        truth = manifest.loc[manifest["split"] == "test", ["sample_id", "label"]]
        if truth["label"].notna().any():
            return truth, job.manifest
    from mer.encoders import encoder_version
    from mer.store import open_store

    role, spec = sorted(job.encoders.items())[0]
    features = open_store(job.store).read(spec.alias, encoder_version(spec), split="test")
    return pd.DataFrame({"sample_id": features.ids, "label": features.label}), f"store {job.store} ({role})"


def evaluate(job: Job) -> dict:
    """Score ``run_dir/predictions_test.csv``; write ``metrics.json`` and ``confusion_test.png``."""
    from mer.report.metrics import evaluate_file

    run_dir = Path(job.run_dir)
    predictions = run_dir / "predictions_test.csv"
    if not predictions.exists():
        raise MerError(f"{predictions}: no predictions (run the train stage first)")
    truth, source = test_labels(job)
    truth_csv = run_dir / "truth_test.csv"
    truth.to_csv(truth_csv, index=False)
    cv_path = run_dir / "cv.json"
    cv = json.loads(cv_path.read_text()) if cv_path.exists() else None
    metrics = evaluate_file(predictions, truth_csv, run_dir, labels=job.labels, extra={"cv_train": cv})
    line = f"   test weighted F1 {metrics['weighted_f1']:.4f}, accuracy {metrics['accuracy']:.4f}"
    if cv and cv["mean"] is not None:
        line += f"; {cv['model']} cross-validated on train ({cv['scheme']}) {cv['mean']:.4f}"
    print(f"{line} (n={metrics['n']}, truth from {source})")
    return {"weighted_f1": metrics["weighted_f1"], "accuracy": metrics["accuracy"], "files": metrics["files"],
            "cv_weighted_f1": cv["mean"] if cv else None}


def report(job: Job) -> dict:
    """``report.md``/``report.json``/plots of ``run_dir`` (see :mod:`mer.report.report`)."""
    from mer.report.report import build_report

    return {"files": build_report(job.run_dir)["files"]}
