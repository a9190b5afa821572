"""A set of clip names with one value each, held as Arrow arrays.

A release lists 132,171 clips; a Python dict or set of their names costs
~150 bytes per name and is what an import's memory would grow with. Here a
name costs its characters plus a few bytes, and a lookup of a chunk of names
is one vectorised ``index_in``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class NameIndex:
    """Names (first one wins) and, optionally, a value for each.

    Args:
        value_type: Arrow type of the values, or None for a plain set of names.
    """

    def __init__(self, value_type: pa.DataType | None = None) -> None:
        self.names = pa.array([], pa.string())
        self.values = None if value_type is None else pa.array([], value_type)

    def __len__(self) -> int:
        return len(self.names)

    def find(self, names: Sequence[str | None] | pa.Array) -> pa.Array:
        """Position of each name in the index (null where absent)."""
        return pc.index_in(pa.array(names, pa.string()), value_set=self.names)

    def contains(self, names: Sequence[str | None] | pa.Array) -> pa.Array:
        """Per name: is it in the index?"""
        return pc.is_in(pa.array(names, pa.string()), value_set=self.names)

    def get(self, names: Sequence[str | None] | pa.Array) -> pa.Array:
        """The value of each name (null where absent)."""
        return self.values.take(self.find(names))

    def add(self, names: Sequence[str] | pa.Array, values: Sequence | pa.Array | None = None) -> None:
        """Add the names not yet present (a name repeated in ``names`` counts once: the first)."""
        names = pa.array(names, pa.string())
        fresh = pc.and_(pc.invert(pc.is_in(names, value_set=self.names)),
                        pa.array(~pd.Series(names.to_numpy(zero_copy_only=False)).duplicated().to_numpy()))
        self.names = pa.concat_arrays([self.names, names.filter(fresh)])
        if self.values is not None:
            values = pa.array(values, self.values.type)
            self.values = pa.concat_arrays([self.values, values.filter(fresh)])
