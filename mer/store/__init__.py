"""LanceDB feature store: typed per-encoder-version tables, idempotent upserts, numpy reads.

No Ray here: extraction and training call these functions from inside their
Ray tasks, and any lancedb/pyarrow/duckdb client can read the same tables.
"""

from mer.store.errors import DimensionError, StoreError
from mer.store.features import Features, FeatureStore, TableInfo, open_store
from mer.store.options import set_store_options, store_options
from mer.store.schema import PSEUDO_LABELS_TABLE, RUNS_TABLE, feature_schema, table_name

__all__ = [
    "DimensionError",
    "Features",
    "FeatureStore",
    "PSEUDO_LABELS_TABLE",
    "RUNS_TABLE",
    "StoreError",
    "TableInfo",
    "feature_schema",
    "open_store",
    "set_store_options",
    "store_options",
    "table_name",
]
