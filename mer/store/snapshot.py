"""One feature table pinned at a Lance version, read by row position (the streaming training path).

Training reads a fixed snapshot (the table version its plan pinned) batch by
batch with Lance random access; this wrapper keeps the Lance dataset inside
``mer.store`` and hands out numpy arrays and pandas frames only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mer.store.arrays import seq_from_arrow, vectors_from_arrow


class TableSnapshot:
    """Row-position reads of a pinned feature table (see :meth:`mer.store.FeatureStore.snapshot`)."""

    def __init__(self, dataset):
        self._dataset = dataset

    def meta(self) -> pd.DataFrame:
        """``sample_id, split, label`` of every row, in row-position order."""
        return self._dataset.to_table(columns=["sample_id", "split", "label"]).to_pandas()

    def take(self, rows: np.ndarray, seq_len: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """``vector`` (N, D) float32 of the rows at these positions, and their ``(seq, mask)`` when ``seq_len``."""
        batch = self._dataset.take(rows, columns=["vector", "seq"] if seq_len else ["vector"])
        vector = vectors_from_arrow(batch.column("vector")).astype(np.float32, copy=False)
        return vector, (seq_from_arrow(batch.column("seq"), seq_len) if seq_len else None)
