"""The feature store: one LanceDB table per encoder version.

Writes are idempotent upserts keyed on ``sample_id`` (one Lance commit per
batch, so a batch lands whole or not at all); reads project columns straight
into numpy. Nothing here imports Ray; any Lance client (``ray.data.read_lance``
on ``<store>/<table>.lance`` included) reads the same tables.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mer.errors import MerError
from mer.store.arrays import feature_table, seq_from_arrow, vectors_from_arrow
from mer.store.diff import COMPARED, changed_rows
from mer.store.errors import DimensionError, StoreError, lance_message
from mer.store.options import failure_cause, store_options
from mer.store.schema import feature_schema, parse_table_name, table_name, vector_dim
from mer.store.snapshot import TableSnapshot
from mer.store.transcripts import TRANSCRIPTS_PREFIX, read_transcripts, write_transcripts

# Lance retries a conflicting commit itself; these extra attempts cover the
# conflicts it gives up on when many writers append to one table at once.
COMMIT_ATTEMPTS = 5


@dataclass
class Features:
    """Columns of one feature table as numpy arrays, rows in table order.

    Attributes:
        ids: (N,) sample ids (str).
        split: (N,) split names.
        label: (N,) object array; None where unlabeled.
        vector: (N, D) float32 pooled embeddings.
        seq: (N, L, D) padded sequences, or None when not asked for.
        seq_mask: (N, L) True on real steps, or None.
        table: table name read.
        table_version: Lance version read; ``read(..., as_of=table_version)`` returns the same rows.
    """

    ids: np.ndarray
    split: np.ndarray
    label: np.ndarray
    vector: np.ndarray
    seq: np.ndarray | None
    seq_mask: np.ndarray | None
    table: str
    table_version: int

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TableInfo:
    """Summary of one table for ``mer query tables``."""

    name: str
    alias: str | None
    version: str | None
    dim: int | None
    rows: int
    versions: int
    created: object
    splits: dict
    labels: dict
    indexed: bool


def open_store(uri: str | Path = "mer_store", create: bool = True) -> FeatureStore:
    """Connect to a store; other URIs than local folders go to lancedb with :func:`store_options`.

    Args:
        uri: local folder or lancedb URI (``s3://bucket/path``, ``gs://...``); an
            object store's endpoint, credentials and timeouts come from the
            environment (see :mod:`mer.store.options`).
        create: create a missing local folder (readers pass False so a typo
            is an error rather than an empty store).

    Raises:
        StoreError: the URI cannot be opened (names the URI and the cause).
    """
    import lancedb

    uri = str(uri)
    try:
        if "://" not in uri:
            if Path(uri).exists() and not Path(uri).is_dir():
                raise StoreError(f"store {uri!r} is a file, not a folder")
            if not create and not Path(uri).is_dir():
                raise StoreError(f"store {uri!r} does not exist (run a job that extracts features, or pass --store)")
            Path(uri).mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(uri, storage_options=store_options(uri) or None)
        db.list_tables(limit=1)
    except StoreError:
        raise
    except Exception as exc:  # lancedb raises OSError, ValueError or RuntimeError by backend
        raise StoreError(f"cannot open store {uri!r}: {failure_cause(str(exc)) or _first_line(exc)}") from exc
    return FeatureStore(db, uri)


class FeatureStore:
    """Feature, pseudo-label and run tables of one LanceDB database.

    Tables are opened fresh on every call, so a reader sees what other
    processes committed.
    """

    def __init__(self, db, uri: str):
        self.db = db
        self.uri = uri

    # --- names -----------------------------------------------------------
    def table_names(self) -> list[str]:
        """Every table in the store, sorted."""
        names, token = [], None
        while True:
            page = self.db.list_tables(page_token=token)
            names += page.tables
            token = page.page_token
            if not token:
                return sorted(names)

    def feature_tables(self, alias: str | None = None) -> list[str]:
        """Feature table names, optionally of one encoder alias."""
        parsed = ((n, parse_table_name(n)) for n in self.table_names())
        return [n for n, p in parsed if p and (alias is None or p[0] == alias)]

    def transcript_tables(self) -> list[str]:
        """Tables of transcripts made by speech recognition (:mod:`mer.store.transcripts`)."""
        return [n for n in self.table_names() if n.startswith(TRANSCRIPTS_PREFIX)]

    def resolve(self, alias: str, version: str | None = None) -> str:
        """Name of the table an encoder reference means.

        Args:
            alias: an alias (newest version wins), ``alias@version8`` or a full table name;
                ``transcripts`` (the newest transcripts table) or a transcripts table's name.
            version: encoder version (full hash or its first 8 characters).

        Raises:
            StoreError: no such table; the message lists the encoders the store holds.
        """
        if version is None and "@" in alias:
            alias, version = alias.split("@", 1)
        if alias == "transcripts" or alias.startswith(TRANSCRIPTS_PREFIX):  # a recogniser's transcripts
            candidates = [n for n in self.transcript_tables() if alias in ("transcripts", n)]
        elif version is None and parse_table_name(alias):
            candidates = [alias] if alias in self.table_names() else []
        elif version is not None:
            name = table_name(alias, version)
            candidates = [name] if name in self.table_names() else []
        else:
            candidates = self.feature_tables(alias)
        if not candidates:
            want = alias if version is None else f"{alias}@{version[:8]}"
            raise StoreError(f"no features for encoder {want!r} in store {self.uri!r}; known: {self._known()}")
        return max(candidates, key=self._created)

    @contextmanager
    def readable(self, name: str):
        """Turn a failure to read table ``name`` (files deleted or damaged under a live store) into a StoreError."""
        try:
            yield
        except MerError:
            raise
        except Exception as exc:  # lance raises OSError, ValueError or RuntimeError by backend
            raise StoreError(f"store {self.uri!r}: table {name} cannot be read ({lance_message(exc)}): its files are "
                             "missing or damaged") from exc

    def _known(self) -> str:
        refs = ["@".join(parse_table_name(n)) for n in self.feature_tables()]
        return ", ".join(refs) if refs else "none (run the extract stage first)"

    def _created(self, name: str):
        return self.db.open_table(name).list_versions()[0]["timestamp"]

    def open_table(self, alias: str, version: str | None = None, as_of: int | None = None):
        """The lancedb table of an encoder reference, optionally checked out at a version."""
        tbl = self.db.open_table(self.resolve(alias, version))
        if as_of is not None:
            try:
                tbl.checkout(as_of)
            except Exception as exc:
                known = [v["version"] for v in tbl.list_versions()]
                raise StoreError(f"{tbl.name} has no version {as_of}; versions: {known}") from exc
        return tbl

    def describe_table(self, name: str) -> dict:
        """A feature table's shape: ``dim`` of ``vector``, ``has_seq``, current Lance ``version``, ``rows``."""
        with self.readable(name):
            tbl = self.open_table(name)
            return {"dim": int(tbl.schema.field("vector").type.list_size), "has_seq": "seq" in tbl.schema.names,
                    "version": int(tbl.version), "rows": tbl.count_rows()}

    def create_empty_like(self, name: str, source: FeatureStore, like: str | None = None) -> None:
        """An empty table ``name`` with the schema of ``source``'s table ``like`` (default ``name``): a modality with no rows."""
        self.db.create_table(name, schema=source.open_table(like or name).schema, exist_ok=True)

    def snapshot(self, name: str, as_of: int) -> TableSnapshot:
        """A feature table pinned at Lance version ``as_of``, read by row position (streaming training)."""
        return TableSnapshot(self.open_table(name, as_of=as_of).to_lance())

    # --- write -----------------------------------------------------------
    def upsert(
        self,
        alias: str,
        version: str,
        rows,
        skip_existing: bool = False,
        seq_dtype: str = "float32",
    ) -> int:
        """Insert new samples and replace changed ones, keyed on ``sample_id``.

        The batch is one Lance commit: it lands whole or not at all. Rows equal
        to what is stored are dropped first, so writing the same rows twice
        adds no rows and no table version. Later duplicates of a sample_id
        within the batch win.

        Args:
            alias: encoder alias.
            version: encoder version hash (the table keeps its first 8 characters).
            rows: dict of columns or ``pa.Table``: ``sample_id``, ``split`` (or
                one string), ``label`` (optional, None = unlabeled), ``vector``
                (N, D), optional ``seq`` (list of (L_i, D) arrays, or (N, L, D)
                with ``seq_lengths``).
            skip_existing: leave samples already stored untouched (resume).
            seq_dtype: ``seq`` storage type when this write creates the table.

        Returns:
            Rows inserted or replaced.

        Raises:
            DimensionError: vector or seq width differs from the table's.
        """
        name = table_name(alias, version)
        if name in self.table_names():
            tbl = self.db.open_table(name)
            schema = tbl.schema
        else:
            tbl, schema = None, self._new_schema(rows, seq_dtype)
        batch = _last_per_id(feature_table(rows, schema, alias, version))
        if len(batch) == 0:
            return 0
        if tbl is None:
            # Created empty, then merged into like any batch: two writers that both find no
            # table may both create it, and an empty creation is the only kind that cannot
            # lose the other's rows.
            tbl = self.db.create_table(name, schema=schema, exist_ok=True)
            batch = feature_table(batch, tbl.schema, alias, version)
        return self._merge(tbl, batch, skip_existing)

    def _new_schema(self, rows, seq_dtype: str) -> pa.Schema:
        vec = rows["vector"] if not isinstance(rows, pa.Table) else rows.column("vector")
        if isinstance(vec, (pa.Array, pa.ChunkedArray)):
            dim = vec.type.list_size
        else:
            shape = np.shape(vec)
            if len(shape) != 2:
                raise DimensionError(f"vector must be a 2-d (N, D) array, got shape {shape}")
            dim = shape[1]
        names = rows.column_names if isinstance(rows, pa.Table) else rows
        seq = rows["seq"] if "seq" in names else None
        seq_dim = _seq_width(seq) or dim
        return feature_schema(dim, seq_dtype=seq_dtype, seq_dim=seq_dim, text_source="text_source" in names)

    def _merge(self, tbl, batch: pa.Table, skip_existing: bool) -> int:
        ids = batch.column("sample_id")
        wanted = ["sample_id"] if skip_existing else ["sample_id", *COMPARED]
        stored = tbl.to_lance().to_table(columns=wanted, filter=pc.field("sample_id").isin(ids))
        old_pos = pd.Index(stored.column("sample_id").to_numpy(zero_copy_only=False)).get_indexer(
            ids.to_numpy(zero_copy_only=False)
        )
        keep = old_pos < 0 if skip_existing else changed_rows(batch, stored, old_pos)
        batch = batch.filter(pa.array(keep))
        if len(batch) == 0:
            return 0
        attempt = 0
        while True:
            try:
                merge = tbl.merge_insert("sample_id").when_not_matched_insert_all()
                if not skip_existing:
                    merge = merge.when_matched_update_all()
                merge.execute(batch)
                return len(batch)
            except Exception as exc:  # lance reports an exhausted conflict retry as a plain error
                attempt += 1
                if "onflict" not in str(exc) or attempt == COMMIT_ATTEMPTS:
                    raise
                time.sleep(0.05 * 2**attempt)
                tbl.checkout_latest()

    # --- read ------------------------------------------------------------
    def existing_ids(self, alias: str, version: str) -> set[str]:
        """sample_ids stored for an encoder version (empty when no table yet)."""
        return self.ids_in(table_name(alias, version))

    def read(
        self,
        alias: str,
        version: str | None = None,
        split: str | list[str] | None = None,
        with_seq: bool = False,
        as_of: int | None = None,
        max_len: int | None = None,
    ) -> Features:
        """Read one encoder's features into numpy by column projection.

        Args:
            alias: alias, ``alias@version8`` or table name (see ``resolve``).
            version: encoder version; newest when None.
            split: one split name, a list of them, or None for all rows.
            with_seq: also read ``seq`` padded to (N, L, D) with a mask.
            as_of: Lance table version to read (recorded by a past run).
            max_len: cut ``seq`` to at most this many steps.
        """
        tbl = self.open_table(alias, version, as_of)
        columns = ["sample_id", "split", "label", "vector"] + (["seq"] if with_seq else [])
        where = None
        if split is not None:
            where = pc.field("split").isin([split] if isinstance(split, str) else list(split))
        with self.readable(tbl.name):
            data = tbl.to_lance().to_table(columns=columns, filter=where)
        seq = mask = None
        if with_seq:
            seq, mask = seq_from_arrow(data.column("seq"), max_len)
        return Features(
            ids=data.column("sample_id").to_numpy(zero_copy_only=False),
            split=data.column("split").to_numpy(zero_copy_only=False),
            label=data.column("label").to_numpy(zero_copy_only=False),
            vector=vectors_from_arrow(data.column("vector")),
            seq=seq,
            seq_mask=mask,
            table=tbl.name,
            table_version=tbl.version,
        )

    def versions(self, alias: str, version: str | None = None) -> list[dict]:
        """Lance versions of a feature table: ``{version, timestamp, rows}``, oldest first."""
        tbl = self.open_table(alias, version)
        return [
            {"version": v["version"], "timestamp": v["timestamp"], "rows": int(v["metadata"].get("total_rows", -1))}
            for v in tbl.list_versions()
        ]

    def tables(self) -> list[TableInfo]:
        """Every table with its encoder, dimension, rows per split and label, and version count."""
        infos = []
        for name in self.table_names():
            with self.readable(name):
                infos.append(self._info(name))
        return infos

    def _info(self, name: str) -> TableInfo:
        """One table's summary (see :meth:`tables`)."""
        tbl = self.db.open_table(name)
        parsed = parse_table_name(name)
        versions = tbl.list_versions()
        splits = labels = {}
        dim = None
        if parsed:
            dim = vector_dim(tbl.schema)
            counts = tbl.to_lance().to_table(columns=["split", "label"]).to_pandas()
            splits = counts["split"].value_counts().to_dict()
            labels = counts["label"].fillna("<none>").value_counts().to_dict()
        return TableInfo(
            name=name,
            alias=parsed[0] if parsed else None,
            version=parsed[1] if parsed else None,
            dim=dim,
            rows=tbl.count_rows(),
            versions=len(versions),
            created=versions[0]["timestamp"],
            splits=splits,
            labels=labels,
            indexed=any(i.columns == ["vector"] for i in tbl.list_indices()),
        )

    # --- transcripts ------------------------------------------------------
    def write_transcripts(self, engine: str, version: str, rows: pd.DataFrame) -> int:
        """Upsert transcripts of one recogniser version (see :mod:`mer.store.transcripts`)."""
        return write_transcripts(self.db, engine, version, rows)

    def read_transcripts(self, engine: str, version: str) -> pd.DataFrame:
        """Transcripts of one recogniser version; empty when none were made."""
        return read_transcripts(self.db, engine, version)

    def ids_in(self, name: str) -> set[str]:
        """sample_ids of any table of the store (empty when it does not exist)."""
        if name not in self.table_names():
            return set()
        with self.readable(name):
            return set(self.db.open_table(name).to_lance().to_table(columns=["sample_id"]).column("sample_id").to_pylist())

    # --- pseudo labels and runs -------------------------------------------
    def write_pseudo_labels(self, df: pd.DataFrame) -> int:
        """Upsert pseudo-labels keyed on (run_id, round, sample_id); see ``mer.store.records``."""
        from mer.store.records import write_pseudo_labels

        return write_pseudo_labels(self.db, df)

    def read_pseudo_labels(self, run_id: str, round: int | None = None) -> pd.DataFrame:
        """Pseudo-labels of a run (all rounds, or one)."""
        from mer.store.records import read_pseudo_labels

        return read_pseudo_labels(self.db, run_id, round)

    def log_run(self, run_id: str, config_yaml: str, metrics: dict, **kwargs) -> None:
        """Record a run (config, git commit, metrics, table versions read); see ``mer.store.records``."""
        from mer.store.records import log_run

        log_run(self.db, run_id, config_yaml, metrics, **kwargs)

    def read_runs(self) -> pd.DataFrame:
        """Every logged run, newest first."""
        from mer.store.records import read_runs

        return read_runs(self.db)


def _last_per_id(batch: pa.Table) -> pa.Table:
    """Keep the last row of each sample_id (merge_insert rejects duplicate keys)."""
    ids = batch.column("sample_id").to_numpy(zero_copy_only=False)
    _, first_from_end = np.unique(ids[::-1], return_index=True)
    if len(first_from_end) == len(ids):
        return batch
    return batch.take(pa.array(np.sort(len(ids) - 1 - first_from_end)))


def _seq_width(seq) -> int | None:
    if seq is None:
        return None
    if isinstance(seq, (pa.Array, pa.ChunkedArray)):
        return seq.type.value_type.list_size
    if isinstance(seq, np.ndarray) and seq.ndim == 3:
        return seq.shape[2]
    widths = {np.shape(s)[-1] for s in seq if s is not None}
    if len(widths) > 1:
        raise DimensionError(f"seq entries have different widths {sorted(widths)}")
    return widths.pop() if widths else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
