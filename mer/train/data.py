"""Read features from the store, joined across streams on sample_id.

A :class:`ReadPlan` names, for every stream (a role, or one of a role's
encoders), the store table (``features__<alias>__<version8>``) and the table
version it reads, so a training run reads a fixed snapshot and its checkpoint
can say which.

:func:`read_plan` first reads the small columns (``sample_id, split, label``)
of every table, joins them and keeps the rows asked for (splits, and
pseudo-labeled ids wherever they are), so a fit on 7,369 labeled clips never
touches the 125,000 unlabeled ones. Then one of two paths gives the same batches:

* numpy (when the kept rows fit in ``execution.memory_budget_gb``): one Lance
  ``take`` of the kept rows per table, held in arrays;
* streaming (above the budget): each batch is fetched with Lance random access
  (``take``) by row position, which works the same on a local folder and on
  object storage, so memory stays flat whatever the pool size.

Both paths sort samples by ``sample_id`` and pad ``seq`` to the encoder's
``seq_len``, so the same seed yields the same batches, bit for bit.

With ``train.audio_augment`` the plan also pins the table of the audio's
noise-augmented copies (the audio spec with that corruption: its own encoder
version, non-test rows only); :class:`AugmentedView` gives training batches in
which each sample hears its noisy copy with probability ``train.augment_p``.
No Ray here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mer.config import EncoderSpec, TrainConfig
from mer.errors import MerError


@dataclass(frozen=True)
class RoleTable:
    """Where one stream's features live and how they are read."""

    role: str
    alias: str
    encoder_version: str
    table: str
    table_version: int
    dim: int
    seq_len: int
    rows: int

    @property
    def row_bytes(self) -> int:
        """float32 bytes of one row as read (vector plus padded seq)."""
        return self.dim * (1 + self.seq_len) * 4


@dataclass(frozen=True)
class ReadPlan:
    """Everything a worker needs to read the same snapshot (small, picklable).

    ``streaming``: True or False forces a read path; None picks it by the size
    of the rows a read keeps against ``budget_gb``. ``groups``: the manifest
    whose ``group`` column (speaker, source video, session) every split of
    the rows keeps apart; empty when it has none.
    """

    store: str
    roles: dict[str, RoleTable]
    streaming: bool | None
    budget_gb: float
    augment: dict[str, RoleTable] = dataclasses.field(default_factory=dict)
    groups: str = ""

    @property
    def estimated_gb(self) -> float:
        """float32 size of every row of every table (what reading all of them would hold)."""
        return sum(t.rows * t.row_bytes for t in [*self.roles.values(), *self.augment.values()]) / 1e9

    def describe(self) -> dict:
        """JSON-able summary written into checkpoints."""
        out = {"store": self.store, "streaming": self.streaming, "tables": {r: vars(t) for r, t in self.roles.items()},
               "groups": self.groups}
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
        StoreError: the table is not in the store.
    """
    from mer.store import StoreError, table_name

    name = table_name(alias, encoder_version)
    if name not in store.table_names():
        raise StoreError(f"store {store.uri}: no table {name} for '{role}' (run the extract stage, or `mer store import`)")
    info = store.describe_table(name)
    seq_len = seq_len if info["has_seq"] else 0
    return RoleTable(role, alias, encoder_version, name, info["version"], info["dim"], int(seq_len), info["rows"])


def make_plan(store: str, tables: dict[str, RoleTable], budget_gb: float, streaming: bool | None = None,
              augment: dict[str, RoleTable] | None = None, groups: str = "") -> ReadPlan:
    """A plan over resolved tables; ``streaming=None`` decides by the rows each read keeps."""
    return ReadPlan(store, dict(sorted(tables.items())), streaming, float(budget_gb), dict(augment or {}), groups)


def plan_read(store: str, encoders: dict[str, EncoderSpec], train: TrainConfig, budget_gb: float,
              streaming: bool | None = None, manifest: str = "") -> ReadPlan:
    """Resolve encoder specs (stream -> spec) to store tables and pin their newest versions.

    Args:
        store: the store URI.
        encoders: stream -> encoder spec.
        train: reads ``use_seq`` and ``audio_augment``.
        budget_gb: features up to this size are read into numpy.
        streaming: force a read path (None: by size).
        manifest: the features' manifest; its ``group`` column, when it has one,
            keeps groups apart in every fold and holdout.

    Raises:
        MerError: no encoders, or a stream's table is not in the store.
    """
    from mer.encoders import augment_spec, feature_ref
    from mer.store import open_store

    if not encoders:
        raise MerError("encoders: the job names no encoder, nothing to train on")
    db = open_store(store, create=False)
    tables = {}
    for stream, spec in encoders.items():
        ref = feature_ref(stream, spec)
        tables[stream] = resolve_table(db, stream, ref.alias, ref.version, spec.seq_len if train.use_seq else 0)
    augment = {}
    if train.audio_augment and "audio" in encoders:
        ref = feature_ref("audio", augment_spec(encoders["audio"], train.audio_augment))
        augment["audio"] = resolve_table(db, "audio", ref.alias, ref.version, tables["audio"].seq_len)
    return make_plan(store, tables, budget_gb, streaming, augment, manifest if has_groups(manifest) else "")


def has_groups(manifest: str) -> bool:
    """The manifest has a ``group`` column (its header only is read)."""
    if not manifest or not Path(manifest).is_file():
        return False
    return "group" in pd.read_csv(manifest, nrows=0).columns.str.strip()


def read_groups(manifest: str, ids: np.ndarray) -> np.ndarray:
    """Each id's ``group`` in the manifest (object array; "" where it has none)."""
    frame = pd.read_csv(manifest, usecols=lambda c: c.strip() in ("sample_id", "group"), dtype=str,
                        keep_default_na=False)
    frame.columns = frame.columns.str.strip()
    found = frame.drop_duplicates("sample_id").set_index("sample_id")["group"].str.strip()
    return found.reindex(ids).fillna("").to_numpy(dtype=object)


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
    """One stream's features held in memory (numpy path)."""

    def __init__(self, vector: np.ndarray, seq: np.ndarray | None, seq_mask: np.ndarray | None):
        self.vector = np.ascontiguousarray(vector, dtype=np.float32)
        self.seq = seq
        self.seq_mask = seq_mask

    def take(self, rows: np.ndarray, seq: bool = True):
        steps = None if self.seq is None or not seq else (self.seq[rows], self.seq_mask[rows])
        return self.vector[rows], steps


