"""The Arrow-backed name index an import and validation keep instead of Python dicts."""

from __future__ import annotations

import pyarrow as pa

from mer.corpus.names import NameIndex


def test_first_name_wins_and_absent_names_are_null():
    index = NameIndex(pa.int64())
    index.add(["a", "b", "a"], [1, 2, 3])  # a repeated name counts once: the first
    index.add(["b", "c"], [4, 5])  # b is already there
    assert len(index) == 3
    assert index.get(["c", "a", "zz", None]).to_pylist() == [5, 1, None, None]
    assert index.contains(["b", "zz"]).to_pylist() == [True, False]


def test_a_plain_set_of_names():
    seen = NameIndex()
    seen.add(["x", "y"])
    assert seen.values is None and seen.contains(["y", "q"]).to_pylist() == [True, False]
