"""Predict a stored split with checkpoints, shard by shard, in the calling process (no Ray).

A pass over a split first indexes it (the small ``sample_id, split, label``
columns of each table, joined on sample_id), then reads the features of one
shard of samples at a time (Lance ``take`` by row position) and runs every
checkpoint's models on it. So the features are read once for all the
checkpoints of a round, and memory holds one shard however large the pool:
``shard_rows`` is sized from a byte budget. :mod:`mer.train.parallel` runs the
same shards on a Ray Data actor pool, so a cluster's nodes share the work.

Prediction reads the newest version of the tables a checkpoint was trained on
(same encoder alias and version), so samples extracted after training, e.g. a
new manifest's test clips, are predicted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mer.errors import MerError
from mer.train.checkpoint import load_models, read_config
from mer.train.data import LanceSource, MultiModalData, RoleData, RoleTable, join, make_plan, resolve_table
from mer.train.learner import predict_proba

#: Bytes of float32 features one shard may hold (vectors and padded sequences of every stream).
SHARD_BYTES = 256 * 2**20
MIN_SHARD_ROWS = 256


@dataclass
class Member:
    """One checkpoint: its folder, config and models (one per fold, in eval mode)."""

    path: Path
    config: dict
    models: list[nn.Module]

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])


def load_members(checkpoints: list[str | Path], device: str = "cpu") -> list[Member]:
    """Every checkpoint's config and models; MerError when their label sets differ."""
    members = []
    for path in checkpoints:
        config, models = load_models(path)
        members.append(Member(Path(path), config, [m.to(device) for m in models]))
    if len({tuple(m.labels) for m in members}) > 1:
        raise MerError(f"{members[-1].path}: label set differs from the other checkpoints")
    return members


def checkpoint_tables(checkpoint: str | Path, config: dict, store, swap: dict | None = None) -> dict[str, RoleTable]:
    """The newest version of each table a checkpoint was trained on, or the ``swap`` stream's table instead.

    ``swap`` (stream -> :class:`mer.encoders.FeatureRef`) reads a stream from
    another feature table of the same width: the corrupted or dropped test
    features of a robustness condition.
    """
    tables = {}
    for role, t in config["read"]["tables"].items():
        ref = (swap or {}).get(role)
        alias, version = (ref.alias, ref.version) if ref else (t["alias"], t["encoder_version"])
        tables[role] = resolve_table(store, role, alias, version, t["seq_len"])
        if tables[role].dim != t["dim"]:
            raise MerError(f"{checkpoint}: {role} was trained on {t['dim']}-d features, "
                           f"{tables[role].table} has {tables[role].dim}")
    return tables


def tables_key(tables: dict[str, RoleTable]) -> tuple:
    """What a pass reads: every stream's table, pinned version and sequence length."""
    return tuple(sorted((r, t.table, t.table_version, t.seq_len) for r, t in tables.items()))


