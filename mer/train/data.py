"""Read a job's features from the store, joined across roles on sample_id.

A :class:`ReadPlan` names, for every role of the job, the store table
(``features__<alias>__<version8>``) and the table version it reads, so a
training run reads a fixed snapshot and its checkpoint can say which.

Two read paths give the same batches:

* numpy (default when the features fit in ``execution.memory_budget_gb``): one
  column-projected ``FeatureStore.read`` per role into arrays;
* streaming (above the budget): only ``sample_id/split/label`` are read up
  front; each batch is fetched with Lance random access (``take``) by row
  position, which works the same on a local folder and on object storage.

Both paths sort samples by ``sample_id`` and pad ``seq`` to the encoder's
``seq_len``, so the same seed yields the same batches, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mer.config import Job
from mer.errors import MerError


@dataclass(frozen=True)
class RoleTable:
    """Where one role's features live and how they are read."""

    role: str
    alias: str
    encoder_version: str
    table: str
    table_version: int
    dim: int
    seq_len: int
    rows: int


@dataclass(frozen=True)
class ReadPlan:
    """Everything a worker needs to read the same snapshot (small, picklable)."""

    store: str
    roles: dict[str, RoleTable]
    streaming: bool
    estimated_gb: float

    def describe(self) -> dict:
        """JSON-able summary written into checkpoints."""
        return {
            "store": self.store,
            "streaming": self.streaming,
            "tables": {r: vars(t) for r, t in self.roles.items()},
        }


def resolve_table(store, role: str, alias: str, encoder_version: str, seq_len: int) -> RoleTable:
    """Newest version of the table holding ``alias``/``encoder_version`` features.

    Args:
        store: an open :class:`mer.store.FeatureStore`.
        seq_len: steps of ``seq`` to read (0 = pooled vectors only); ignored
            when the table has no ``seq`` column.

    Raises:
        MerError: the table is not in the store.
    """
    from mer.store import StoreError, table_name

    name = table_name(alias, encoder_version)
    if name not in store.table_names():
        raise StoreError(f"store {store.uri}: no table {name} for role '{role}' (run the extract stage first)")
    info = store.describe_table(name)
    seq_len = seq_len if info["has_seq"] else 0
    return RoleTable(role, alias, encoder_version, name, info["version"], info["dim"], int(seq_len), info["rows"])


def make_plan(store: str, tables: dict[str, RoleTable], budget_gb: float, streaming: bool | None) -> ReadPlan:
    """A plan over resolved tables; ``streaming=None`` decides by the memory budget."""
    estimated_gb = sum(t.rows * t.dim * (1 + t.seq_len) * 4 for t in tables.values()) / 1e9
    if streaming is None:
        streaming = estimated_gb > budget_gb
    return ReadPlan(store, dict(sorted(tables.items())), bool(streaming), round(estimated_gb, 4))


def plan_read(job: Job, streaming: bool | None = None) -> ReadPlan:
    """Resolve the job's encoders to store tables and pin their newest versions.

    Args:
        job: the job (``encoders``, ``store``, ``train.use_seq``, ``execution.memory_budget_gb``).
        streaming: force a read path; ``None`` picks streaming when the
            estimated float32 size exceeds ``execution.memory_budget_gb``.

    Raises:
        MerError: no encoders, or a role's table is not in the store.
    """
    from mer.encoders import feature_refs
    from mer.store import open_store

    if not job.encoders:
        raise MerError("encoders: the job names no encoder, nothing to train on")
    store = open_store(job.store)
    tables = {}
    for role, ref in feature_refs(job.encoders).items():
        seq_len = job.encoders[role].seq_len if job.train.use_seq else 0
        tables[role] = resolve_table(store, role, ref.alias, ref.version, seq_len)
    return make_plan(job.store, tables, job.execution.memory_budget_gb, streaming)


def _pad_seq(seq: np.ndarray | None, mask: np.ndarray | None, n: int, seq_len: int, dim: int):
    """Crop or zero-pad (N, L', D) to (N, seq_len, D) as float32."""
    out = np.zeros((n, seq_len, dim), np.float32)
    out_mask = np.zeros((n, seq_len), bool)
    if seq is not None and seq.shape[1]:
        keep = min(seq_len, seq.shape[1])
        out[:, :keep] = seq[:, :keep]
        out_mask[:, :keep] = mask[:, :keep]
    return out, out_mask


class ArraySource:
    """One role's features held in memory (numpy path)."""

    def __init__(self, vector: np.ndarray, seq: np.ndarray | None, seq_mask: np.ndarray | None):
        self.vector = np.ascontiguousarray(vector, dtype=np.float32)
        self.seq = seq
        self.seq_mask = seq_mask

    def take(self, rows: np.ndarray):
        seq = None if self.seq is None else (self.seq[rows], self.seq_mask[rows])
        return self.vector[rows], seq


class LanceSource:
    """One role's features fetched per batch by row position (streaming path).

    Opens the pinned table version lazily, so the object pickles to Ray workers
    as three strings and an int.
    """

    def __init__(self, store: str, table: RoleTable):
        self.store = store
        self.table = table
        self._snapshot = None

    def __getstate__(self):
        return {"store": self.store, "table": self.table, "_snapshot": None}

    def snapshot(self):
        """The pinned table (:class:`mer.store.snapshot.TableSnapshot`, opened once per process)."""
        if self._snapshot is None:
            from mer.store import open_store

            self._snapshot = open_store(self.store).snapshot(self.table.table, self.table.table_version)
        return self._snapshot

    def take(self, rows: np.ndarray):
        t = self.table
        vector, seq = self.snapshot().take(rows, t.seq_len)
        if seq is None:
            return vector, None
        return vector, _pad_seq(*seq, len(rows), t.seq_len, t.dim)


