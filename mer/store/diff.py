"""Which incoming rows differ from the stored ones (vectorised).

An upsert that finds every row unchanged commits nothing, so rerunning an
extraction leaves the table's Lance version where it was.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mer.store.arrays import vectors_from_arrow

COMPARED = ("split", "label", "encoder_version", "vector", "seq")


def changed_rows(new: pa.Table, old: pa.Table, old_pos: np.ndarray) -> np.ndarray:
    """Mask of ``new`` rows that are absent from ``old`` or differ from it.

    Args:
        new: incoming rows.
        old: stored rows with at least the ``COMPARED`` columns.
        old_pos: for each new row, its row in ``old`` or -1 when not stored.
    """
    matched = np.flatnonzero(old_pos >= 0)
    same = np.ones(len(matched), bool)
    a_idx, b_idx = pa.array(matched), pa.array(old_pos[matched])
    for name in COMPARED:
        a = new.column(name).take(a_idx).combine_chunks()
        b = old.column(name).take(b_idx).combine_chunks()
        same &= _equal(a, b)
    changed = np.ones(len(new), bool)
    changed[matched] = ~same
    return changed


def _equal(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Row-wise equality of two aligned arrays; two nulls are equal."""
    both_null = pc.and_(a.is_null(), b.is_null()).to_numpy(zero_copy_only=False)
    one_null = pc.xor(a.is_null(), b.is_null()).to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(a.type):
        eq = np.all(vectors_from_arrow(a) == vectors_from_arrow(b.cast(a.type)), axis=1)
    elif pa.types.is_list(a.type):
        eq = _lists_equal(a, b.cast(a.type))
    else:
        eq = pc.equal(a, b).fill_null(False).to_numpy(zero_copy_only=False)
    return (eq | both_null) & ~one_null


def _lists_equal(a: pa.ListArray, b: pa.ListArray) -> np.ndarray:
    """Equal lengths and equal steps, per row, without a Python loop over rows."""
    eq = pc.equal(pc.list_value_length(a), pc.list_value_length(b)).fill_null(False).to_numpy(zero_copy_only=False)
    rows = pa.array(np.flatnonzero(eq))
    a_rows, b_rows = a.take(rows), b.take(rows)
    lens = pc.list_value_length(a_rows).fill_null(0).to_numpy(zero_copy_only=False)
    # flatten() yields the taken rows' steps back to back, so equal lengths align them.
    a_steps, b_steps = vectors_from_arrow(a_rows.flatten()), vectors_from_arrow(b_rows.flatten())
    bad_step = ~np.all(a_steps == b_steps, axis=1)
    bad_rows = np.bincount(np.repeat(np.arange(len(lens)), lens), weights=bad_step, minlength=len(lens)) > 0
    eq[np.flatnonzero(eq)[bad_rows]] = False
    return eq
