"""Fits and predictions cached by content, shared by the train, selftrain, robustness and ablation stages.

A fit lives in ``<fits_dir>/<model>_s<seed>_<key>/`` (:func:`mer.train.key.fit_name`).
A folder with ``done.json`` is a finished fit and is reused as is; anything else
(a crash mid-fit) is trained again, and Ray Train resumes it from its own
newest checkpoint. Re-extracting features makes a new table version, hence a
new key: a stale fit is never reused.

The train stage and the self-training rounds use the same ``fits_dir``
(``run_dir/checkpoints``), so round 0 of self-training reuses the train stage's
fits instead of training them again. A checkpoint's predictions of a split are
kept beside it, named by the table versions they read, so a split that gained
rows since is predicted again.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from mer.runfolder import read_predictions, write_predictions
from mer.train.checkpoint import read_config
from mer.train.data import ReadPlan
from mer.train.key import digest, fit_name, labels_digest, plan_tables
from mer.train.settings import FitSettings

DONE = "done.json"


def fit_path(fit: FitSettings, model: str, seed: int, extra: pd.DataFrame | None = None,
             plan: ReadPlan | None = None) -> Path:
    """The cache folder of one fit (which may not exist yet)."""
    return Path(fit.fits_dir) / fit_name(fit, plan or fit.plan(), model, seed, extra)


def fit_cached(fit: FitSettings, model: str, seed: int, extra: pd.DataFrame | None = None,
               plan: ReadPlan | None = None) -> Path:
    """Train one model/seed on train + ``extra`` (``sample_id,label``) unless that exact fit is on disk.

    Returns:
        The checkpoint folder.
    """
    from mer.train.fit import fit as train_fit

    plan = plan or fit.plan()
    out_dir = fit_path(fit, model, seed, extra, plan)
    done = out_dir / DONE
    if done.exists():
        return out_dir
    extra_labels = None if extra is None or extra.empty else extra[["sample_id", "label"]].reset_index(drop=True)
    train_fit(fit, model, seed, out_dir, extra_labels=extra_labels, plan=plan)
    done.write_text(json.dumps({"model": model, "seed": seed, "pseudo_labels": 0 if extra_labels is None else len(extra_labels),
                                "pseudo_labels_digest": labels_digest(extra_labels), "tables": plan_tables(plan)}))
    return out_dir


def fit_many(fit: FitSettings, runs: list[tuple[str, int]], extra: pd.DataFrame | None = None,
             plan: ReadPlan | None = None) -> dict[tuple[str, int], Path]:
    """``fit_cached`` for every ``(model, seed)`` in ``runs``, ``execution.concurrent_fits`` at a time.

    Concurrent fits overlap Ray Train's per-run start-up (placement group,
    worker process, data read), which dominates small models' fits; each
    TorchTrainer still asks Ray for its own resources, so they queue when the
    cluster is full. A progress bar counts finished fits and shows the best
    validation weighted F1 so far.
    """
    from tqdm import tqdm

    plan = plan or fit.plan()
    workers = max(1, min(fit.execution.concurrent_fits, len(runs)))
    best = None
    with ThreadPoolExecutor(workers, thread_name_prefix="mer-fit") as pool, \
            tqdm(total=len(runs), desc="fits", unit="fit", disable=len(runs) < 2) as bar:
        futures = {pool.submit(fit_cached, fit, *run, extra, plan): run for run in runs}
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


def _cache_file(checkpoint: Path, split: str, tables_key: str) -> Path:
    return Path(checkpoint) / f"predictions_{split}_{tables_key}.csv"


def predict_cached(checkpoints: list[Path], store: str, split: str, execution, swap: dict | None = None) -> list[pd.DataFrame]:
    """Each checkpoint's predictions of ``split``: from its cache file, else predicted (all missing ones in one pass).

    The cache file is named by the tables and versions the checkpoint reads
    (``swap`` included), so new rows in a table, or a robustness condition's
    corrupted table, never reuse old predictions.
    """
    from mer.store import open_store
    from mer.train.parallel import predict_split
    from mer.train.predict import checkpoint_tables, tables_key

    db = open_store(store, create=False)
    paths = [_cache_file(c, split, digest(tables_key(checkpoint_tables(c, read_config(c), db, swap)))[:10])
             for c in checkpoints]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        frames = predict_split([checkpoints[i] for i in missing], store, split, execution, swap)
        for i, frame in zip(missing, frames):
            write_predictions(frame, paths[i], decimals=None)  # exact: votes compare them with a threshold
    return [read_predictions(p) for p in paths]
