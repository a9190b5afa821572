"""The ``train`` stage: fit ``train.model`` per seed, ensemble-predict test and unlabeled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mer.config import Job
from mer.train.cache import fit_many
from mer.train.checkpoint import read_config
from mer.train.data import plan_read
from mer.train.predict import predict, write_predictions


def run(job: Job) -> dict:
    """Fit (or reuse) one checkpoint per seed in the fit cache ``run_dir/checkpoints/``; write predictions.

    Writes ``run_dir/predictions_test.csv`` and ``run_dir/predictions_unlabeled.csv``
    (seed ensemble: mean probabilities) and ``run_dir/cv.json`` (the fits'
    cross-validated weighted F1 on the labeled train split, which the evaluate
    stage puts beside the test figure). Self-training's round 0 reuses these fits.
    """
    run_dir = Path(job.run_dir)
    plan = plan_read(job)
    fits = fit_many(job, [(job.train.model, seed) for seed in job.train.seeds], plan=plan)
    checkpoints = list(fits.values())
    cv = cv_summary(job.train.model, checkpoints)
    (run_dir / "cv.json").write_text(json.dumps(cv, indent=2))
    summary = {"model": job.train.model, "checkpoints": [str(c) for c in checkpoints],
               "read_path": "streaming" if plan.streaming else "numpy", "cv_weighted_f1": cv["mean"]}
    for split in ("test", "unlabeled"):
        frame = predict(checkpoints, job.store, split)
        summary[f"predictions_{split}"] = str(write_predictions(frame, run_dir / f"predictions_{split}.csv"))
        summary[f"n_{split}"] = len(frame)
    return summary


def cv_summary(model: str, checkpoints: list[Path]) -> dict:
    """Per-seed cross-validated (or holdout) weighted F1 of fits, with mean and std."""
    cvs = [read_config(c)["cv"] for c in checkpoints]
    scores = [c["weighted_f1"] for c in cvs if c["weighted_f1"] is not None]
    return {"model": model, "scheme": cvs[0]["scheme"] if cvs else "none", "per_seed": scores,
            "mean": float(np.mean(scores)) if scores else None, "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0 if scores else None}
