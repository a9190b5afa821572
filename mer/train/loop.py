"""The per-worker training loop Ray Train runs (one process per worker).

Read top to bottom: read the features, pick train/validation rows, build the
model, restore the last checkpoint if Ray restarted us, then per epoch:
shuffle with a seed derived from (seed, epoch), train this worker's shard,
validate, checkpoint (at most every ``checkpoint_every_s`` seconds, and at the
end), stop early when validation weighted F1 stalls.

Deriving every random draw from (seed, epoch) instead of a running generator
is why a run resumed from a checkpoint ends with the same weights as a run
that never failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from mer.config import TrainConfig
from mer.models import build_model
from mer.train.checkpoint import load_weights, save_weights, unwrap
from mer.train.data import MultiModalData, read_plan


@dataclass
class Rows:
    """Joined-sample indices and integer targets for training and validation."""

    train: np.ndarray
    val: np.ndarray
    targets: np.ndarray  # (N,) int, -1 = no label


def targets_of(data: MultiModalData, labels: list[str], extra: dict[str, str] | None) -> np.ndarray:
    """Label index per joined sample; pseudo-labels in ``extra`` override ``None``."""
    lookup = {name: i for i, name in enumerate(labels)}
    label = data.label.copy()
    if extra:
        pos = {sid: i for i, sid in enumerate(data.ids)}
        for sid, name in extra.items():
            if sid in pos:
                label[pos[sid]] = name
    return np.array([lookup.get(x, -1) if x is not None else -1 for x in label], np.int64)


def choose_rows(data: MultiModalData, targets: np.ndarray, cfg: TrainConfig, seed: int,
                fold: int | None, extra: dict[str, str] | None) -> Rows:
    """Validation rows come only from the labeled train split; pseudo-labeled rows only train.

    With ``fold`` set, the labeled train split is cut by a stratified k-fold
    (MERTools' protocol); otherwise a stratified ``val_fraction`` holdout.
    """
    labeled = np.flatnonzero((data.split == "train") & (data.label != None) & (targets >= 0))  # noqa: E711
    pseudo = np.flatnonzero(np.isin(data.ids, list(extra or {})) & (data.split != "test") & (targets >= 0))
    pseudo = np.setdiff1d(pseudo, labeled)
    y = targets[labeled]
    stratify = y if np.bincount(y).min(initial=len(y)) >= 2 and len(np.unique(y)) > 1 else None
    if fold is not None:
        folds = StratifiedKFold(cfg.folds, shuffle=True, random_state=seed) if stratify is not None else None
        if folds is None:
            from sklearn.model_selection import KFold

            folds = KFold(cfg.folds, shuffle=True, random_state=seed)
        train_pos, val_pos = list(folds.split(labeled, y))[fold]
        train, val = labeled[train_pos], labeled[val_pos]
    elif cfg.val_fraction > 0 and len(labeled) >= 10:
        try:
            train, val = train_test_split(labeled, test_size=cfg.val_fraction, random_state=seed, stratify=stratify)
        except ValueError:  # too few samples of a class for a stratified cut
            train, val = train_test_split(labeled, test_size=cfg.val_fraction, random_state=seed)
    else:
        train, val = labeled, labeled[:0]
    return Rows(np.sort(np.concatenate([train, pseudo])), np.sort(val), targets)


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (C * n_c)`` (1 for classes with no sample)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(targets) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def make_scheduler(optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    from mer.config import ConfigError

    raise ConfigError(f"train.scheduler: expected cosine, step or none, got {cfg.scheduler!r}")


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a model batch to ``device`` (no-op on CPU)."""
    if device.type == "cpu":
        return batch
    return {r: {k: v.to(device, non_blocking=True) for k, v in e.items()} for r, e in batch.items()}


@torch.no_grad()
def predict_proba(model: nn.Module, data: MultiModalData, index: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax probabilities (len(index), C) in eval mode."""
    model = unwrap(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [torch.softmax(model(to_device(data.batch(index[i:i + batch_size]), device)), -1).cpu().numpy()
           for i in range(0, len(index), batch_size)]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def validate(model, data, rows: Rows, batch_size: int) -> dict:
    if not len(rows.val):
        return {"val_f1": float("nan"), "val_acc": float("nan")}
    pred = predict_proba(model, data, rows.val, batch_size).argmax(1)
    truth = rows.targets[rows.val]
    return {
        "val_f1": float(f1_score(truth, pred, average="weighted", zero_division=0)),
        "val_acc": float(accuracy_score(truth, pred)),
    }


def epoch_order(rows: Rows, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This worker's shard of the epoch's shuffle; every shard has the same length (DDP)."""
    perm = np.random.default_rng([seed, epoch]).permutation(rows.train)
    perm = perm[: len(perm) - len(perm) % world] if len(perm) >= world else perm
    return perm[rank::world]


def train_epoch(model, data, targets: np.ndarray, order: np.ndarray, optimizer, loss_fn, batch_size: int,
                device: torch.device = torch.device("cpu")) -> list[float]:
    """One pass over ``order`` in batches; ``data`` is anything with ``batch(index)``."""
    losses = []
    for i in range(0, len(order), batch_size):
        index = order[i:i + batch_size]
        target = torch.from_numpy(targets[index]).to(device)
        loss = loss_fn(model(to_device(data.batch(index), device)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


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


def train_loop(config: dict) -> None:
    """Ray Train worker entry point; ``config`` is built by :func:`mer.train.fit.fit`."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    seed, fold, labels = config["seed"], config["fold"], config["labels"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    quiet_ray_train_worker()

    start = time.perf_counter()
    data = read_plan(config["plan"])
    targets = targets_of(data, labels, config["extra"])
    rows = choose_rows(data, targets, cfg, seed, fold, config["extra"])
    read_seconds = time.perf_counter() - start

    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    torch.manual_seed(seed)
    model = build_model(config["model"], data.dims, len(labels), cfg)
    model.fit(data.batch(chunk) for chunk in np.array_split(rows.train, max(1, len(rows.train) // 1024)))
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    weight = class_weights(targets[rows.train], len(labels)) if cfg.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    state = {"epoch": -1, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "done": False, "history": []}

    checkpoint = ray.train.get_checkpoint()
    first_attempt = checkpoint is None
    best_path = Path(tempfile.mkdtemp(prefix="mer_best_")) / "best.safetensors"
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            folder = Path(folder)
            load_weights(model, folder / "last.safetensors", device)
            extra_state = torch.load(folder / "optim.pt", weights_only=True, map_location=device)
            optimizer.load_state_dict(extra_state["optimizer"])
            scheduler.load_state_dict(extra_state["scheduler"])
            state = json.loads((folder / "state.json").read_text())
            state.setdefault("resumed_at", []).append(state["epoch"] + 1)
            best_path.write_bytes((folder / "best.safetensors").read_bytes())
    if world > 1:
        # AGT's "missing audio" token gets no gradient in a batch where every clip has audio.
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    last_report = time.perf_counter()
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["done"]:
            break
        if first_attempt and epoch == config.get("fail_at_epoch") and rank == 0:
            time.sleep(5)  # let the controller collect the reports in flight, then die
            os._exit(1)  # injected worker death (tests): Ray restarts from the last checkpoint
        tick = time.perf_counter()
        torch.manual_seed(seed * 100_003 + epoch)
        model.train()
        losses = train_epoch(model, data, targets, epoch_order(rows, seed, epoch, rank, world),
                             optimizer, loss_fn, cfg.batch_size, device)
        scheduler.step()
        metrics = validate(model, data, rows, cfg.batch_size)
        improved = not np.isnan(metrics["val_f1"]) and metrics["val_f1"] > state["best_f1"]
        if improved or np.isnan(metrics["val_f1"]):
            state.update(best_f1=metrics["val_f1"] if improved else state["best_f1"], best_epoch=epoch, bad_epochs=0)
            save_weights(model, best_path)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["done"] = state["bad_epochs"] >= cfg.patience or epoch == cfg.epochs - 1
        metrics.update(epoch=epoch, train_loss=float(np.mean(losses)) if losses else float("nan"),
                       lr=scheduler.get_last_lr()[0], epoch_seconds=time.perf_counter() - tick,
                       read_seconds=read_seconds, best_val_f1=state["best_f1"], n_train=len(rows.train),
                       n_val=len(rows.val))
        state["history"].append(metrics)
        if rank == 0:
            # to the real stdout: Ray Train's print patch would log the line twice
            print(f"[{config['tag']}] epoch {epoch + 1}/{cfg.epochs} loss {metrics['train_loss']:.4f} "
                  f"val_f1 {metrics['val_f1']:.4f} (best {state['best_f1']:.4f}) "
                  f"{metrics['epoch_seconds']:.2f}s", file=sys.__stdout__, flush=True)
        if state["done"] or time.perf_counter() - last_report >= cfg.checkpoint_every_s:
            _report(model, optimizer, scheduler, state, best_path, metrics, rank)
            last_report = time.perf_counter()
        if state["done"]:
            break


def _report(model, optimizer, scheduler, state, best_path, metrics, rank) -> None:
    """Report the epoch; rank 0 attaches the checkpoint (all ranks must call report)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    folder = Path(tempfile.mkdtemp(prefix="mer_ckpt_"))
    save_weights(model, folder / "last.safetensors")
    (folder / "best.safetensors").write_bytes(best_path.read_bytes())
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / "optim.pt")
    (folder / "state.json").write_text(json.dumps(state))
    # ASYNC: the controller collects reports on its 2 s health-check tick; a
    # blocking report would add that to every sub-second epoch. Ray flushes
    # pending uploads before the run ends and deletes the local folder.
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                     delete_local_checkpoint_after_upload=True)