class LanceSource:
    """One stream's features fetched by row position from the pinned table (streaming path).

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

            self._snapshot = open_store(self.store, create=False).snapshot(self.table.table, self.table.table_version)
        return self._snapshot

    def take(self, rows: np.ndarray, seq: bool = True):
        t = self.table
        vector, steps = self.snapshot().take(rows, t.seq_len if seq else 0)
        if steps is None:
            return vector, None
        return vector, _pad_seq(*steps, len(rows), t.seq_len, t.dim)

    def hold(self, rows: np.ndarray) -> tuple[ArraySource, np.ndarray]:
        """The rows at these positions read once into memory, and each position's row in the result."""
        order = np.unique(rows[rows >= 0])
        vector, seq = self.take(order) if len(order) else (np.zeros((0, self.table.dim), np.float32), None)
        if seq is None and self.table.seq_len:
            seq = _pad_seq(None, None, 0, self.table.seq_len, self.table.dim)
        moved = np.where(rows >= 0, np.searchsorted(order, rows), -1)
        return ArraySource(vector, *(seq if seq is not None else (None, None))), moved


@dataclass
class RoleData:
    """A stream's source plus, per joined sample, its row in the source (-1 = absent)."""

    table: RoleTable
    source: ArraySource | LanceSource
    rows: np.ndarray


