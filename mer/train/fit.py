"""Fit one model on the store's features with Ray Train; export a checkpoint folder.

``fit`` is what the ``train`` stage and self-training call. It pins the store
table versions (:func:`mer.train.data.plan_read`), runs a ``TorchTrainer``
(``ScalingConfig(num_workers, use_gpu, resources_per_worker)``; DDP when
``num_workers > 1``) per fold, and exports the best-validation weights as safetensors plus
``config.json``. Ray Train keeps its own per-epoch checkpoints under
``run_dir/ray_train/<name>`` and ``FailureConfig(max_failures)`` restarts dead
workers from the newest one. The run name hashes everything the result
depends on, so rerunning the same fit resumes (or skips) instead of starting
over, and a changed input starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from mer.config import ExecutionConfig, Job
from mer.errors import MerError
from mer.placement import check_placeable
from mer.train.cache import fit_name
from mer.train.checkpoint import CONFIG, OOF_FILE
from mer.train.crossval import out_of_fold
from mer.train.data import ReadPlan, plan_read
from mer.train.loop import train_loop



def _extra_dict(extra_labels: pd.DataFrame | None, labels: list[str]) -> dict[str, str] | None:
    """Pseudo-labels as ``{sample_id: label}``; MerError on a label outside the set."""
    if extra_labels is None or extra_labels.empty:
        return None
    missing = {"sample_id", "label"} - set(extra_labels.columns)
    if missing:
        raise MerError(f"extra labels: missing column(s) {', '.join(sorted(missing))}")
    unknown = sorted(set(extra_labels["label"]) - set(labels))
    if unknown:
        raise MerError(f"extra labels: label '{unknown[0]}' is not in the job's labels")
    return dict(zip(extra_labels["sample_id"].astype(str), extra_labels["label"].astype(str)))


def train_one(job: Job, loop_config: dict, storage: Path, name: str, worker_loop=None):
    """One TorchTrainer run; returns the ``ray.train.Result``.

    A dead worker is Ray Train's to restart (``FailureConfig``). A *controller*
    error is not, and on a saturated machine Ray Train 2.60 can raise one when
    a worker's placement group is torn down under a pending call ("Destroying
    worker since its placement group was removed"); the run is started again
    up to ``execution.max_failures`` times under the same name, so it resumes
    from its last checkpoint with the same final weights.
    """
    import ray.train

    for attempt in range(job.execution.max_failures + 1):
        try:
            return _trainer(job, loop_config, storage, name, worker_loop).fit()
        except ray.train.ControllerError:
            if attempt == job.execution.max_failures:
                raise
            logging.getLogger(__name__).warning("Ray Train controller failed on %s; resuming it", name)


def scaling(cfg: ExecutionConfig):
    """The ``ScalingConfig`` of every fit: ``execution.num_workers``, ``use_gpu``, ``resources_per_worker``."""
    import ray.train

    return ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                   resources_per_worker=cfg.resources_per_worker or None)


def _trainer(job: Job, loop_config: dict, storage: Path, name: str, worker_loop):
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = job.execution
    return TorchTrainer(
        worker_loop or train_loop,
        train_loop_config=loop_config,
        scaling_config=scaling(cfg),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def fit(
    job: Job,
    model_name: str,
    seed: int,
    out_dir: str | Path,
    extra_labels: pd.DataFrame | None = None,
    *,
    plan: ReadPlan | None = None,
    streaming: bool | None = None,
    worker_loop=None,
) -> Path:
    """Train ``model_name`` with ``seed`` on the job's features; export a checkpoint.

    Args:
        job: the job (encoders, store, labels, ``train`` settings).
        model_name: ``agt``, ``attention``, ``concat`` or ``unimodal``.
        seed: seeds the model init, the validation cut, shuffles and dropout.
        out_dir: checkpoint folder to write (``model.safetensors`` or one
            ``model_fold<k>.safetensors`` per fold, plus ``config.json``).
        extra_labels: pseudo-labeled rows ``sample_id,label`` added to training
            (never to validation).
        plan: a read plan to reuse (default: pin the newest table versions).
        streaming: force the streaming (True) or numpy (False) read path.
        worker_loop: the Ray Train worker function (default
            :func:`mer.train.loop.train_loop`; tests wrap it to inject failures).

    Returns:
        ``out_dir`` as a Path.
    """
    cfg = job.train
    check_placeable(scaling(job.execution), "execution.num_workers / use_gpu / resources_per_worker")
    plan = plan or plan_read(job, streaming=streaming)
    extra = _extra_dict(extra_labels, job.labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = (Path(job.run_dir) / "ray_train").resolve()
    folds = list(range(cfg.folds)) if cfg.folds > 1 else [None]
    weights, histories, runs = [], [], []
    # Ray Train's own INFO lines (run status, storage paths) would drown the stage's progress.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    for fold in folds:
        tag = f"{model_name} seed{seed}" + ("" if fold is None else f" fold{fold}")
        loop_config = {
            "plan": plan, "train": dataclasses.asdict(cfg), "execution": dataclasses.asdict(job.execution),
            "labels": list(job.labels), "model": model_name, "seed": seed, "fold": fold, "extra": extra, "tag": tag,
        }
        run_name = fit_name(job, plan, model_name, seed, extra_labels) + ("" if fold is None else f"_fold{fold}")
        result = train_one(job, loop_config, storage, run_name, worker_loop)
        if result.checkpoint is None:
            raise MerError(f"training {tag} reported no checkpoint (see {storage})")
        name = "model.safetensors" if fold is None else f"model_fold{fold}.safetensors"
        with result.checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / "best.safetensors", out / name)
            state = json.loads((Path(folder) / "state.json").read_text())
        weights.append(name)
        histories.append(state)
        runs.append(storage / run_name)
    cv, oof = out_of_fold(histories, job.labels)
    oof.to_csv(out / OOF_FILE, index=False, float_format="%.6f")
    config = {
        "format": 1,
        "model": model_name,
        "labels": list(job.labels),
        "dims": {r: t.dim for r, t in plan.roles.items()},
        "train": dataclasses.asdict(cfg),
        "seed": seed,
        "weights": weights,
        "encoders": {r: dataclasses.asdict(s) for r, s in job.encoders.items()},
        "read": plan.describe(),
        "extra_labels": len(extra or {}),
        "best_val_f1": [h["best_f1"] for h in histories],
        "cv": cv,
        "history": [h["history"] for h in histories],
        "resumed_at": [h.get("resumed_at", []) for h in histories],
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    for run in runs:  # Ray Train's checkpoints exist for resuming; the export is complete now
        shutil.rmtree(run, ignore_errors=True)
    _log_run(job, f"{job.name}/{model_name}/seed{seed}", config)
    return out


def _log_run(job: Job, run_id: str, config: dict) -> None:
    """Per-epoch metrics into the store's ``runs`` table when the store has one."""
    from mer.store import open_store

    metrics = {k: config[k] for k in ("model", "seed", "best_val_f1", "cv", "history", "read")}
    open_store(job.store).log_run(run_id, job.to_yaml(), metrics)
