"""Train one model on one fold's rows, in the calling process (no Ray).

A :class:`Learner` builds the model, fits its standardiser on the training
rows, then either *solves* it (``linear``: convex, one call, deterministic) or
trains it by epochs with early stopping on validation weighted F1, keeping the
best epoch's weights. The Ray Train worker (:mod:`mer.train.loop`) drives it
one epoch at a time between checkpoints; cross-validation
(:mod:`mer.train.crossval`) and Ray Tune trials run it whole, in process.

Every random draw derives from (seed, epoch), and the learner's whole state
saves to and loads from a folder (:meth:`Learner.save`, :meth:`Learner.load`),
so a run resumed from a checkpoint ends with the weights of one that never
stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold, train_test_split
from torch import nn

from mer.config import ConfigError, TrainConfig
from mer.errors import MerError
from mer.models import build_model
from mer.train.checkpoint import unwrap
from mer.train.data import AugmentedView, MultiModalData


@dataclass
class Rows:
    """Joined-sample indices and integer targets: training, scored (``val``) and early-stopping (``stop``) rows.

    ``stop`` is an inner split of the training rows that chooses the epoch, so
    the ``val`` rows a fold is scored on never chose anything; empty when
    there are too few rows for one (``val`` then chooses the epoch too, and the
    score is optimistic: :func:`mer.train.crossval.out_of_fold` says which).
    """

    train: np.ndarray
    val: np.ndarray
    targets: np.ndarray  # (N,) int, -1 = no label
    stop: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def selection(self) -> np.ndarray:
        """The rows that choose the epoch."""
        return self.stop if len(self.stop) else self.val


def targets_of(data: MultiModalData, labels: list[str], extra: pd.DataFrame | None) -> np.ndarray:
    """Label index per joined sample (-1 = none); pseudo-labels ``extra`` (``sample_id,label``) fill the rest.

    Vectorised (index look-ups, no per-sample Python): a pool of 125,000
    pseudo-labels costs milliseconds.
    """
    label = pd.Series(data.label, dtype=object)
    if extra is not None and len(extra):
        pos = pd.Index(data.ids).get_indexer(extra["sample_id"].astype(str))
        found = pos >= 0
        label.iloc[pos[found]] = extra["label"].to_numpy(dtype=object)[found]
    return pd.Index(labels).get_indexer(label.fillna("")).astype(np.int64)


def labeled_train(data: MultiModalData, targets: np.ndarray) -> np.ndarray:
    """Positions of the labeled rows of the train split: the only rows validation may use."""
    return np.flatnonzero((data.split == "train") & (data.label != None) & (targets >= 0))  # noqa: E711


def fold_splitter(y: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None):
    """Stratified K-fold when every class has ``folds`` rows, plain K-fold otherwise; group-wise with ``groups``.

    Raises:
        MerError: fewer groups than folds.
    """
    if groups is not None:
        if len(np.unique(groups)) < folds:
            raise MerError(f"train.folds {folds}: the manifest's group column has only {len(np.unique(groups))} "
                           "groups among the labeled train rows; use fewer folds")
        return StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    if np.bincount(y).min(initial=len(y)) >= folds and len(np.unique(y)) > 1:
        return StratifiedKFold(folds, shuffle=True, random_state=seed)
    return KFold(folds, shuffle=True, random_state=seed)


def groups_of(data: MultiModalData, rows: np.ndarray) -> np.ndarray | None:
    """The rows' manifest groups (a row without one is a group of its own); None when the manifest has none."""
    if data.group is None:
        return None
    groups = data.group[rows].astype(object)
    alone = groups == ""
    groups[alone] = np.char.add("row:", data.ids[rows][alone].astype(str))
    return groups


def choose_rows(data: MultiModalData, targets: np.ndarray, cfg: TrainConfig, seed: int,
                fold: int | None, extra: pd.DataFrame | None) -> Rows:
    """Validation rows come only from the labeled train split; pseudo-labeled rows only train.

    With ``fold`` set, the labeled train split is cut by a stratified
    ``cfg.folds``-fold split (MERTools' protocol); otherwise a stratified
    ``val_fraction`` holdout. Either way the scored rows only score: a
    stratified ``val_fraction`` of the remaining labeled rows is the inner
    split that chooses the epoch (``Rows.stop``).
    """
    labeled = labeled_train(data, targets)
    extra_ids = np.asarray([] if extra is None else extra["sample_id"], dtype=str)
    pseudo = np.flatnonzero(np.isin(data.ids, extra_ids) & (data.split != "test") & (targets >= 0))
    pseudo = np.setdiff1d(pseudo, labeled)
    y = targets[labeled]
    if fold is not None:
        groups = groups_of(data, labeled)
        train_pos, val_pos = list(fold_splitter(y, cfg.folds, seed, groups).split(labeled, y, groups))[fold]
        train, val = labeled[train_pos], labeled[val_pos]
    else:
        train, val = _holdout(data, labeled, targets, cfg.val_fraction, seed)
    train, stop = _holdout(data, train, targets, cfg.val_fraction if len(val) else 0.0, seed + 1)
    return Rows(np.sort(np.concatenate([train, pseudo])), np.sort(val), targets, np.sort(stop))


