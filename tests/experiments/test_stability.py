"""The stability benchmark measures its spread: perturbed copies differ by ~1e-6 and each copy is really run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mer.config import job_from_dict
from mer.store import open_store
from mer.store.perturb import perturb_store
from mer.store.schema import parse_table_name
from synthetic import write_synthetic_features

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("stability", ROOT / "benchmarks" / "stability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("stability")
    job = job_from_dict({
        "name": "s", "manifest": str(root / "none.csv"), "store": str(root / "store"), "run_dir": str(root / "run"),
        "encoders": {"audio": {"alias": "logmel", "seq_len": 4}, "video": {"alias": "frames", "seq_len": 4},
                     "text": {"alias": "minilm", "seq_len": 0}},
        "train": {"model": "agt", "epochs": 3, "seeds": [0], "hidden": 16, "heads": 2, "select": "cv"},
    })
    write_synthetic_features(job, {"train": 120, "test": 60, "unlabeled": 20}, seed=0, noise=3.0)
    return job


def test_a_perturbed_copy_moves_every_value_by_about_rel(job, tmp_path):
    names = perturb_store(job.store, tmp_path / "copy", rel=1e-6, seed=1)
    src, dst = open_store(job.store), open_store(tmp_path / "copy")
    assert sorted(names) == sorted(src.feature_tables()) and len(names) == 3
    for name in names:
        alias, version = parse_table_name(name)
        a, b = src.read(alias, version, with_seq=True), dst.read(alias, version, with_seq=True)
        assert list(a.ids) == list(b.ids)
        change = np.abs(b.vector - a.vector) / np.maximum(np.abs(a.vector), 1e-30)
        assert 0 < change.max() < 1e-5 and 1e-8 < np.median(change) < 2e-6
        if a.seq is not None and a.seq.size:
            assert np.array_equal(a.seq_mask, b.seq_mask) and not np.array_equal(a.seq, b.seq)


@pytest.mark.timeout(900)
def test_the_spread_is_measured_from_each_runs_metrics(job, tmp_path, ray_local):
    result = _benchmark().measure(job, tmp_path, runs=1, rel=1e-6, stages=["train", "evaluate"], echo=lambda _: None)
    finals = []
    for i, row in enumerate(result["runs"]):
        metrics = json.loads((tmp_path / f"run_{i}" / "metrics.json").read_text())
        assert row["final_waf"] == pytest.approx(100 * metrics["weighted_f1"])
        finals.append(row["final_waf"])
        assert len(row["published_per_seed"]) == 1 and row["pseudo_labels"] == []
    assert [r["rel"] for r in result["runs"]] == [0.0, 1e-6]
    assert result["spread"] == pytest.approx(max(finals) - min(finals))
