"""numpy <-> Arrow conversion for feature columns, with no per-row Python.

A ``vector`` column is a FixedSizeList whose flat values reshape to (N, D); a
``seq`` column is a List of FixedSizeList, i.e. one flat (sum L_i, D) block
plus offsets, which scatters into a padded (N, L, D) array and an (N, L) mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from mer.store.errors import DimensionError


def vectors_to_arrow(vectors: np.ndarray | Sequence[np.ndarray], value_type=pa.float32()) -> pa.FixedSizeListArray:
    """(N, D) array (or N arrays of D) -> fixed_size_list<value_type>[D]."""
    mat = np.ascontiguousarray(np.stack(vectors) if not isinstance(vectors, np.ndarray) else vectors)
    if mat.ndim != 2:
        raise DimensionError(f"vector must be a 2-d (N, D) array, got shape {mat.shape}")
    flat = pa.array(mat.reshape(-1).astype(value_type.to_pandas_dtype(), copy=False))
    return pa.FixedSizeListArray.from_arrays(flat, mat.shape[1])


def seq_to_arrow(seq, lengths=None, value_type=pa.float32()) -> pa.ListArray:
    """Ragged sequences -> list<fixed_size_list<value_type>[D]>.

    Args:
        seq: a list of (L_i, D) arrays (None for a sample without a sequence),
            or a padded (N, L, D) array together with ``lengths``.
        lengths: (N,) valid steps per row of a padded array; all L when omitted.
        value_type: Arrow float type of the stored values.
    """
    np_type = value_type.to_pandas_dtype()
    if isinstance(seq, np.ndarray):
        if seq.ndim != 3:
            raise DimensionError(f"padded seq must be (N, L, D), got shape {seq.shape}")
        n, max_len, dim = seq.shape
        lens = np.full(n, max_len, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        keep = np.arange(max_len)[None, :] < lens[:, None]
        values = seq[keep]  # row-major boolean take keeps each row's steps in order
        null = None
    else:
        parts = list(seq)
        null = np.array([p is None for p in parts])
        present = [np.asarray(p) for p in parts if p is not None]
        dims = {p.shape[-1] for p in present if p.ndim == 2}
        if any(p.ndim != 2 for p in present) or len(dims) > 1:
            raise DimensionError(f"seq entries must be (L_i, D) arrays of one width, got widths {sorted(dims)}")
        dim = dims.pop() if dims else 1
        lens = np.array([0 if p is None else len(p) for p in parts], np.int64)
        values = np.concatenate(present) if present else np.zeros((0, dim), np_type)
    offsets = np.zeros(len(lens) + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    steps = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np_type, copy=False)), dim)
    mask = pa.array(null) if null is not None and null.any() else None
    return pa.ListArray.from_arrays(pa.array(offsets), steps, mask=mask)


def vectors_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """fixed_size_list<float>[D] -> (N, D) numpy array (one copy at most)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim)


def seq_from_arrow(column: pa.ChunkedArray | pa.Array, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """list<fixed_size_list<float>[D]> -> padded (N, L, D) values and (N, L) bool mask.

    Null lists read as length 0. ``max_len`` truncates (keeps the first steps);
    L is the longest row otherwise.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    dim = arr.type.value_type.list_size
    offsets = arr.offsets.to_numpy().astype(np.int64)
    lens = np.diff(offsets)
    if arr.null_count:
        lens[arr.is_null().to_numpy(zero_copy_only=False)] = 0
    flat = arr.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    width = int(lens.max(initial=0)) if max_len is None else max_len
    lens = np.minimum(lens, width)
    rows = np.repeat(np.arange(n), lens)
    pos = np.arange(rows.size) - np.repeat(np.cumsum(lens) - lens, lens)
    out = np.zeros((n, width, dim), flat.dtype)
    out[rows, pos] = flat[np.repeat(offsets[:-1], lens) + pos]
    mask = np.arange(width)[None, :] < lens[:, None]
    return out, mask


def feature_table(rows, schema: pa.Schema, alias: str, version: str) -> pa.Table:
    """Rows given as a dict of columns or an Arrow table -> a table of ``schema``.

    ``encoder``, ``encoder_version`` and ``extracted_at`` are filled when absent;
    ``split`` may be one string for every row; ``label`` may be absent (all null).

    Raises:
        DimensionError: vector or seq width differs from the schema's.
    """
    from mer.store.schema import vector_dim

    if isinstance(rows, pa.Table):
        cols = {name: rows.column(name) for name in rows.column_names}
    elif isinstance(rows, Mapping):
        cols = dict(rows)
    else:
        raise TypeError(f"rows must be a dict of columns or a pyarrow.Table, got {type(rows).__name__}")
    for key in ("sample_id", "vector"):
        if key not in cols:
            raise ValueError(f"rows lack the required column {key!r}")
    dim = vector_dim(schema)
    vec = cols["vector"]
    if not isinstance(vec, (pa.Array, pa.ChunkedArray)):
        vec = vectors_to_arrow(vec)
    got = vec.type.list_size if pa.types.is_fixed_size_list(vec.type) else None
    if got != dim:
        raise DimensionError(f"vector width {got} does not match the table's {dim} (encoder {alias}@{version[:8]})")
    n = len(vec)
    seq_type = schema.field("seq").type
    seq = cols.get("seq")
    if seq is not None and not isinstance(seq, (pa.Array, pa.ChunkedArray)):
        seq = seq_to_arrow(seq, cols.get("seq_lengths"), seq_type.value_type.value_type)
    if seq is not None and seq.type.value_type.list_size != seq_type.value_type.list_size:
        raise DimensionError(
            f"seq width {seq.type.value_type.list_size} does not match the table's "
            f"{seq_type.value_type.list_size} (encoder {alias}@{version[:8]})"
        )
    split = cols.get("split")
    if split is None or isinstance(split, str):
        split = [split or "unlabeled"] * n
    now = datetime.now(timezone.utc)
    data = {
        "sample_id": cols["sample_id"],
        "split": split,
        "label": cols.get("label", pa.nulls(n, pa.string())),
        "encoder": cols.get("encoder", [alias] * n),
        "encoder_version": cols.get("encoder_version", [version] * n),
        "vector": vec,
        "seq": seq if seq is not None else pa.nulls(n, seq_type),
        "extracted_at": cols.get("extracted_at", pa.array([now] * n, pa.timestamp("us", tz="UTC"))),
        "text_source": cols.get("text_source", pa.nulls(n, pa.string())),
    }
    arrays = [_as_arrow(data[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _as_arrow(values, typ: pa.DataType):
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(typ) if values.type != typ else values
    # from_pandas: a NaN label (pandas' "missing") becomes null.
    return pa.array(values, type=typ, from_pandas=True)
