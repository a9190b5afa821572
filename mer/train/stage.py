"""The ``train`` stage: fit ``train.model`` (and the ``train.baseline`` floor) per seed; publish the seed ensemble.

It is also where a job becomes the settings the training code below takes
(:func:`fit_settings`): the selftrain, robustness, ablation and tune stages
unpack their job through it.
"""

from __future__ import annotations

import numpy as np

from mer.config import Job, TrainConfig
from mer.errors import MerError
from mer.metrics import score, seed_cell
from mer.runfolder import ENSEMBLE, FinalPredictor, RunFolder, write_predictions
from mer.train.cache import fit_many, predict_cached
from mer.train.checkpoint import read_config
from mer.train.settings import FitSettings

#: ``train.select``: publish ``train.model``, or whichever of model and baseline cross-validates better on train.
SELECT = ("model", "cv")


def fit_settings(job: Job, fits_dir: str | None = None) -> FitSettings:
    """What the job's fits read and how they run (``fits_dir`` default: ``run_dir/checkpoints``)."""
    return FitSettings(
        name=job.name, store=job.store, manifest=job.manifest, labels=list(job.labels), encoders=job.streams(),
        train=job.train, execution=job.execution, run_dir=job.run_dir,
        fits_dir=str(fits_dir or RunFolder(job.run_dir).checkpoints), config_yaml=job.to_yaml(),
    )


def check(job: Job) -> None:
    """Names the train stage needs, checked before any stage runs."""
    from mer.models import check_model

    check_model(job.train.model, job.streams(), "train.model", job.train)
    if job.train.select not in SELECT:
        raise MerError(f"train.select: expected one of {', '.join(SELECT)}, got {job.train.select!r}")
    if job.train.baseline:
        check_model(job.train.baseline, job.streams(), "train.baseline", job.train)


def run(job: Job, echo=print) -> dict:
    """Fit (or reuse) one checkpoint per seed in the fit cache ``run_dir/checkpoints/``; publish predictions.

    Writes ``train.json`` (per system: its checkpoints, their cross-validated
    weighted F1 on the labeled train split and, where the test split has
    labels, their per-seed test scores), ``predictions_test_<system>.csv`` per
    system and ``published`` (the system ``train.select`` chose), and publishes
    that system's seed ensemble (mean probabilities) as the run's predictor: ``predictor.json``, ``predictions_test.csv`` and
    ``predictions_unlabeled.csv``. Self-training's round 0 reuses these fits.
    """
    from mer.corpus.labels import split_labels

    run = RunFolder(job.run_dir)
    fit = fit_settings(job)
    plan = fit.plan()
    systems = [job.train.model] + ([job.train.baseline] if job.train.baseline not in (None, job.train.model) else [])
    fits = fit_many(fit, [(m, seed) for m in systems for seed in job.train.seeds], plan=plan)
    truth, _ = split_labels(job.manifest, job.store, job.streams(), "test")
    record = {"model": job.train.model, "baseline": job.train.baseline, "systems": {}}
    checkpoints = {m: [fits[(m, seed)] for seed in job.train.seeds] for m in systems}
    for model in systems:
        record["systems"][model] = {"checkpoints": [run.relative(c) for c in checkpoints[model]],
                                    "cv": cv_summary(model, checkpoints[model])}
    published = record["published"] = choose(job.train, {m: s["cv"] for m, s in record["systems"].items()})
    if published != job.train.model:
        echo(f"   publishing {published}: it cross-validates better on train than {job.train.model} (train.select: cv)")
    predictions = {}
    for model in systems:
        per_seed = predict_cached(checkpoints[model], job.store, "test", job.execution)
        ensemble = _mean(per_seed, job.labels)
        write_predictions(ensemble, run.predictions("test", model))
        record["systems"][model]["test"] = (seed_cell([score(p, truth, job.labels) for p in per_seed])
                                            if truth is not None else None)
        if model == published:
            predictions["test"] = ensemble
            predictions["unlabeled"] = _mean(predict_cached(checkpoints[model], job.store, "unlabeled",
                                                            job.execution), job.labels)
    run.write("train.json", record)
    main = checkpoints[published]
    paths = run.publish_final(FinalPredictor(ENSEMBLE, list(job.labels), {published: main},
                                             seeds=list(job.train.seeds)), predictions)
    return {"model": published, "checkpoints": [str(c) for c in main],
            "cv_weighted_f1": record["systems"][published]["cv"]["mean"],
            "read_path": (read_config(main[0]).get("read_path") or [None])[0],
            **{f"predictions_{s}": str(p) for s, p in paths.items()},
            **{f"n_{s}": len(f) for s, f in predictions.items()}}


def choose(train: TrainConfig, cv: dict[str, dict]) -> str:
    """The model the train stage publishes: ``train.model``, or under ``select: cv`` the best CV mean (ties: model)."""
    if train.select == "model" or train.baseline is None:
        return train.model
    scored = {m: c["mean"] for m, c in cv.items() if c["mean"] is not None}
    if train.model not in scored:
        return train.model
    return max(scored, key=lambda m: (scored[m], m == train.model))


def _mean(frames: list, labels: list[str]):
    """The seed ensemble: mean probability per sample over the seeds' prediction frames."""
    from mer.train.predict import frame
    from mer.voting import prob_columns

    if any(not f["sample_id"].equals(frames[0]["sample_id"]) for f in frames[1:]):
        raise MerError("the seeds' predictions cover different samples")
    cols = prob_columns(labels)
    mean = np.mean([f[cols].to_numpy(float) for f in frames], axis=0)
    return frame(frames[0]["sample_id"].to_numpy(), mean, labels)


def cv_summary(model: str, checkpoints: list) -> dict:
    """Per-seed cross-validated (or holdout) weighted F1 of fits, with mean and std."""
    cvs = [read_config(c)["cv"] for c in checkpoints]
    scores = [c["weighted_f1"] for c in cvs if c["weighted_f1"] is not None]
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return {"model": model, "scheme": cvs[0]["scheme"] if cvs else "none", "per_seed": scores,
            "mean": float(np.mean(scores)) if scores else None, "std": std if scores else None,
            "chosen_on": cvs[0].get("chosen_on", "") if cvs else "", "grouped": bool(cvs and cvs[0].get("grouped"))}
