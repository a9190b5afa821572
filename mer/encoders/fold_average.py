"""The encoder of a cross-fitted export made with ``finetune.crossfit_other: average``.

Such a folder (:mod:`mer.finetune.crossfit`) holds one fine-tuned model per fold
and no model trained on every labeled row: a row outside the folds (unlabeled,
test, a clip sent to ``mer serve`` later) gets the mean of the fold models'
vectors and sequences, so the fine-tuning costs K runs instead of K + 1. The
fold models are loaded side by side: K times one model's memory.
:func:`mer.encoders.build_encoder` returns a :class:`FoldAverage` for such a
folder, so extraction and serving need nothing else; its version is the
folder's, like any fine-tune's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RECORD_FILE = "crossfit.json"  # the cross-fitted export's per-row record


def averaged_folds(model: str | None) -> list[str] | None:
    """The fold model folders of ``model`` when it is a cross-fitted export that averages them, else None."""
    record = Path(model) / RECORD_FILE if model else None
    if record is None or not record.is_file():
        return None
    data = json.loads(record.read_text())
    if data.get("other") != "average":
        return None
    return [str(Path(model) / fold["path"]) for fold in data["folds"]]


class FoldAverage:
    """One encoder per fold model; ``encode`` averages their outputs, the rest is the first fold's.

    The fold models share the base model's preprocessing (tokenizer, image
    processor, corruption), so decoding is done once, by the first.
    """

    def __init__(self, members: list, version: str):
        self.members = members
        self.version = version

    def __getattr__(self, name: str) -> Any:  # alias, role, spec, dim, prepare, decode: shared
        return getattr(self.members[0], name)

    def ensure_loaded(self) -> None:
        for member in self.members:
            member.ensure_loaded()

    def encode(self, batch: list[Any]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        outputs = [member.encode(batch) for member in self.members]
        averaged = []
        for rows in zip(*outputs):
            vector = np.mean([vector for vector, _ in rows], axis=0, dtype=np.float32)
            seqs = [seq for _, seq in rows]
            seq = None if seqs[0] is None else np.mean(seqs, axis=0, dtype=np.float32).astype(seqs[0].dtype)
            averaged.append((vector, seq))
        return averaged
