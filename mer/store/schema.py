"""Typed Arrow schemas and table names of the feature store.

One table per encoder version, ``features__<alias>__<version8>``, so a
fine-tuned encoder writes next to the old one instead of over it and a
training run can name exactly which features it read.
"""

from __future__ import annotations

import pyarrow as pa

FEATURE_PREFIX = "features__"
PSEUDO_LABELS_TABLE = "pseudo_labels"
RUNS_TABLE = "runs"
VERSION_CHARS = 8

_SEQ_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


def table_name(alias: str, version: str) -> str:
    """Name of the feature table of one encoder version.

    Args:
        alias: encoder registry alias (``hf_audio``, ``logmel``...).
        version: encoder version hash; only its first 8 characters are used.

    Returns:
        ``features__<alias>__<version[:8]>``.
    """
    if not alias or "__" in alias:
        raise ValueError(f"encoder alias {alias!r} must be non-empty and contain no '__'")
    return f"{FEATURE_PREFIX}{alias}__{version[:VERSION_CHARS]}"


def parse_table_name(name: str) -> tuple[str, str] | None:
    """Split a feature table name into (alias, version8); None for other tables."""
    if not name.startswith(FEATURE_PREFIX):
        return None
    alias, sep, version = name[len(FEATURE_PREFIX):].rpartition("__")
    return (alias, version) if sep and alias else None


def sql_string(value: str) -> str:
    """A string literal for a Lance SQL filter (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def feature_schema(dim: int, seq_dtype: str = "float32", seq_dim: int | None = None, text_source: bool = False) -> pa.Schema:
    """Schema of a feature table.

    Args:
        dim: width D of the pooled ``vector``.
        seq_dtype: storage type of ``seq`` values (``float32`` or ``float16``);
            float16 halves the size of the largest column.
        seq_dim: width of one ``seq`` step (default ``dim``).
        text_source: add ``text_source``, which transcript fed each row of a text
            encoder whose ``source`` is ``asr`` or ``auto`` (``manifest`` or
            ``asr:<engine>:<version8>``).

    Returns:
        sample_id, split, label (nullable), encoder, encoder_version,
        vector fixed_size_list<float32>[D], seq list<fixed_size_list<seq_dtype>[D]>
        (nullable: an encoder without a time axis leaves it null), extracted_at
        [, text_source].
    """
    if seq_dtype not in _SEQ_TYPES:
        raise ValueError(f"seq_dtype {seq_dtype!r}: use one of {sorted(_SEQ_TYPES)}")
    step = pa.list_(_SEQ_TYPES[seq_dtype], seq_dim or dim)
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("encoder", pa.string(), nullable=False),
            pa.field("encoder_version", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("seq", pa.list_(step)),
            pa.field("extracted_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
        + ([pa.field("text_source", pa.string())] if text_source else [])
    )


def vector_dim(schema: pa.Schema, column: str = "vector") -> int:
    """Width of a fixed_size_list column (``vector``) or of one ``seq`` step."""
    typ = schema.field(column).type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        typ = typ.value_type
    return typ.list_size


PSEUDO_LABELS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("confidence", pa.float32()),
        # JSON text so any voting scheme (model -> label, or counts) fits one column.
        pa.field("votes", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("config_yaml", pa.string()),
        pa.field("git_commit", pa.string()),
        pa.field("metrics_json", pa.string()),
        # {table name: Lance version} the run read, so its data can be re-read as of then.
        pa.field("data_versions_json", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
