"""The ``evaluate`` and ``report`` stages of a job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
    from mer.encoders import feature_ref
    from mer.store import open_store

    role, spec = sorted(job.encoders.items())[0]
    ref = feature_ref(role, spec)
    features = open_store(job.store).read(ref.alias, ref.version, split="test")
    return pd.DataFrame({"sample_id": features.ids, "label": features.label}), f"store {job.store} ({role})"


def evaluate(job: Job, echo=print) -> dict:
    """Score ``run_dir/predictions_test.csv``; write ``metrics.json`` and ``confusion_test.png``."""
    from mer.report.metrics import evaluate_file

    run_dir = Path(job.run_dir)
    predictions = run_dir / "predictions_test.csv"
    if not predictions.exists():
        raise MerError(f"{predictions}: no predictions (run the train stage first)")
    truth, source = test_labels(job)
    truth_csv = run_dir / "truth_test.csv"
    truth.to_csv(truth_csv, index=False)
    systems = supervised_systems(job, truth)
    main = systems.get(job.train.model, {})
    metrics = evaluate_file(predictions, truth_csv, run_dir, labels=job.labels,
                            extra={"cv_train": main.get("cv"), "systems": systems,
                                   "focus_classes": list(job.selftrain.prior_classes)})
    line = f"   test weighted F1 {metrics['weighted_f1']:.4f}, accuracy {metrics['accuracy']:.4f}"
    for name, system in systems.items():
        cv = system["cv"]
        line += (f"; {name} per seed {np.mean(system['test']['waf']):.4f} on test"
                 + (f", {cv['mean']:.4f} cross-validated on train ({cv['scheme']})" if cv["mean"] is not None else ""))
    echo(f"{line} (n={metrics['n']}, truth from {source})")
    cv = main.get("cv") or {}
    return {"weighted_f1": metrics["weighted_f1"], "accuracy": metrics["accuracy"], "files": metrics["files"],
            "cv_weighted_f1": cv.get("mean")}


def supervised_systems(job: Job, truth) -> dict:
    """Per system of the train stage (``train.model``, ``train.baseline``): CV score and per-seed test scores.

    Test scores are per seed (mean +- std in the report) with F1 of the
    ``selftrain.prior_classes``; empty when the train stage has not run.
    """
    from mer.selftrain.rounds import score, seed_cell
    from mer.train.cache import predict_cached
    from mer.train.stage import SYSTEMS_FILE

    path = Path(job.run_dir) / SYSTEMS_FILE
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    truth = truth.dropna(subset=["label"]).astype(str)
    return {name: {"cv": system["cv"],
                   "test": seed_cell([score(predict_cached(Path(c), job.store, "test"), truth, job.labels)
                                      for c in system["checkpoints"]])}
            for name, system in record["systems"].items()}


def report(job: Job, echo=print) -> dict:
    """``report.md``/``report.json``/plots of ``run_dir`` (see :mod:`mer.report.report`)."""
    from mer.report.report import build_report

    return {"files": build_report(job.run_dir)["files"]}
