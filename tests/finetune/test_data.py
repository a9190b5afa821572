"""The labeled examples a fine-tune trains on: train rows, plus a self-training run's pseudo-labels.
"""

from __future__ import annotations

import pandas as pd
import pytest
from finetune_helpers import text_job

from mer.errors import MerError
from mer.finetune.stage import finetune_settings


def test_labeled_examples_from_manifest(tmp_path, text_manifest, tiny_llama):
    from mer.finetune.data import labeled_examples

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3})
    rows = labeled_examples(finetune_settings(job))
    assert len(rows) == 24 and set(rows["source"]) == {"train"}
    assert rows["label"].tolist()[:6] == [0, 1, 2, 3, 4, 5]
    job.finetune.role = "audio"
    with pytest.raises(MerError, match="finetune.role"):
        labeled_examples(finetune_settings(job))


def test_labeled_examples_add_last_round_pseudo_labels(tmp_path, text_manifest, tiny_llama):
    from mer.finetune.data import labeled_examples
    from mer.store import open_store

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3}, pseudo_labels="st1")
    open_store(job.store).write_pseudo_labels(pd.DataFrame({
        "sample_id": ["unlabeled_00", "unlabeled_01", "unlabeled_00"], "run_id": "st1", "round": [0, 0, 1],
        "label": ["sad", "happy", "angry"], "confidence": [0.95, 0.97, 0.99],
    }))
    rows = labeled_examples(finetune_settings(job))
    pseudo = rows[rows["source"] == "pseudo"].set_index("sample_id")["label"].to_dict()
    assert len(rows) == 26 and pseudo == {"unlabeled_00": 1, "unlabeled_01": 2}  # round 1 wins for _00
    job.finetune.pseudo_labels = "nope"
    with pytest.raises(MerError, match="no pseudo-labels"):
        labeled_examples(finetune_settings(job))


