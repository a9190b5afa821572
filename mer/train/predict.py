"""Predict with one checkpoint or average several (seeds, folds) into one CSV.

Prediction reads the newest version of the tables the checkpoint was trained
on (same encoder alias and version), so samples extracted after training, e.g.
a new manifest's test clips, are predicted too. Runs in the calling process;
no Ray needed for inference over cached embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mer.config import ExecutionConfig
from mer.errors import MerError
from mer.train.checkpoint import load_models
from mer.train.data import make_plan, read_plan, resolve_table
from mer.train.learner import predict_proba


def probabilities(checkpoints: list[str | Path], store_uri: str | None, split: str | list[str], swap: dict | None = None,
                  reads: dict | None = None):
    """Mean softmax over every model (fold) of every checkpoint.

    ``swap`` (role -> :class:`mer.encoders.FeatureRef`) reads a role from another
    feature table of the same width than the one trained on: the corrupted or
    dropped test features of a robustness condition. ``reads``: a dict the
    caller keeps to reuse what was read for the same tables and split (many
    checkpoints over one snapshot: the robustness table).

    Returns:
        ``(ids, probs (N, C), labels, split per sample)``.
    """
    from mer.store import open_store

    reads = {} if reads is None else reads
    total, ids, labels, data = None, None, None, None
    count = 0
    for checkpoint in checkpoints:
        config, models = load_models(checkpoint)
        if labels is not None and config["labels"] != labels:
            raise MerError(f"{checkpoint}: label set differs from the other checkpoints")
        labels = config["labels"]
        uri = store_uri or config["read"]["store"]
        store = open_store(uri)
        tables = {}
        for role, t in config["read"]["tables"].items():
            ref = (swap or {}).get(role)
            alias, version = (ref.alias, ref.version) if ref else (t["alias"], t["encoder_version"])
            tables[role] = resolve_table(store, role, alias, version, t["seq_len"])
            if tables[role].dim != t["dim"]:
                raise MerError(f"{checkpoint}: role {role} was trained on {t['dim']}-d features, "
                               f"{tables[role].table} has {tables[role].dim}")
        key = (uri, tuple((r, t.table, t.table_version, t.seq_len) for r, t in sorted(tables.items())), str(split))
        if key not in reads:
            reads[key] = read_plan(make_plan(uri, tables, ExecutionConfig().memory_budget_gb, None), split)
        data = reads[key]
        if ids is not None and not np.array_equal(ids, data.ids):
            raise MerError(f"{checkpoint}: reads different samples than the other checkpoints")
        ids = data.ids
        index = np.arange(len(data))
        for model in models:
            probs = predict_proba(model, data, index, 256) if len(index) else np.zeros((0, len(labels)))
            total = probs if total is None else total + probs
            count += 1
    return ids, total / max(count, 1), labels, data.split


def predict(checkpoint_dir: str | Path | list, store_uri: str | None = None, split: str = "test",
            swap: dict | None = None, reads: dict | None = None) -> pd.DataFrame:
    """Predictions ``sample_id,label,p_<label>...`` for every sample of ``split``.

    Args:
        checkpoint_dir: a checkpoint folder, or a list of them (ensembled by
            averaging probabilities).
        store_uri: store to read (default: the one the checkpoint was trained on).
        split: ``test``, ``unlabeled``, ``train`` or a list of them.
        swap: role -> FeatureRef read instead of the trained-on table (see :func:`probabilities`).
        reads: reuse reads of the same tables across calls (see :func:`probabilities`).
    """
    checkpoints = checkpoint_dir if isinstance(checkpoint_dir, (list, tuple)) else [checkpoint_dir]
    ids, probs, labels, _ = probabilities(checkpoints, store_uri, split, swap, reads)
    frame = pd.DataFrame({"sample_id": ids, "label": np.asarray(labels, object)[probs.argmax(1)] if len(ids) else []})
    for i, name in enumerate(labels):
        frame[f"p_{name}"] = probs[:, i] if len(ids) else []
    return frame


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """Write predictions CSV (probabilities with 6 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.6f")
    return path