def _holdout(data: MultiModalData, rows: np.ndarray, targets: np.ndarray, fraction: float,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified ``fraction`` of ``rows`` held out (none below 10 rows or with ``fraction`` 0), whole groups at a time."""
    if fraction <= 0 or len(rows) < 10:
        return rows, rows[:0]
    y = targets[rows]
    groups = groups_of(data, rows)
    if groups is not None:  # the first of round(1 / fraction) stratified group folds
        k = min(max(2, round(1 / fraction)), len(np.unique(groups)))
        if k < 2:
            return rows, rows[:0]
        keep, held = next(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(rows, y, groups))
        return rows[keep], rows[held]
    stratify = y if np.bincount(y).min(initial=len(y)) >= 2 and len(np.unique(y)) > 1 else None
    try:
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify))
    except ValueError:  # too few samples of a class for a stratified cut
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed))


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


def _chunks(rows: np.ndarray, size: int = 1024) -> list[np.ndarray]:
    """``rows`` in consecutive chunks of about ``size`` (one chunk when fewer)."""
    return np.array_split(rows, max(1, len(rows) // size))


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in unwrap(model).state_dict().items()}


class Learner:
    """One model, one fold: build, then :meth:`solve` or :meth:`epoch` until :attr:`done`.

    Args:
        model_name: a name :func:`mer.models.build_model` knows.
        data: the joined features.
        rows: training and validation rows with targets (:func:`choose_rows`).
        cfg: the recipe (``train`` settings).
        num_classes: size of the label set.
        seed: seeds the init, the epoch shuffles and the dropout draws.
        device: where the model trains.
    """

    def __init__(self, model_name: str, data: MultiModalData, rows: Rows, cfg: TrainConfig, num_classes: int,
                 seed: int, device: torch.device = torch.device("cpu")):
        self.data, self.rows, self.cfg, self.seed, self.device = data, rows, cfg, seed, device
        torch.manual_seed(seed)
        model = build_model(model_name, data.dims, num_classes, cfg)
        self.solvable = hasattr(model.model, "solve")
        if self.solvable and len(rows.stop):  # a convex model chooses no epoch: train on them too
            rows = self.rows = Rows(np.sort(np.concatenate([rows.train, rows.stop])), rows.val, rows.targets)
        # a convex model never reads seq (most of a row's bytes): its scaler fits on vectors only
        model.fit(data.batch(chunk, seq=not self.solvable) for chunk in _chunks(rows.train))
        self.model = model.to(device)
        self.state = {"epoch": -1, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "done": False, "history": []}
        self.best = _state_dict(self.model)
        if self.solvable:
            return
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        weight = class_weights(rows.targets[rows.train], num_classes) if cfg.class_weighted else None
        self.loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device),
                                           label_smoothing=cfg.label_smoothing)

    @property
    def done(self) -> bool:
        return self.state["done"]

    def validate(self, index: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
        """Weighted F1 and accuracy on ``index`` (default: the rows that choose the epoch), and their probabilities."""
        index = self.rows.selection if index is None else index
        if not len(index):
            return {"val_f1": float("nan"), "val_acc": float("nan")}, np.zeros((0, 0), np.float32)
        probs = predict_proba(self.model, self.data, index, 256)
        pred, truth = probs.argmax(1), self.rows.targets[index]
        return {
            "val_f1": float(f1_score(truth, pred, average="weighted", zero_division=0)),
            "val_acc": float(accuracy_score(truth, pred)),
        }, probs

    def _held_out(self, probs: np.ndarray) -> dict:
        """The scored rows' ids, targets and probabilities (the current weights): a fold's share of the out-of-fold score.

        ``probs`` are the selection rows' when those are the scored rows; with an
        inner split the scored rows are predicted here.
        """
        val = self.rows.val
        if len(self.rows.stop) and len(val):
            probs = predict_proba(self.model, self.data, val, 256)
        return {"ids": self.data.ids[val].tolist(), "targets": self.rows.targets[val].tolist(),
                "probs": np.round(probs, 6).tolist(), "chosen_on": "inner split" if len(self.rows.stop) else
                "scored rows"}

    def solve(self) -> dict:
        """Fit a convex model in one call on the training rows; validate. Returns the metrics."""
        model, rows = self.model, self.rows
        # vectors only (a convex model never reads seq, most of a row's bytes), read and standardised in chunks:
        # the fit holds one float32 vector per training row, not every row's padded sequence
        chunks = [model.scale(self.data.batch(chunk, seq=False)) for chunk in _chunks(rows.train)]
        batch = {role: {key: torch.cat([c[role][key] for c in chunks]) for key in ("vector", "present")}
                 for role in chunks[0]}
        del chunks
        model.model.solve(batch, rows.targets[rows.train], self.seed)
        metrics, probs = self.validate()
        metrics.update(epoch=0, best_val_f1=metrics["val_f1"], n_train=len(rows.train), n_val=len(rows.val))
        held_out = {**self._held_out(probs), "chosen_on": "nothing"}  # a convex fit chooses no epoch
        self.state.update(epoch=0, best_f1=metrics["val_f1"], best_epoch=0, done=True, history=[metrics],
                          val=held_out)
        self.best = _state_dict(model)
        return metrics

    def epoch(self, net: nn.Module | None = None, rank: int = 0, world: int = 1) -> dict:
        """Train the next epoch (``net``: the DDP-wrapped model, if any), validate, track the best.

        Returns:
            The epoch's metrics (also appended to ``state["history"]``).
        """
        import time

        state, cfg, rows = self.state, self.cfg, self.rows
        epoch = state["epoch"] + 1
        tick = time.perf_counter()
        torch.manual_seed(self.seed * 100_003 + epoch)
        net = net or self.model
        net.train()
        data = AugmentedView(self.data, cfg.augment_p) if self.data.augment and cfg.augment_p > 0 else self.data
        losses = train_epoch(net, data, rows.targets, epoch_order(rows, self.seed, epoch, rank, world),
                             self.optimizer, self.loss_fn, cfg.batch_size, self.device)
        self.scheduler.step()
        metrics, probs = self.validate()
        improved = not np.isnan(metrics["val_f1"]) and metrics["val_f1"] > state["best_f1"]
        if improved or np.isnan(metrics["val_f1"]):
            state.update(best_f1=metrics["val_f1"] if improved else state["best_f1"], best_epoch=epoch,
                         bad_epochs=0, val=self._held_out(probs))
            self.best = _state_dict(self.model)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["done"] = state["bad_epochs"] >= cfg.patience or epoch >= cfg.epochs - 1
        metrics.update(epoch=epoch, train_loss=float(np.mean(losses)) if losses else float("nan"),
                       lr=self.scheduler.get_last_lr()[0], epoch_seconds=time.perf_counter() - tick,
                       best_val_f1=state["best_f1"], n_train=len(rows.train), n_val=len(rows.val),
                       n_stop=len(rows.stop))
        state["history"].append(metrics)
        return metrics

    def run(self) -> dict:
        """Solve, or train every remaining epoch; returns the final state."""
        if self.solvable:
            self.solve()
        while not self.done:
            self.epoch()
        return self.state

    def best_model(self) -> nn.Module:
        """The model with the best epoch's weights, in eval mode."""
        unwrap(self.model).load_state_dict(self.best)
        return self.model.eval()

    def save(self, folder: Path) -> None:
        """Everything a resume needs: last and best weights, optimiser, scheduler, state."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file(_state_dict(self.model), str(folder / "last.safetensors"))
        save_file(self.best, str(folder / "best.safetensors"))
        if not self.solvable:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       folder / "optim.pt")
        (folder / "state.json").write_text(json.dumps(self.state))

    def load(self, folder: Path) -> None:
        """Resume from :meth:`save`'s folder; records the epoch it resumed at."""
        device = str(self.device)
        unwrap(self.model).load_state_dict(load_file(str(folder / "last.safetensors"), device=device))
        self.best = load_file(str(folder / "best.safetensors"))
        if (folder / "optim.pt").exists():
            extra = torch.load(folder / "optim.pt", weights_only=True, map_location=self.device)
            self.optimizer.load_state_dict(extra["optimizer"])
            self.scheduler.load_state_dict(extra["scheduler"])
        self.state = json.loads((folder / "state.json").read_text())
        self.state.setdefault("resumed_at", []).append(self.state["epoch"] + 1)
