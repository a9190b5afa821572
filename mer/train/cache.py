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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from mer.config import Job
from mer.train.checkpoint import read_config
from mer.train.data import ReadPlan, plan_read

DONE = "done.json"
#: ``train`` keys that say which fits a stage makes, not how one is made.
NOT_RECIPE = ("seeds", "model", "baseline")


def digest(obj) -> str:
    """Stable sha1 of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def non_default(obj) -> dict:
    """A dataclass's fields that differ from their defaults: a new knob left at its default changes no hash."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value != default:
            out[f.name] = value
    return out


def fingerprint(job: Job) -> dict:
    """What a fit of ``job`` depends on besides the model name, seed and extra labels.

    The recipe alone: ``execution`` (workers, GPUs, budgets, checkpoint cadence)
    changes how a fit runs, not its weights (a resumed fit ends with the same
    weights), so changing it reuses the cache. Settings at their defaults are
    left out, so adding a knob keeps every cached fit.
    """
    train = non_default(job.train)
    for key in NOT_RECIPE:
        train.pop(key, None)
    return {
        "train": train,
        "encoders": {r: non_default(s) for r, s in sorted(job.encoders.items())},
        "labels": job.labels,
        "manifest": str(job.manifest),
        "store": str(job.store),
    }


def fits_dir_of(job: Job) -> Path:
    """The default fit cache of a job: ``run_dir/checkpoints``."""
    return Path(job.run_dir) / "checkpoints"


def labels_key(extra: pd.DataFrame | None) -> list:
    """Pseudo-labels ``sample_id,label`` as a sorted list (part of a fit's identity)."""
    return [] if extra is None else sorted(zip(extra["sample_id"].astype(str), extra["label"].astype(str)))


def _tables(plan: ReadPlan) -> dict[str, list]:
    """Role -> [table, pinned Lance version]: the data half of a fit's identity (augmented copies too)."""
    tables = {r: [t.table, t.table_version] for r, t in sorted(plan.roles.items())}
    tables.update({f"augment:{r}": [t.table, t.table_version] for r, t in sorted(plan.augment.items())})
    return tables


def fit_name(job: Job, plan: ReadPlan, model: str, seed: int, extra: pd.DataFrame | None = None) -> str:
    """``<model>_s<seed>_<key>``: the one hash of everything a fit's weights depend on.

    The key covers the recipe (:func:`fingerprint`), the store tables and their
    pinned Lance versions, the model, the seed and the exact extra labels. It
    names the fit cache folder and the fit's Ray Train runs.
    """
    key = digest([fingerprint(job), _tables(plan), model, seed, labels_key(extra)])[:12]
    return f"{model}_s{seed}_{key}"


def fit_path(job: Job, model: str, seed: int, extra: pd.DataFrame | None = None,
             fits_dir: Path | None = None, plan: ReadPlan | None = None) -> Path:
    """The cache folder of one fit (which may not exist yet)."""
    return Path(fits_dir or fits_dir_of(job)) / fit_name(job, plan or plan_read(job), model, seed, extra)


def fit_cached(job: Job, model: str, seed: int, extra: pd.DataFrame | None = None,
               fits_dir: Path | None = None, plan: ReadPlan | None = None) -> Path:
    """Train one model/seed on train + ``extra`` (``sample_id,label``) unless that exact fit is on disk.

    Returns:
        The checkpoint folder.
    """
    from mer.train.fit import fit

    plan = plan or plan_read(job)
    out_dir = fit_path(job, model, seed, extra, fits_dir, plan)
    done = out_dir / DONE
    if done.exists():
        return out_dir
    pseudo = labels_key(extra)
    extra_labels = None if not pseudo else extra[["sample_id", "label"]].reset_index(drop=True)
    fit(job, model, seed, out_dir, extra_labels=extra_labels, plan=plan)
    done.write_text(json.dumps({"model": model, "seed": seed, "pseudo_labels": len(pseudo), "tables": _tables(plan)}))
    return out_dir


def fit_many(job: Job, runs: list[tuple[str, int]], extra: pd.DataFrame | None = None,
             fits_dir: Path | None = None, plan: ReadPlan | None = None) -> dict[tuple[str, int], Path]:
    """``fit_cached`` for every ``(model, seed)`` in ``runs``, ``execution.concurrent_fits`` at a time.

    Concurrent fits overlap Ray Train's per-run start-up (placement group,
    worker process, data read), which dominates small models' fits; each
    TorchTrainer still asks Ray for its own resources, so they queue when the
    cluster is full. A progress bar counts finished fits and shows the best
    validation (CV or holdout) weighted F1 so far.
    """
    from tqdm import tqdm

    plan = plan or plan_read(job)
    workers = max(1, min(job.execution.concurrent_fits, len(runs)))
    best = None
    with ThreadPoolExecutor(workers, thread_name_prefix="mer-fit") as pool, \
            tqdm(total=len(runs), desc="fits", unit="fit", disable=len(runs) < 2) as bar:
        futures = {pool.submit(fit_cached, job, *run, extra, fits_dir, plan): run for run in runs}
        done = {}
        for future in as_completed(futures):
            done[futures[future]] = path = future.result()
            score = read_config(path).get("cv", {}).get("weighted_f1")
            if score is not None and (best is None or score > best[0]):
                best = (score, futures[future][0])
            if best:
                bar.set_postfix_str(f"best val WAF {best[0]:.3f} ({best[1]})")
            bar.update()
        return {run: done[run] for run in runs}


def predict_cached(checkpoint: Path, store: str, split: str) -> pd.DataFrame:
    """Predictions of one cached checkpoint on one split, kept beside it."""
    from mer.train.predict import predict

    path = Path(checkpoint) / f"predictions_{split}.csv"
    if path.exists():
        return pd.read_csv(path, dtype={"sample_id": str})
    df = predict(checkpoint, store, split)
    df.to_csv(path, index=False)
    return df
