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

With ``train.audio_augment`` the plan also pins the table of the audio's
noise-augmented copies (the audio spec with that corruption: its own encoder
version, non-test rows only); :class:`AugmentedView` gives training batches in
which each sample hears its noisy copy with probability ``train.augment_p``.
"""

from __future__ import annotations

import dataclasses
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
    augment: dict[str, RoleTable] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able summary written into checkpoints."""
        out = {
            "store": self.store,
            "streaming": self.streaming,
            "tables": {r: vars(t) for r, t in self.roles.items()},
        }
        if self.augment:
            out["augment"] = {r: vars(t) for r, t in self.augment.items()}
        return out


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


def make_plan(store: str, tables: dict[str, RoleTable], budget_gb: float, streaming: bool | None,
              augment: dict[str, RoleTable] | None = None) -> ReadPlan:
    """A plan over resolved tables; ``streaming=None`` decides by the memory budget."""
    augment = augment or {}
    estimated_gb = sum(t.rows * t.dim * (1 + t.seq_len) * 4 for t in [*tables.values(), *augment.values()]) / 1e9
    if streaming is None:
        streaming = estimated_gb > budget_gb
    return ReadPlan(store, dict(sorted(tables.items())), bool(streaming), round(estimated_gb, 4), dict(augment))


def plan_read(job: Job, streaming: bool | None = None) -> ReadPlan:
    """Resolve the job's encoders to store tables and pin their newest versions.

    Args:
        job: the job (``encoders``, ``store``, ``train.use_seq``, ``execution.memory_budget_gb``).
        streaming: force a read path; ``None`` picks streaming when the
            estimated float32 size exceeds ``execution.memory_budget_gb``.

    Raises:
        MerError: no encoders, or a role's table is not in the store.
    """
    from mer.encoders import augment_spec, feature_ref, feature_refs
    from mer.store import open_store

    if not job.encoders:
        raise MerError("encoders: the job names no encoder, nothing to train on")
    store = open_store(job.store)
    tables = {}
    for role, ref in feature_refs(job.encoders).items():
        seq_len = job.encoders[role].seq_len if job.train.use_seq else 0
        tables[role] = resolve_table(store, role, ref.alias, ref.version, seq_len)
    augment = {}
    if job.train.audio_augment and "audio" in job.encoders:
        ref = feature_ref("audio", augment_spec(job))
        augment["audio"] = resolve_table(store, "audio", ref.alias, ref.version, tables["audio"].seq_len)
    return make_plan(job.store, tables, job.execution.memory_budget_gb, streaming, augment)


def _pad_seq(seq: np.ndarray | None, mask: np.ndarray | None, n: int, seq_len: int, dim: int):
    """Crop or zero-pad (N, L', D) to (N, seq_len, D) as float32."""
    out = np.zeros((n, seq_len, dim), np.float32)
    out_mask = np.zeros((n, seq_len), bool)
    if seq is not None and seq.shape[1]:
        keep = min(seq_len, seq.shape[1])
        out[:, :keep] = seq[:, :keep]
        out_mask[:, :keep] = mask[:, :keep]
    return out, out_mask


