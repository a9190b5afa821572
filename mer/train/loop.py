"""The per-worker training loop Ray Train runs (one process per worker).

Read top to bottom: read the features, pick train/validation rows, build a
:class:`mer.train.learner.Learner`, restore it from the last checkpoint if Ray
restarted us, then train epoch by epoch, reporting a checkpoint at most every
``execution.checkpoint_every_s`` seconds and at the end. Everything that is not Ray
(the model, epochs, early stopping, resumable state) lives in the learner.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from mer.config import ExecutionConfig, TrainConfig
from mer.train.data import read_plan
from mer.train.learner import Learner, choose_rows, targets_of

CHECKPOINT_PREFIX = "mer_ckpt_"


def quiet_ray_train_worker() -> None:
    """Keep the worker's console to our epoch lines.

    Ray Train 2.60 logs every ``report`` at INFO ("Reporting training result
    ...", a screenful per epoch) through a logger named after its source *file*
    (``logging.getLogger(__file__)``), which ``LoggingConfig(log_level)`` does
    not reach; we raise that logger's level.
    """
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)


@functools.lru_cache(maxsize=1)
def _metrics() -> dict:
    """Ray metrics of the fits, created once per worker process (a node's /metrics, Prometheus and Grafana show them).

    The counter outlives the worker (Prometheus keeps the total); the gauges show a fit while it runs.
    """
    from ray.util import metrics

    tags = ("model", "seed", "fold")
    return {
        "epochs": metrics.Counter("mer_train_epochs_total", "Epochs trained, over every fit", tag_keys=("model",)),
        "epoch": metrics.Gauge("mer_train_epoch", "The epoch a fit last finished", tag_keys=tags),
        "loss": metrics.Gauge("mer_train_loss", "A fit's mean training loss in its last epoch", tag_keys=tags),
        "val_waf": metrics.Gauge("mer_train_val_waf", "A fit's validation weighted F1 in its last epoch", tag_keys=tags),
    }


def _publish(config: dict, metrics: dict) -> None:
    """One epoch's figures as Ray metrics (rank 0 only: one fit, one series)."""
    tags = {"model": config["model"], "seed": str(config["seed"]), "fold": str(config["fold"])}
    gauges = _metrics()
    gauges["epochs"].inc(tags={"model": config["model"]})
    gauges["epoch"].set(metrics["epoch"], tags=tags)
    for key, name in (("train_loss", "loss"), ("val_f1", "val_waf")):
        value = metrics.get(key)
        if value is not None and value == value:  # NaN: no validation rows
            gauges[name].set(value, tags=tags)


def train_loop(config: dict) -> None:
    """Ray Train worker entry point; ``config`` is built by :func:`mer.train.fit.fit`."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    execution = ExecutionConfig(**config["execution"])
    seed, fold, labels = config["seed"], config["fold"], config["labels"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    quiet_ray_train_worker()

    start = time.perf_counter()
    extra = config["extra"]
    # The labeled train split and the pseudo-labeled rows: a fit never reads the rest of the pool.
    data = read_plan(config["plan"], "train", None if extra is None else extra["sample_id"])
    targets = targets_of(data, labels, extra)
    rows = choose_rows(data, targets, cfg, seed, fold, extra)
    read_seconds = time.perf_counter() - start
    read_path = "streaming" if data.plan.streaming else "numpy"

    device = ray.train.torch.get_device() if execution.use_gpu else torch.device("cpu")
    learner = Learner(config["model"], data, rows, cfg, len(labels), seed, device)
    learner.state["read_path"] = read_path
    if learner.solvable:  # convex (linear): solved once, deterministic; a restart simply solves again
        metrics = {**learner.solve(), "read_seconds": read_seconds}
        if rank == 0:
            _publish(config, metrics)
        _report(learner, metrics, rank)
        return

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            learner.load(Path(folder))
    net = learner.model
    if world > 1:
        # AGT's "missing audio" token gets no gradient in a batch where every clip has audio.
        net = ray.train.torch.prepare_model(net, parallel_strategy_kwargs={"find_unused_parameters": True})

    last_report = time.perf_counter()
    while not learner.done:
        metrics = learner.epoch(net, rank, world)
        metrics["read_seconds"] = read_seconds
        if rank == 0:
            _publish(config, metrics)
        if rank == 0 and execution.verbose:
            # to the real stdout: Ray Train's print patch would log the line twice
            print(f"[{config['tag']}] epoch {metrics['epoch'] + 1}/{cfg.epochs} loss {metrics['train_loss']:.4f} "
                  f"val_f1 {metrics['val_f1']:.4f} (best {learner.state['best_f1']:.4f}) "
                  f"{metrics['epoch_seconds']:.2f}s", file=sys.__stdout__, flush=True)
        if learner.done or time.perf_counter() - last_report >= execution.checkpoint_every_s:
            _report(learner, metrics, rank)
            last_report = time.perf_counter()


def _report(learner: Learner, metrics: dict, rank: int) -> None:
    """Report the epoch; rank 0 attaches the learner's state as the checkpoint (all ranks must call report)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    folder = checkpoint_folder()
    learner.save(folder)
    # ASYNC: the controller collects reports on its 2 s health-check tick; a
    # blocking report would add that to every sub-second epoch. Ray flushes
    # pending uploads before the run ends and deletes the local folder.
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                     delete_local_checkpoint_after_upload=True)


def checkpoint_folder() -> Path:
    """A fresh local folder for one report's checkpoint, named after this process (``mer_ckpt_<pid>_*``).

    Ray deletes it once uploaded; a worker killed before its upload leaves it behind, so the first folder a
    process makes sweeps the ones whose process is gone (node-local: a node's workers share its temp dir).
    """
    _sweep_dead_checkpoints()
    return Path(tempfile.mkdtemp(prefix=f"{CHECKPOINT_PREFIX}{os.getpid()}_"))


@functools.lru_cache(maxsize=1)
def _sweep_dead_checkpoints() -> None:
    for old in Path(tempfile.gettempdir()).glob(f"{CHECKPOINT_PREFIX}*_*"):
        pid = old.name[len(CHECKPOINT_PREFIX):].split("_", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
