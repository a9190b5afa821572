"""Cross-fitted fine-tuning: every labeled row's features come from a model that never trained on it.

Why: when the encoder is fine-tuned on the labeled rows and the downstream
classifier then trains on those same rows' features, the classifier reads
features already fitted to its own labels while test features are not (a
stacking leak: fine-tuned MiniLM scored 7 points *below* frozen MiniLM in
``benchmarks/finetune_text_quality.py``). Cross-fitting, as in stacking, removes
it: the labeled rows (train split, plus accepted pseudo-labels when
``finetune.pseudo_labels`` is set) are split into ``finetune.folds`` folds,
stratified by label and seeded by ``finetune.seed``; fold model ``k`` trains on
the other folds and extracts fold ``k``. Every other row (unlabeled, test, and
rows added later) is extracted by a model trained on every labeled row
(``finetune.crossfit_other: full``) or gets the mean of the fold models'
features (``average``: no extra fine-tune, :mod:`mer.encoders.fold_average`).
Our choice where the paper is silent: the paper fine-tunes once on all labeled
clips.

The export folder (``finetune.out``, default ``run_dir/finetuned_<role>_crossfit``)::

    <out>/                  the full model: a plain Hugging Face folder, like a single fine-tune's
                            (``full`` only)
    <out>/folds/<k>/        fold k's model, same layout
    <out>/crossfit.json     the per-row record: each fold model's training ids and the ids it
                            extracted; ``other``; the full model's training ids (``full``)

With ``full``, ``hf_text``/``hf_clip`` load the top-level model; with
``average``, :func:`mer.encoders.build_encoder` loads the fold models; either
way the folder is a drop-in ``encoders.<role>.model``. The folder's weights
fingerprint covers every file in it (fold models and record included), so the
cross-fitted table is a new encoder version, neither the frozen one nor a
single fine-tune's, and a table version names exactly which models wrote it. Each model's export carries its
own fingerprint (``mer_finetune.json``): a rerun skips finished models and
re-extracts nothing that is stored.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mer.encoders.fold_average import RECORD_FILE
from mer.errors import MerError
from mer.finetune.data import labeled_examples
from mer.finetune.launch import finetune
from mer.finetune.loop import train_loop_per_worker
from mer.finetune.settings import FinetuneSettings

FOLDS_DIR = "folds"
FULL = "."  # the full model's path in the record: the folder itself
AVERAGE = FOLDS_DIR  # what extracted the other rows under ``average``: every fold model


def crossfit_dir(ft: FinetuneSettings) -> Path:
    """Where the cross-fitted export goes: ``finetune.out`` or ``run_dir/finetuned_<role>_crossfit``.

    Not the single fine-tune's default folder: both can live side by side.
    """
    return Path(ft.cfg.out or Path(ft.run_dir) / f"finetuned_{ft.cfg.role}_crossfit")


def assign_folds(labels, folds: int, seed: int) -> np.ndarray:
    """Fold index per row: stratified by label, shuffled with ``seed``, deterministic.

    Works on any role's rows (only the labels are read).

    Raises:
        MerError: fewer rows than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if len(labels) < folds:
        raise MerError(f"finetune.folds={folds}: only {len(labels)} labeled rows to split")
    fold = np.empty(len(labels), dtype=int)
    with warnings.catch_warnings():
        # a label rarer than the fold count is expected (worried, sad): some folds lack it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels)
        for k, (_, held) in enumerate(splits):
            fold[held] = k
    return fold


def read_record(folder: str | Path) -> dict:
    """The ``crossfit.json`` of a cross-fitted export (see :func:`crossfit`)."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        raise MerError(f"{folder}: not a cross-fitted export (no {RECORD_FILE})")
    return json.loads(path.read_text())


def other_path(record: dict) -> str:
    """What extracted the rows outside the folds: ``.`` (the full model) or ``folds`` (their average)."""
    return AVERAGE if record["other"] == "average" else FULL


def extractors(record: dict, sample_ids) -> pd.Series:
    """Which model's path (``folds/<k>``; ``.`` the full model; ``folds`` their average) extracted each id."""
    by_id = {sid: model["path"] for model in record["folds"] for sid in model["extracted"]}
    other = other_path(record)
    return pd.Series([by_id.get(str(sid), other) for sid in sample_ids], index=list(sample_ids), name="extractor")


def training_ids(record: dict, path: str) -> set[str]:
    """The sample ids the model at ``path`` (as :func:`extractors` names it) was fine-tuned on."""
    if path == AVERAGE:
        return {sid for model in record["folds"] for sid in model["train_ids"]}
    models = {model["path"]: model for model in record["folds"]} | {FULL: record["full"]}
    return set(models[path]["train_ids"])


def crossfit(ft: FinetuneSettings, echo=print, worker_loop=train_loop_per_worker) -> dict:
    """Fine-tune one model per fold (and the full model under ``full``), then write the per-row record.

    Progress: one line per model. The full model trains first: retraining it
    replaces the whole folder, fold models included (their fingerprints have
    changed too then). Under ``average`` a full model left by an earlier run is
    removed, fold models kept.

    Returns:
        Summary: ``out`` (the export folder), ``folds``, ``full`` (None under
        ``average``) and ``fold_models`` (each
        :func:`mer.finetune.launch.finetune`'s summary), ``skipped`` (no model
        trained), ``examples``.
    """
    cfg = ft.cfg
    out = crossfit_dir(ft)
    examples = labeled_examples(ft)
    fold = assign_folds(examples["label"], cfg.folds, cfg.seed)
    name = f"finetune_{cfg.role}"
    record = {"seed": cfg.seed, "other": cfg.crossfit_other, "folds": [], "full": None}
    full = None
    if cfg.crossfit_other == "full":
        full = finetune(ft, examples, out, name, worker_loop)
        echo(_progress("full model", full))
        record["full"] = {"path": FULL, "train_ids": sorted(examples["sample_id"])}
    elif out.is_dir():
        for stale in out.iterdir():  # an earlier full model's files
            if stale.is_dir() and stale.name != FOLDS_DIR:
                shutil.rmtree(stale)
            elif stale.is_file():
                stale.unlink()
    fold_models = []
    for k in range(cfg.folds):
        path = f"{FOLDS_DIR}/{k}"
        train = examples[fold != k]
        summary = finetune(ft, train, out / path, f"{name}_fold{k}", worker_loop)
        echo(_progress(f"fold {k + 1}/{cfg.folds}", summary, held_out=int((fold == k).sum())))
        fold_models.append(summary)
        record["folds"].append({
            "path": path, "train_ids": sorted(train["sample_id"]), "extracted": sorted(examples["sample_id"][fold == k]),
        })
    for stale in sorted((out / FOLDS_DIR).iterdir()):  # folds of an earlier run with more folds
        if stale.name not in {str(k) for k in range(cfg.folds)}:
            shutil.rmtree(stale)
    # Same folds and models -> same bytes -> same folder fingerprint -> same table version on a rerun.
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
    return {
        "out": str(out), "folds": cfg.folds, "examples": len(examples),
        "skipped": (full is None or full["skipped"]) and all(s["skipped"] for s in fold_models),
        "full": full, "fold_models": fold_models,
    }


def _progress(what: str, summary: dict, held_out: int | None = None) -> str:
    rows = f"trained on {summary['examples']} rows" + (f", held out {held_out}" if held_out is not None else "")
    if summary["skipped"]:
        return f"   {what}: {rows}: finished before, skipped"
    losses = summary["losses"]
    return f"   {what}: {rows}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {summary['seconds']} s"
