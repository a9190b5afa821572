"""Out-of-fold scores: how settings are compared without touching the test split.

Model selection in mer (``mer tune``, the defaults in docs/results.md, the
generalization benchmark) scores a configuration by stratified K-fold
cross-validation on the *labeled train split* only: each fold's model never
sees its validation rows, every labeled train row is scored exactly once, and
pseudo-labeled rows (when given) join the training folds, never validation.

:func:`cross_validate` runs the folds in this process (no Ray: a Ray Tune
trial calls it); :func:`out_of_fold` scores the folds' validation rows, for
these and for the Ray Train fits of :mod:`mer.train.fit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from mer.config import TrainConfig
from mer.train.data import AugmentedView, DroppedView, MultiModalData
from mer.train.learner import Learner, choose_rows, predict_proba, targets_of


def out_of_fold(states: list[dict], labels: list[str]) -> tuple[dict, pd.DataFrame]:
    """Weighted F1 over every validation row of every fold, from each fold's best weights.

    With K folds every labeled train row is scored once by the fold model that
    never trained on it; with a holdout it is the holdout's score. Neural
    models choose their epoch on an inner split of the fold's training rows
    (:func:`mer.train.learner.choose_rows`), so the scored rows never chose
    anything and the models are ranked on equal terms with ``linear``, which
    chooses nothing. ``chosen_on`` says so: ``inner split``, ``nothing``, or
    ``scored rows`` (too few rows for an inner split: that score is optimistic).

    Returns:
        ``({"weighted_f1", "rows", "scheme", "chosen_on"}, frame)`` with the rows'
        ``sample_id,target,p_<label>...`` sorted by id.
    """
    ids = [i for s in states for i in s.get("val", {}).get("ids", [])]
    frame = pd.DataFrame(columns=["sample_id", "target", *[f"p_{c}" for c in labels]])
    if not ids:
        return {"weighted_f1": None, "rows": 0, "scheme": "none", "chosen_on": ""}, frame
    targets = np.array([t for s in states for t in s["val"]["targets"]])
    probs = np.array([p for s in states for p in s["val"]["probs"]], np.float64)
    frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in labels])
    frame.insert(0, "target", np.asarray(labels, object)[targets])
    frame.insert(0, "sample_id", ids)
    frame = frame.sort_values("sample_id", kind="stable").reset_index(drop=True)
    score = f1_score(targets, probs.argmax(1), average="weighted", zero_division=0)
    scheme = f"{len(states)}-fold out-of-fold" if len(states) > 1 else "holdout"
    chosen = sorted({s["val"].get("chosen_on", "scored rows") for s in states if s.get("val", {}).get("ids")})
    return {"weighted_f1": float(score), "rows": len(ids), "scheme": scheme, "chosen_on": ", ".join(chosen)}, frame


def cross_validate(data: MultiModalData, labels: list[str], cfg: TrainConfig, model_name: str, seed: int,
                   folds: int = 5, extra: pd.DataFrame | None = None,
                   on_fold: Callable[[int, dict], None] | None = None) -> tuple[dict, pd.DataFrame]:
    """K-fold CV of one configuration and seed on the labeled train split, in this process.

    Args:
        data: joined features (any splits; only labeled train rows validate).
        labels: the label set.
        cfg: the recipe; ``folds`` is overridden by ``folds``.
        model_name: model to build.
        seed: seeds the fold cut and the model.
        folds: K (>= 2).
        extra: pseudo-labels ``sample_id,label`` that join training folds only.
        on_fold: called after each fold with ``(fold, running out-of-fold score)``
            (Ray Tune reports it, so ASHA can stop a bad trial early).

    Returns:
        :func:`out_of_fold` over the K folds.
    """
    cfg = dataclasses.replace(cfg, folds=folds)
    targets = targets_of(data, labels, extra)
    states = []
    for fold in range(folds):
        rows = choose_rows(data, targets, cfg, seed, fold, extra)
        states.append(Learner(model_name, data, rows, cfg, len(labels), seed).run())
        if on_fold:
            on_fold(fold, out_of_fold(states, labels)[0])
    return out_of_fold(states, labels)


def robust_cross_validate(data: MultiModalData, labels: list[str], cfg: TrainConfig, model_name: str, seed: int,
                          folds: int = 5, role: str = "audio") -> dict[str, float]:
    """K-fold CV WAF of one recipe with each fold's validation rows clean, without ``role``, and noisy.

    How a robustness recipe is chosen without the test corruptions: the same
    folds as :func:`cross_validate` (each fold's epoch picked on its clean
    validation rows), then the fold's best model also scores its validation
    rows with ``role`` removed and, when ``data`` has augmented copies of
    ``role`` (``train.audio_augment``), with every validation row read from its
    noisy copy. Only labeled *train* rows are ever read.

    Returns:
        ``{"clean": WAF, "no_<role>": WAF, "noisy_<role>": WAF}`` (the last only with copies).
    """
    cfg = dataclasses.replace(cfg, folds=folds)
    targets = targets_of(data, labels, None)
    views = {"clean": data, f"no_{role}": DroppedView(data, role)}
    if role in data.augment:
        views[f"noisy_{role}"] = AugmentedView(data, 1.0)
    truth, preds = [], {name: [] for name in views}
    for fold in range(folds):
        rows = choose_rows(data, targets, cfg, seed, fold, None)
        learner = Learner(model_name, data, rows, cfg, len(labels), seed)
        learner.run()
        model = learner.best_model()
        truth.append(targets[rows.val])
        for name, view in views.items():
            preds[name].append(predict_proba(model, view, rows.val, 256).argmax(1))
    y = np.concatenate(truth)
    return {name: float(f1_score(y, np.concatenate(p), average="weighted", zero_division=0)) for name, p in preds.items()}
