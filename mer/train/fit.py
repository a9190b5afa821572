"""Fit one model on the store's features with Ray Train; export a checkpoint folder.

``fit`` is what the ``train`` stage and self-training call (through the fit
cache, :mod:`mer.train.cache`). It pins the store table versions
(:meth:`FitSettings.plan`), runs a ``TorchTrainer``
(``ScalingConfig(num_workers, use_gpu, resources_per_worker)``; DDP when
``num_workers > 1``) per fold, and exports the best-validation weights as
safetensors plus ``config.json``. Ray Train keeps its own per-epoch checkpoints
under ``run_dir/ray_train/<name>`` and ``FailureConfig(max_failures)`` restarts
dead workers from the newest one. The run name hashes everything the result
depends on (:func:`mer.train.key.fit_name`), so rerunning the same fit resumes
(or skips) instead of starting over, and a changed input starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from mer.config import ExecutionConfig
from mer.errors import MerError
from mer.placement import check_placeable
from mer.train.checkpoint import CONFIG, OOF_FILE
from mer.train.crossval import out_of_fold
from mer.train.data import ReadPlan
from mer.train.key import fit_name
from mer.train.loop import train_loop
from mer.train.settings import FitSettings


def check_extra(extra_labels: pd.DataFrame | None, labels: list[str]) -> pd.DataFrame | None:
    """Pseudo-labels ``sample_id,label`` (ids as text); MerError on a missing column or a label outside the set."""
    if extra_labels is None or extra_labels.empty:
        return None
    missing = {"sample_id", "label"} - set(extra_labels.columns)
    if missing:
        raise MerError(f"extra labels: missing column(s) {', '.join(sorted(missing))}")
    unknown = sorted(set(extra_labels["label"].astype(str)) - set(labels))
    if unknown:
        raise MerError(f"extra labels: label '{unknown[0]}' is not in the job's labels")
    return pd.DataFrame({"sample_id": extra_labels["sample_id"].astype(str).to_numpy(),
                         "label": extra_labels["label"].astype(str).to_numpy()})


def train_one(execution: ExecutionConfig, loop_config: dict, storage: Path, name: str, worker_loop=None):
    """One TorchTrainer run; returns the ``ray.train.Result``.

    A dead worker is Ray Train's to restart (``FailureConfig``). A *controller*
    error is not, and on a saturated machine Ray Train 2.60 can raise one when
    a worker's placement group is torn down under a pending call ("Destroying
    worker since its placement group was removed"); the run is started again
    up to ``execution.max_failures`` times under the same name, so it resumes
    from its last checkpoint with the same final weights.
    """
    import ray.train

    for attempt in range(execution.max_failures + 1):
        try:
            return _trainer(execution, loop_config, storage, name, worker_loop).fit()
        except ray.train.ControllerError:
            if attempt == execution.max_failures:
                raise
            logging.getLogger(__name__).warning("Ray Train controller failed on %s; resuming it", name)


def scaling(cfg: ExecutionConfig):
    """The ``ScalingConfig`` of every fit: ``execution.num_workers``, ``use_gpu``, ``resources_per_worker``."""
    import ray.train

    return ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                   resources_per_worker=cfg.resources_per_worker or None)


def _trainer(cfg: ExecutionConfig, loop_config: dict, storage: Path, name: str, worker_loop):
    import ray.train
    from ray.train.torch import TorchTrainer

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
    settings: FitSettings,
    model_name: str,
    seed: int,
    out_dir: str | Path,
    extra_labels: pd.DataFrame | None = None,
    *,
    plan: ReadPlan | None = None,
    streaming: bool | None = None,
    worker_loop=None,
) -> Path:
    """Train ``model_name`` with ``seed`` on the settings' features; export a checkpoint.

    Args:
        settings: store, streams, labels, recipe and execution (:class:`FitSettings`).
        model_name: ``agt``, ``attention``, ``concat``, ``unimodal`` or ``linear``.
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
    cfg = settings.train
    check_placeable(scaling(settings.execution), "execution.num_workers / use_gpu / resources_per_worker")
    plan = plan or settings.plan(streaming)
    extra = check_extra(extra_labels, settings.labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = settings.ray_storage
    folds = list(range(cfg.folds)) if cfg.folds > 1 else [None]
    weights, histories, runs = [], [], []
    # Ray Train's own INFO lines (run status, storage paths) would drown the stage's progress.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    base = fit_name(settings, plan, model_name, seed, extra)
    for fold in folds:
        tag = f"{model_name} seed{seed}" + ("" if fold is None else f" fold{fold}")
        loop_config = {
            "plan": plan, "train": dataclasses.asdict(cfg), "execution": dataclasses.asdict(settings.execution),
            "labels": list(settings.labels), "model": model_name, "seed": seed, "fold": fold, "extra": extra,
            "tag": tag,
        }
        run_name = base + ("" if fold is None else f"_fold{fold}")
        result = train_one(settings.execution, loop_config, storage, run_name, worker_loop)
        if result.checkpoint is None:
            raise MerError(f"training {tag} reported no checkpoint (see {storage})")
        name = "model.safetensors" if fold is None else f"model_fold{fold}.safetensors"
        with result.checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / "best.safetensors", out / name)
            state = json.loads((Path(folder) / "state.json").read_text())
        weights.append(name)
        histories.append(state)
        runs.append(storage / run_name)
    cv, oof = out_of_fold(histories, settings.labels)
    cv["grouped"] = bool(plan.groups)  # folds kept the manifest's groups (speakers, videos) apart
    oof.to_csv(out / OOF_FILE, index=False, float_format="%.6f")
    config = {
        "format": 1,
        "model": model_name,
        "labels": list(settings.labels),
        "dims": {r: t.dim for r, t in plan.roles.items()},
        "train": dataclasses.asdict(cfg),
        "seed": seed,
        "weights": weights,
        "encoders": {r: dataclasses.asdict(s) for r, s in settings.encoders.items()},
        "read": plan.describe(),
        "extra_labels": 0 if extra is None else len(extra),
        "best_val_f1": [h["best_f1"] for h in histories],
        "cv": cv,
        "history": [h["history"] for h in histories],
        "resumed_at": [h.get("resumed_at", []) for h in histories],
        "read_path": [h.get("read_path") for h in histories],
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    for run in runs:  # Ray Train's checkpoints exist for resuming; the export is complete now
        shutil.rmtree(run, ignore_errors=True)
    _log_run(settings, f"{settings.name}/{model_name}/seed{seed}", config)
    return out


def _log_run(settings: FitSettings, run_id: str, config: dict) -> None:
    """Per-epoch metrics into the store's ``runs`` table."""
    from mer.store import open_store

    metrics = {k: config[k] for k in ("model", "seed", "best_val_f1", "cv", "history", "read")}
    open_store(settings.store).log_run(run_id, settings.config_yaml, metrics)
