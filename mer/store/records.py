"""The ``pseudo_labels`` and ``runs`` tables, created on first write.

Both are small, so rows go through pandas; both are upserted on their key so a
retried self-training round or a re-logged run replaces instead of duplicating.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

from mer.store.schema import PSEUDO_LABELS_SCHEMA, PSEUDO_LABELS_TABLE, RUNS_SCHEMA, RUNS_TABLE, sql_string

PSEUDO_KEY = ["run_id", "round", "sample_id"]


def write_pseudo_labels(db, df: pd.DataFrame) -> int:
    """Upsert pseudo-labels.

    Args:
        db: lancedb connection.
        df: columns sample_id, run_id, round, label, and optionally confidence
            and votes (JSON text, or dicts/lists that are dumped to JSON).

    Returns:
        Rows written.
    """
    df = df.copy()
    if "votes" in df and not pd.api.types.is_string_dtype(df["votes"]):
        df["votes"] = [v if v is None or isinstance(v, str) else json.dumps(v) for v in df["votes"]]
    df["created_at"] = datetime.now(timezone.utc)
    for name in ("confidence", "votes"):
        if name not in df:
            df[name] = None
    table = pa.Table.from_pandas(df[PSEUDO_LABELS_SCHEMA.names], schema=PSEUDO_LABELS_SCHEMA, preserve_index=False)
    _upsert(db, PSEUDO_LABELS_TABLE, PSEUDO_LABELS_SCHEMA, table, PSEUDO_KEY)
    return len(table)


def read_pseudo_labels(db, run_id: str, round: int | None = None) -> pd.DataFrame:
    """Pseudo-labels of a run, all rounds or one; empty frame when none."""
    if PSEUDO_LABELS_TABLE not in db.list_tables().tables:
        return PSEUDO_LABELS_SCHEMA.empty_table().to_pandas()
    where = f"run_id = {sql_string(run_id)}" + ("" if round is None else f" AND round = {int(round)}")
    return db.open_table(PSEUDO_LABELS_TABLE).to_lance().to_table(filter=where).to_pandas()


def log_run(
    db,
    run_id: str,
    config_yaml: str,
    metrics: dict,
    git_commit: str | None = None,
    data_versions: dict | None = None,
) -> None:
    """Record one run: its resolved config, git commit, metrics and the table versions it read.

    Args:
        db: lancedb connection.
        run_id: run name; logging it again replaces the row.
        config_yaml: resolved job YAML text.
        metrics: JSON-serialisable metrics.
        git_commit: defaults to ``git rev-parse HEAD`` of the working directory (None outside git).
        data_versions: {table name: Lance version} read, for ``FeatureStore.read(as_of=...)``.
    """
    row = {
        "run_id": [run_id],
        "config_yaml": [config_yaml],
        "git_commit": [git_commit or _git_commit()],
        "metrics_json": [json.dumps(metrics, default=str)],
        "data_versions_json": [json.dumps(data_versions or {})],
        "created_at": [datetime.now(timezone.utc)],
    }
    _upsert(db, RUNS_TABLE, RUNS_SCHEMA, pa.table(row, schema=RUNS_SCHEMA), ["run_id"])


def read_runs(db) -> pd.DataFrame:
    """Every logged run, newest first; empty frame when none."""
    if RUNS_TABLE not in db.list_tables().tables:
        return RUNS_SCHEMA.empty_table().to_pandas()
    df = db.open_table(RUNS_TABLE).to_lance().to_table().to_pandas()
    return df.sort_values("created_at", ascending=False, ignore_index=True)


def _upsert(db, name: str, schema: pa.Schema, table: pa.Table, key: list[str]) -> None:
    tbl = db.create_table(name, schema=schema, exist_ok=True)
    tbl.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(table)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
