"""Fits and predictions cached by content, shared by the train, selftrain and ablation stages.

A fit lives in ``<fits_dir>/<model>_s<seed>_<key>/`` where the key hashes what
the weights depend on: the training config (seeds aside), the encoders, the
labels, the manifest, the store tables *and their pinned versions*, and the
exact extra (pseudo-)labels. A folder with ``done.json`` is a finished fit and
is reused as is; anything else (a crash mid-fit) is trained again, and Ray
Train resumes it from its own newest checkpoint. Re-extracting features makes a
new table version, hence a new key: a stale fit is never reused.

The train stage and the self-training rounds use the same ``fits_dir``
(``run_dir/checkpoints``), so round 0 of self-training reuses the train stage's
fits instead of training them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from mer.config import Job
from mer.train.data import ReadPlan, plan_read

DONE = "done.json"
#: Training keys that change how a fit runs, not its weights (a resumed fit ends
#: with the same weights whenever it checkpointed): changing them reuses the cache.
EXECUTION_ONLY = ("checkpoint_every_s", "concurrent_fits")


def digest(obj) -> str:
    """Stable sha1 of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(job: Job) -> dict:
    """What a fit of ``job`` depends on besides the model name, seed and extra labels."""
    train = dataclasses.asdict(job.train)
    for key in ("seeds", *EXECUTION_ONLY):
        train.pop(key)
    return {
        "train": train,
        "encoders": {r: dataclasses.asdict(s) for r, s in sorted(job.encoders.items())},
        "labels": job.labels,
        "manifest": str(job.manifest),
        "store": str(job.store),
    }


def fits_dir_of(job: Job) -> Path:
    """The default fit cache of a job: ``run_dir/checkpoints``."""
    return Path(job.run_dir) / "checkpoints"


def fit_cached(job: Job, model: str, seed: int, extra: pd.DataFrame | None = None,
               fits_dir: Path | None = None, plan: ReadPlan | None = None) -> Path:
    """Train one model/seed on train + ``extra`` (``sample_id,label``) unless that exact fit is on disk.

    Returns:
        The checkpoint folder.
    """
    from mer.train.fit import fit

    plan = plan or plan_read(job)
    tables = {r: [t.table, t.table_version] for r, t in sorted(plan.roles.items())}
    labels_key = [] if extra is None else sorted(zip(extra["sample_id"].astype(str), extra["label"].astype(str)))
    key = digest([fingerprint(job), tables, model, seed, labels_key])[:12]
    out_dir = Path(fits_dir or fits_dir_of(job)) / f"{model}_s{seed}_{key}"
    done = out_dir / DONE
    if done.exists():
        return out_dir
    extra_labels = None if not labels_key else extra[["sample_id", "label"]].reset_index(drop=True)
    fit(job, model, seed, out_dir, extra_labels=extra_labels, plan=plan)
    done.write_text(json.dumps({"model": model, "seed": seed, "pseudo_labels": len(labels_key), "tables": tables}))
    return out_dir


def fit_many(job: Job, runs: list[tuple[str, int]], extra: pd.DataFrame | None = None,
             fits_dir: Path | None = None, plan: ReadPlan | None = None) -> dict[tuple[str, int], Path]:
    """``fit_cached`` for every ``(model, seed)`` in ``runs``, ``train.concurrent_fits`` at a time.

    Concurrent fits overlap Ray Train's per-run start-up (placement group,
    worker process, data read), which dominates small models' fits; each
    TorchTrainer still asks Ray for its own resources, so they queue when the
    cluster is full.
    """
    plan = plan or plan_read(job)
    workers = max(1, min(job.train.concurrent_fits, len(runs)))
    with ThreadPoolExecutor(workers, thread_name_prefix="mer-fit") as pool:
        futures = {run: pool.submit(fit_cached, job, *run, extra, fits_dir, plan) for run in runs}
        return {run: future.result() for run, future in futures.items()}


def predict_cached(checkpoint: Path, store: str, split: str) -> pd.DataFrame:
    """Predictions of one cached checkpoint on one split, kept beside it."""
    from mer.train.predict import predict

    path = Path(checkpoint) / f"predictions_{split}.csv"
    if path.exists():
        return pd.read_csv(path, dtype={"sample_id": str})
    df = predict(checkpoint, store, split)
    df.to_csv(path, index=False)
    return df