@dataclass
class SplitIndex:
    """The samples of a split joined across the tables one pass reads, and where each sits in each table."""

    store: str
    tables: dict[str, RoleTable]
    ids: np.ndarray
    rows: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def shards(self, budget_bytes: int = SHARD_BYTES) -> list[tuple[int, int]]:
        """``(start, stop)`` ranges of at most the rows whose features fit ``budget_bytes``."""
        row_bytes = max(1, sum(t.row_bytes for t in self.tables.values()))
        size = max(MIN_SHARD_ROWS, int(budget_bytes // row_bytes))
        return [(start, min(start + size, len(self))) for start in range(0, len(self), size)]

    def shard(self, start: int, stop: int) -> MultiModalData:
        """The features of samples ``start:stop``, read into memory (one ``take`` per table)."""
        roles = {}
        for role, table in self.tables.items():
            source, rows = LanceSource(self.store, table).hold(self.rows[role][start:stop])
            roles[role] = RoleData(table, source, rows)
        n = stop - start
        return MultiModalData(ids=self.ids[start:stop], split=np.full(n, ""), label=np.full(n, None, object),
                              roles=roles, plan=make_plan(self.store, self.tables, 0.0, False))


def index_split(store_uri: str, tables: dict[str, RoleTable], split: str | list[str]) -> SplitIndex:
    """Join the tables' ``sample_id, split`` columns and keep ``split``'s samples, sorted by id."""
    metas = {role: LanceSource(store_uri, t).snapshot().meta() for role, t in tables.items()}
    joined, rows = join(metas)
    keep = joined["split"].isin([split] if isinstance(split, str) else list(split)).to_numpy()
    return SplitIndex(store_uri, tables, joined["sample_id"].to_numpy()[keep].astype(str),
                      {r: v[keep] for r, v in rows.items()})


def predict_shard(members: list[Member], data: MultiModalData) -> np.ndarray:
    """``(members, n, classes)`` float32: each member's mean softmax over its folds."""
    index = np.arange(len(data))
    return np.stack([np.mean([predict_proba(m, data, index, 256) for m in member.models], axis=0)
                     if len(index) else np.zeros((0, len(member.labels)), np.float32) for member in members])


def frame(ids: np.ndarray, probs: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """``sample_id,label,p_<label>...`` from ids and an (N, C) probability array."""
    out = pd.DataFrame({"sample_id": ids, "label": np.asarray(labels, object)[probs.argmax(1)] if len(ids) else []})
    for i, name in enumerate(labels):
        out[f"p_{name}"] = probs[:, i] if len(ids) else []
    return out


def passes(checkpoints: list, store_uri: str, split: str | list[str], swap: dict | None = None):
    """Group checkpoints by the tables they read: one :class:`SplitIndex` and the checkpoints' positions per group."""
    from mer.store import open_store

    store = open_store(store_uri, create=False)
    groups: dict[tuple, tuple[dict, list[int]]] = {}
    for i, checkpoint in enumerate(checkpoints):
        tables = checkpoint_tables(checkpoint, read_config(checkpoint), store, swap)
        groups.setdefault(tables_key(tables), (tables, []))[1].append(i)
    return [(index_split(store_uri, tables, split), idx) for tables, idx in groups.values()]


def predict_members(members: list[Member], store_uri: str, split: str | list[str], swap: dict | None = None,
                    budget_bytes: int = SHARD_BYTES) -> list[pd.DataFrame]:
    """One predictions frame per member over ``split``, in this process, shard by shard."""
    out: list[pd.DataFrame | None] = [None] * len(members)
    for index, which in passes([m.path for m in members], store_uri, split, swap):
        group = [members[i] for i in which]
        probs = [predict_shard(group, index.shard(a, b)) for a, b in index.shards(budget_bytes)]
        stacked = np.concatenate(probs, axis=1) if probs else np.zeros((len(group), 0, len(group[0].labels)))
        for k, i in enumerate(which):
            out[i] = frame(index.ids, stacked[k], members[i].labels)
    return out


def predict(checkpoint_dir: str | Path | list, store_uri: str | None = None, split: str = "test",
            swap: dict | None = None) -> pd.DataFrame:
    """Predictions ``sample_id,label,p_<label>...`` of every sample of ``split``: the mean over every checkpoint.

    Args:
        checkpoint_dir: a checkpoint folder, or a list of them (ensembled by averaging probabilities).
        store_uri: store to read (default: the one the first checkpoint was trained on).
        split: ``test``, ``unlabeled``, ``train`` or a list of them.
        swap: stream -> FeatureRef read instead of the trained-on table (see :func:`member_tables`).
    """
    checkpoints = checkpoint_dir if isinstance(checkpoint_dir, (list, tuple)) else [checkpoint_dir]
    members = load_members(checkpoints)
    uri = store_uri or members[0].config["read"]["store"]
    frames = predict_members(members, uri, split, swap)
    if any(not f["sample_id"].equals(frames[0]["sample_id"]) for f in frames[1:]):
        raise MerError(f"{checkpoints[-1]}: reads different samples than the other checkpoints")
    cols = [c for c in frames[0].columns if c.startswith("p_")]
    mean = np.mean([f[cols].to_numpy() for f in frames], axis=0) if len(frames[0]) else np.zeros((0, len(cols)))
    return frame(frames[0]["sample_id"].to_numpy(), mean, members[0].labels)