@dataclass
class MultiModalData:
    """Samples joined on ``sample_id`` across streams (outer join, sorted by id).

    Attributes:
        ids, split, label: per joined sample (label None where unlabeled).
        roles: stream -> :class:`RoleData`.
        plan: the :class:`ReadPlan` read.
        augment: role -> :class:`RoleData` of its augmented copies (rows -1 where none).
        group: per joined sample, its manifest ``group`` ("" = none); None when
            the manifest has no such column.
    """

    ids: np.ndarray
    split: np.ndarray
    label: np.ndarray
    roles: dict[str, RoleData]
    plan: ReadPlan
    augment: dict[str, RoleData] = dataclasses.field(default_factory=dict)
    group: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dims(self) -> dict[str, int]:
        return {r: d.table.dim for r, d in self.roles.items()}

    def present(self) -> dict[str, np.ndarray]:
        """Stream -> (N,) bool: which samples have that modality."""
        return {r: d.rows >= 0 for r, d in self.roles.items()}

    def batch(self, index: np.ndarray, seq: bool = True) -> dict:
        """Model input for the joined samples at ``index`` (torch tensors); ``seq=False`` reads vectors only."""
        index = np.asarray(index)
        out = {}
        for role, data in self.roles.items():
            rows = data.rows[index]
            present = rows >= 0
            n, dim, seq_len = len(index), data.table.dim, data.table.seq_len
            vector = np.zeros((n, dim), np.float32)
            v, steps = data.source.take(rows[present], seq and seq_len > 0)
            vector[present] = v
            entry = {"vector": torch.from_numpy(vector), "present": torch.from_numpy(present)}
            if seq and seq_len:
                s = np.zeros((n, seq_len, dim), np.float32)
                m = np.zeros((n, seq_len), bool)
                s[present], m[present] = steps
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


def join(metas: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Outer join of per-stream (sample_id, split, label) frames, sorted by id.

    Returns:
        ``(joined sample_id/split/label, stream -> (N,) row in that stream's table, -1 = absent)``.
    """
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


def _keep(joined: pd.DataFrame, splits: str | list[str] | None, ids) -> np.ndarray | None:
    """Rows of ``splits``, plus rows whose id is in ``ids`` (None: every row)."""
    if splits is None and ids is None:
        return None
    keep = np.zeros(len(joined), bool)
    if splits is not None:
        keep |= joined["split"].isin([splits] if isinstance(splits, str) else list(splits)).to_numpy()
    if ids is not None and len(ids):
        keep |= pd.Index(np.asarray(ids, dtype=str)).get_indexer(joined["sample_id"]) >= 0
    return keep


def read_plan(plan: ReadPlan, splits: str | list[str] | None = None, ids=None) -> MultiModalData:
    """Index the plan's tables, join them on sample_id and keep the rows asked for.

    Args:
        plan: from :func:`plan_read` or :func:`make_plan`.
        splits: keep the rows of these splits (``None`` with ``ids`` None = all).
        ids: also keep these sample ids, whatever their split (pseudo-labeled rows).
    """
    sources = {role: LanceSource(plan.store, t) for role, t in plan.roles.items()}
    aug_sources = {role: LanceSource(plan.store, t) for role, t in plan.augment.items()}
    joined, rows = join({role: s.snapshot().meta() for role, s in sources.items()})
    aug_rows = {}
    index = pd.Index(joined["sample_id"])
    for role, source in aug_sources.items():
        meta = source.snapshot().meta()
        alt = np.full(len(joined), -1, np.int64)
        pos = index.get_indexer(meta["sample_id"])
        alt[pos[pos >= 0]] = np.flatnonzero(pos >= 0)
        aug_rows[role] = alt
    keep = _keep(joined, splits, ids)
    if keep is not None:
        joined = joined[keep].reset_index(drop=True)
        rows = {r: v[keep] for r, v in rows.items()}
        aug_rows = {r: v[keep] for r, v in aug_rows.items()}
    row_bytes = sum(t.row_bytes for t in [*plan.roles.values(), *plan.augment.values()])
    streaming = plan.streaming if plan.streaming is not None else len(joined) * row_bytes > plan.budget_gb * 1e9
    held = {}
    for role, source in [*sources.items(), *((f"augment:{r}", s) for r, s in aug_sources.items())]:
        positions = rows[role] if role in rows else aug_rows[role.split(":", 1)[1]]
        held[role] = (source, positions) if streaming else source.hold(positions)
    label = joined["label"].astype(object).where(joined["label"].notna(), None).to_numpy()
    return MultiModalData(
        ids=joined["sample_id"].to_numpy().astype(str),
        split=joined["split"].to_numpy().astype(str),
        label=label,
        roles={r: RoleData(plan.roles[r], *held[r]) for r in plan.roles},
        plan=dataclasses.replace(plan, streaming=streaming),
        augment={r: RoleData(plan.augment[r], *held[f"augment:{r}"]) for r in plan.augment},
        group=read_groups(plan.groups, joined["sample_id"].to_numpy().astype(str)) if plan.groups else None,
    )
