"""The ``train`` stage: fit ``train.model`` (and the ``train.baseline`` floor) per seed, ensemble-predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mer.config import Job
from mer.train.cache import fit_many
from mer.train.checkpoint import read_config
from mer.train.data import plan_read
from mer.train.predict import predict, write_predictions

#: What the train stage leaves for the evaluate stage: per system, its checkpoints and CV scores.
SYSTEMS_FILE = "train.json"


def run(job: Job, echo=print) -> dict:
    """Fit (or reuse) one checkpoint per seed in the fit cache ``run_dir/checkpoints/``; write predictions.

    Writes ``run_dir/predictions_test.csv`` and ``run_dir/predictions_unlabeled.csv``
    (``train.model``'s seed ensemble: mean probabilities),
    ``run_dir/predictions_test_<baseline>.csv`` (the baseline's), and
    ``run_dir/train.json``: per system its checkpoints and their
    cross-validated (or holdout) weighted F1 on the labeled train split, which
    the evaluate stage puts beside the test figures. Self-training's round 0
    reuses these fits.
    """
    run_dir = Path(job.run_dir)
    plan = plan_read(job)
    systems = [job.train.model] + ([job.train.baseline] if job.train.baseline not in (None, job.train.model) else [])
    fits = fit_many(job, [(m, seed) for m in systems for seed in job.train.seeds], plan=plan)
    record = {"model": job.train.model, "baseline": job.train.baseline, "systems": {}}
    for model in systems:
        checkpoints = [fits[(model, seed)] for seed in job.train.seeds]
        record["systems"][model] = {"checkpoints": [str(c) for c in checkpoints],
                                    "cv": cv_summary(model, checkpoints)}
    (run_dir / SYSTEMS_FILE).write_text(json.dumps(record, indent=2))
    main = record["systems"][job.train.model]
    summary = {"model": job.train.model, "checkpoints": main["checkpoints"],
               "read_path": "streaming" if plan.streaming else "numpy", "cv_weighted_f1": main["cv"]["mean"]}
    for split in ("test", "unlabeled"):
        frame = predict(main["checkpoints"], job.store, split)
        summary[f"predictions_{split}"] = str(write_predictions(frame, run_dir / f"predictions_{split}.csv"))
        summary[f"n_{split}"] = len(frame)
    if len(systems) > 1:
        base = record["systems"][systems[1]]
        path = run_dir / f"predictions_test_{systems[1]}.csv"
        summary["predictions_test_baseline"] = str(write_predictions(predict(base["checkpoints"], job.store, "test"), path))
    return summary


def cv_summary(model: str, checkpoints: list[Path]) -> dict:
    """Per-seed cross-validated (or holdout) weighted F1 of fits, with mean and std."""
    cvs = [read_config(c)["cv"] for c in checkpoints]
    scores = [c["weighted_f1"] for c in cvs if c["weighted_f1"] is not None]
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return {"model": model, "scheme": cvs[0]["scheme"] if cvs else "none", "per_seed": scores,
            "mean": float(np.mean(scores)) if scores else None, "std": std if scores else None}
