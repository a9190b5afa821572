"""What ``mer query`` does: list tables, show a sample, find neighbours, build the index, export.

Each function returns data or text; ``mer/cli.py`` only prints it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mer.store.ann import build_index, nearest
from mer.store.errors import StoreError, lance_message
from mer.store.features import FeatureStore
from mer.store.schema import parse_table_name, sql_string
from mer.store.transcripts import TRANSCRIPTS_PREFIX


def tables_text(store: FeatureStore) -> str:
    """One block per table: encoder, version, dim, rows per split and label, Lance versions, index."""
    infos = store.tables()
    if not infos:
        return f"store {store.uri!r} has no tables yet (the extract stage writes them)"
    lines = []
    for t in infos:
        head = f"{t.name}  rows={t.rows}  versions={t.versions}"
        if t.alias:
            head += f"  encoder={t.alias}@{t.version}  dim={t.dim}  index={'yes' if t.indexed else 'no'}"
        lines.append(head)
        if t.splits:
            lines.append("  splits: " + ", ".join(f"{k}={v}" for k, v in sorted(t.splits.items())))
            lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(t.labels.items())))
    return "\n".join(lines)


def get_sample(store: FeatureStore, sample_id: str, encoder: str | None = None, head: int = 5) -> list[dict]:
    """Metadata and vector summary of one sample in every feature table (or one encoder's), and its transcripts.

    Raises:
        StoreError: the sample is in none of the tables searched.
    """
    names = [store.resolve(encoder)] if encoder else store.feature_tables()
    found = []
    for name in names:
        if name.startswith(TRANSCRIPTS_PREFIX):
            found += _transcripts_of(store, sample_id, [name])
            continue
        ds = store.db.open_table(name).to_lance()
        cols = [c for c in ds.schema.names if c != "seq"] + ["seq"]
        rows = ds.to_table(columns=cols, filter=f"sample_id = {sql_string(sample_id)}")
        if len(rows) == 0:
            continue
        row = rows.slice(0, 1)
        vec = row.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        seq = row.column("seq")[0].as_py()
        found.append(
            {
                "table": name,
                "split": row.column("split")[0].as_py(),
                "label": row.column("label")[0].as_py(),
                "encoder_version": row.column("encoder_version")[0].as_py(),
                "extracted_at": row.column("extracted_at")[0].as_py(),
                "vector_shape": vec.shape,
                "vector_head": [round(float(v), 4) for v in vec[:head]],
                "vector_norm": float(np.linalg.norm(vec)),
                "seq_shape": None if seq is None else (len(seq), len(seq[0]) if seq else 0),
                **({"text_source": row.column("text_source")[0].as_py()} if "text_source" in cols else {}),
            }
        )
    if not encoder:
        found += _transcripts_of(store, sample_id)
    if not found:
        where = f"encoder {encoder!r}" if encoder else f"any of {len(names)} feature tables"
        raise StoreError(f"sample {sample_id!r} not found in {where} of store {store.uri!r}")
    return found


def _transcripts_of(store: FeatureStore, sample_id: str, names: list[str] | None = None) -> list[dict]:
    """The sample's transcript in each transcripts table (text, language, the recogniser's confidence)."""
    found = []
    for name in store.transcript_tables() if names is None else names:
        rows = store.db.open_table(name).to_lance().to_table(filter=f"sample_id = {sql_string(sample_id)}")
        if len(rows):
            row = rows.slice(0, 1).to_pylist()[0]
            found.append({"table": name, **{k: row[k] for k in ("split", "text", "language", "avg_logprob",
                                                               "no_speech_prob", "asr_version", "transcribed_at")}})
    return found


def like(
    store: FeatureStore, sample_id: str, encoder: str, k: int = 10, where: str | None = None
) -> tuple[pd.DataFrame, str]:
    """The k nearest samples to one sample (itself excluded) and how they were searched.

    Returns:
        (frame with rank, sample_id, split, label, distance; "ann" or "exact").
    """
    tbl = store.open_table(encoder)
    rows = tbl.to_lance().to_table(columns=["vector"], filter=f"sample_id = {sql_string(sample_id)}")
    if len(rows) == 0:
        raise StoreError(f"sample {sample_id!r} is not in {tbl.name}")
    query = rows.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    own = f"sample_id != {sql_string(sample_id)}"
    try:
        result, mode = nearest(tbl, query, k, f"({where}) AND {own}" if where else own)
    except Exception as exc:  # lance's SQL parser and planner name the problem; keep that, not its Rust paths
        if not where:
            raise
        columns = ", ".join(c for c in tbl.schema.names if c not in ("vector", "seq"))
        raise StoreError(f'--where "{where}": not a filter on {tbl.name} ({lance_message(exc)}) '
                         f"(columns: {columns})") from None
    result.insert(0, "rank", np.arange(1, len(result) + 1))
    return result, mode


def index(store: FeatureStore, encoder: str, force: bool = False) -> dict:
    """Build the ANN index of one encoder's table; see ``mer.store.ann.build_index``."""
    return build_index(store.open_table(encoder), force=force)


def export(store: FeatureStore, encoder: str, out: str | Path, with_seq: bool = False, split: str | None = None) -> int:
    """Write one encoder's table to Parquet, streaming batches; returns rows written.

    ``vector`` stays a fixed-size list (duckdb reads it as FLOAT[D], pandas as arrays).
    """
    tbl = store.open_table(encoder)
    ds = tbl.to_lance()
    columns = [c for c in ds.schema.names if with_seq or c != "seq"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    schema = pa.schema([ds.schema.field(c) for c in columns])
    with pq.ParquetWriter(out, schema) as writer:
        for batch in ds.to_batches(columns=columns, filter=None if split is None else f"split = {sql_string(split)}"):
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def encoder_ref(table: str) -> str:
    """``alias@version8`` of a feature table name (for hints)."""
    parsed = parse_table_name(table)
    return "@".join(parsed) if parsed else table
