"""A copy of a local store with every stored feature scaled by ``1 + rel * N(0, 1)``.

What another processor's summation order does to features is a relative change
of about 1e-7 to 1e-6 per value. A job run on such copies shows how far its
result moves under it (``benchmarks/stability.py``): a result that moves by
points is decided by float noise, not by the data.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa

from mer.store.errors import StoreError
from mer.store.features import open_store


def _scaled(column: pa.ChunkedArray, rel: float, rng: np.random.Generator) -> pa.Array:
    """``vector`` (fixed-size list) or ``seq`` (list of fixed-size lists) with every value scaled."""
    arr = column.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        values = arr.flatten().to_numpy(zero_copy_only=False)
        noisy = (values * (1 + rel * rng.standard_normal(values.shape))).astype(values.dtype)
        return pa.FixedSizeListArray.from_arrays(pa.array(noisy, arr.type.value_type), arr.type.list_size)
    steps = _scaled(pa.chunked_array([arr.flatten()]), rel, rng)  # a null seq has no steps
    offsets = arr.offsets.to_numpy() - arr.offsets[0].as_py()
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), steps, type=arr.type, mask=arr.is_null())


def perturb_store(src: str | os.PathLike, dst: str | os.PathLike, rel: float = 1e-6, seed: int = 0) -> list[str]:
    """Copy the store ``src`` to ``dst`` and scale every feature table's ``vector`` and ``seq`` in the copy.

    Each table keeps its name (its encoder version), so a job that names the
    copy as its store reads the perturbed features; the rewrite is a new Lance
    version, so no cached fit of the original is reused.

    Returns:
        The feature tables rewritten.

    Raises:
        StoreError: ``src`` is not a local store folder or ``dst`` exists.
    """
    if not os.path.isdir(src):
        raise StoreError(f"store {str(src)!r}: not a local folder (copy an object-store store locally first)")
    if os.path.exists(dst):
        raise StoreError(f"{dst}: exists; give a new folder for the perturbed copy")
    shutil.copytree(src, dst)
    store, rng = open_store(dst), np.random.default_rng(seed)
    names = store.feature_tables()
    for name in names:
        data = store.db.open_table(name).to_arrow()
        for column in ("vector", "seq"):
            if column in data.column_names:
                i = data.column_names.index(column)
                data = data.set_column(i, data.schema.field(i), _scaled(data[column], rel, rng))
        store.db.create_table(name, data, mode="overwrite")
    return names