@dataclass
class RoleData:
    """A role's source plus, per joined sample, its row in the source (-1 = absent)."""

    table: RoleTable
    source: ArraySource | LanceSource
    rows: np.ndarray


@dataclass
class MultiModalData:
    """Samples joined on ``sample_id`` across roles (outer join, sorted by id).

    Attributes:
        ids, split, label: per joined sample (label None where unlabeled).
        roles: role -> :class:`RoleData`.
        plan: the :class:`ReadPlan` read.
    """

    ids: np.ndarray
    split: np.ndarray
    label: np.ndarray
    roles: dict[str, RoleData]
    plan: ReadPlan

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dims(self) -> dict[str, int]:
        return {r: d.table.dim for r, d in self.roles.items()}

    def present(self) -> dict[str, np.ndarray]:
        """Role -> (N,) bool: which samples have that modality."""
        return {r: d.rows >= 0 for r, d in self.roles.items()}

    def batch(self, index: np.ndarray) -> dict:
        """Model input for the joined samples at ``index`` (torch tensors)."""
        index = np.asarray(index)
        out = {}
        for role, data in self.roles.items():
            rows = data.rows[index]
            present = rows >= 0
            n, dim, seq_len = len(index), data.table.dim, data.table.seq_len
            vector = np.zeros((n, dim), np.float32)
            v, seq = data.source.take(rows[present])
            vector[present] = v
            entry = {"vector": torch.from_numpy(vector), "present": torch.from_numpy(present)}
            if seq_len:
                s = np.zeros((n, seq_len, dim), np.float32)
                m = np.zeros((n, seq_len), bool)
                s[present], m[present] = seq
                # a present sample without steps falls back to its pooled vector
                empty = present & ~m.any(1)
                s[empty, 0], m[empty, 0] = vector[empty], True
                entry["seq"], entry["seq_mask"] = torch.from_numpy(s), torch.from_numpy(m)
            out[role] = entry
        return out


def _join(metas: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Outer join of per-role (sample_id, split, label) frames, sorted by id."""
    frames = [m.assign(_role=r, _row=np.arange(len(m))) for r, m in metas.items()]
    allrows = pd.concat(frames, ignore_index=True)
    first = allrows.sort_values(["sample_id", "_role"], kind="stable").drop_duplicates("sample_id")
    joined = first.sort_values("sample_id", kind="stable").reset_index(drop=True)[["sample_id", "split", "label"]]
    index = pd.Index(joined["sample_id"])
    rows = {}
    for role, meta in metas.items():
        pos = index.get_indexer(meta["sample_id"])
        r = np.full(len(joined), -1, np.int64)
        r[pos] = np.arange(len(meta))
        rows[role] = r
    return joined, rows


def _split_list(splits) -> list[str] | None:
    if splits is None:
        return None
    return [splits] if isinstance(splits, str) else list(splits)


def read_plan(plan: ReadPlan, splits: str | list[str] | None = None) -> MultiModalData:
    """Read (numpy) or index (streaming) the plan's tables; join on sample_id.

    Args:
        plan: from :func:`plan_read`.
        splits: keep only these splits (``None`` = all).
    """
    wanted = _split_list(splits)
    metas, sources = {}, {}
    if plan.streaming:
        for role, t in plan.roles.items():
            source = LanceSource(plan.store, t)
            meta = source.snapshot().meta()
            metas[role], sources[role] = meta, source
    else:
        from mer.store import open_store

        store = open_store(plan.store)
        for role, t in plan.roles.items():
            f = store.read(t.table, split=wanted, with_seq=bool(t.seq_len), as_of=t.table_version, max_len=t.seq_len or None)
            seq = None
            if t.seq_len:
                seq = _pad_seq(f.seq, f.seq_mask, len(f.ids), t.seq_len, t.dim)
            metas[role] = pd.DataFrame({"sample_id": f.ids.astype(str), "split": f.split, "label": f.label})
            sources[role] = ArraySource(f.vector, *(seq if seq else (None, None)))
    joined, rows = _join(metas)
    if wanted is not None:
        keep = joined["split"].isin(wanted).to_numpy()
        joined = joined[keep].reset_index(drop=True)
        rows = {r: v[keep] for r, v in rows.items()}
    label = joined["label"].astype(object).where(joined["label"].notna(), None).to_numpy()
    roles = {r: RoleData(plan.roles[r], sources[r], rows[r]) for r in plan.roles}
    return MultiModalData(
        ids=joined["sample_id"].to_numpy().astype(str),
        split=joined["split"].to_numpy().astype(str),
        label=label,
        roles=roles,
        plan=plan,
    )


def load_features(job: Job, splits: str | list[str] | None = None, streaming: bool | None = None) -> MultiModalData:
    """The job's features joined on sample_id (numpy or streaming path by budget)."""
    return read_plan(plan_read(job, streaming=streaming), splits)