def _vector_as_step(seq: np.ndarray, mask: np.ndarray, vector: np.ndarray, rows: np.ndarray) -> None:
    """In place: each of ``rows`` (bool) without a valid step gets its pooled vector as its one step."""
    empty = rows & ~mask.any(1)
    seq[empty, 0], mask[empty, 0] = vector[empty], True


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
        augment: role -> :class:`RoleData` of its augmented copies (rows -1 where none).
    """

    ids: np.ndarray
    split: np.ndarray
    label: np.ndarray
    roles: dict[str, RoleData]
    plan: ReadPlan
    augment: dict[str, RoleData] = dataclasses.field(default_factory=dict)

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
                _vector_as_step(s, m, vector, present)
                entry["seq"], entry["seq_mask"] = torch.from_numpy(s), torch.from_numpy(m)
            out[role] = entry
        return out


class AugmentedView:
    """Training batches of ``data`` where a present role reads its augmented copy with probability ``p``.

    Draws come from torch's global generator, which the learner seeds per
    (seed, epoch), so a resumed fit draws the same swaps.
    """

    def __init__(self, data: MultiModalData, p: float):
        self.data, self.p = data, p

    def batch(self, index: np.ndarray) -> dict:
        index = np.asarray(index)
        out = self.data.batch(index)
        for role, alt in self.data.augment.items():
            rows = alt.rows[index]
            draw = torch.rand(len(index)).numpy() < self.p
            swap = np.flatnonzero(draw & (rows >= 0) & out[role]["present"].numpy())
            if not len(swap):
                continue
            vector, seq = alt.source.take(rows[swap])
            entry, at = out[role], torch.from_numpy(swap)
            entry["vector"][at] = torch.from_numpy(np.asarray(vector, np.float32))
            if "seq" in entry and seq is not None:
                s, m = seq
                entry["seq"][at], entry["seq_mask"][at] = torch.from_numpy(s), torch.from_numpy(m)
                swapped = np.zeros(len(index), bool)
                swapped[swap] = True
                _vector_as_step(entry["seq"].numpy(), entry["seq_mask"].numpy(), entry["vector"].numpy(), swapped)
        return out


class DroppedView:
    """Batches of ``data`` with ``role`` absent for every sample: the model's view when a modality is lost."""

    def __init__(self, data: MultiModalData, role: str):
        self.data, self.role = data, role

    def batch(self, index: np.ndarray) -> dict:
        out = self.data.batch(index)
        entry = out[self.role]
        entry["present"] = torch.zeros_like(entry["present"])
        entry["vector"] = torch.zeros_like(entry["vector"])
        if "seq" in entry:
            entry["seq"], entry["seq_mask"] = torch.zeros_like(entry["seq"]), torch.zeros_like(entry["seq_mask"])
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
    for role, t in [*plan.roles.items(), *((f"augment:{r}", t) for r, t in plan.augment.items())]:
        metas[role], sources[role] = _open_source(plan, t, wanted)
    aug_metas = {r: metas.pop(f"augment:{r}") for r in plan.augment}
    joined, rows = _join(metas)
    index = pd.Index(joined["sample_id"])
    augment = {}
    for role, meta in aug_metas.items():
        alt = np.full(len(joined), -1, np.int64)
        pos = index.get_indexer(meta["sample_id"])
        alt[pos[pos >= 0]] = np.flatnonzero(pos >= 0)
        augment[role] = (sources[f"augment:{role}"], alt)
    if wanted is not None:
        keep = joined["split"].isin(wanted).to_numpy()
        joined = joined[keep].reset_index(drop=True)
        rows = {r: v[keep] for r, v in rows.items()}
        augment = {r: (source, alt[keep]) for r, (source, alt) in augment.items()}
    label = joined["label"].astype(object).where(joined["label"].notna(), None).to_numpy()
    roles = {r: RoleData(plan.roles[r], sources[r], rows[r]) for r in plan.roles}
    return MultiModalData(
        ids=joined["sample_id"].to_numpy().astype(str),
        split=joined["split"].to_numpy().astype(str),
        label=label,
        roles=roles,
        plan=plan,
        augment={r: RoleData(plan.augment[r], source, alt) for r, (source, alt) in augment.items()},
    )


def _open_source(plan: ReadPlan, t: RoleTable, wanted: list[str] | None):
    """``(meta frame sample_id/split/label, source)`` of one table: in memory, or streamed by position."""
    if plan.streaming:
        source = LanceSource(plan.store, t)
        return source.snapshot().meta(), source
    from mer.store import open_store

    f = open_store(plan.store).read(t.table, split=wanted, with_seq=bool(t.seq_len), as_of=t.table_version,
                                    max_len=t.seq_len or None)
    seq = _pad_seq(f.seq, f.seq_mask, len(f.ids), t.seq_len, t.dim) if t.seq_len else None
    meta = pd.DataFrame({"sample_id": f.ids.astype(str), "split": f.split, "label": f.label})
    return meta, ArraySource(f.vector, *(seq if seq else (None, None)))


def load_features(job: Job, splits: str | list[str] | None = None, streaming: bool | None = None) -> MultiModalData:
    """The job's features joined on sample_id (numpy or streaming path by budget)."""
    return read_plan(plan_read(job, streaming=streaming), splits)
