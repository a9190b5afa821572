"""The ``train`` stage: fit ``train.model`` per seed, ensemble-predict test and unlabeled."""

from __future__ import annotations

from pathlib import Path

from mer.config import Job
from mer.train.cache import fit_many
from mer.train.data import plan_read
from mer.train.predict import predict, write_predictions


def run(job: Job) -> dict:
    """Fit (or reuse) one checkpoint per seed in the fit cache ``run_dir/checkpoints/``; write predictions.

    Writes ``run_dir/predictions_test.csv`` and ``run_dir/predictions_unlabeled.csv``
    (seed ensemble: mean probabilities). Self-training's round 0 reuses these fits.
    """
    run_dir = Path(job.run_dir)
    plan = plan_read(job)
    fits = fit_many(job, [(job.train.model, seed) for seed in job.train.seeds], plan=plan)
    checkpoints = list(fits.values())
    summary = {"model": job.train.model, "checkpoints": [str(c) for c in checkpoints],
               "read_path": "streaming" if plan.streaming else "numpy"}
    for split in ("test", "unlabeled"):
        frame = predict(checkpoints, job.store, split)
        summary[f"predictions_{split}"] = str(write_predictions(frame, run_dir / f"predictions_{split}.csv"))
        summary[f"n_{split}"] = len(frame)
    return summary
