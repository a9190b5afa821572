"""Self-training with stand-in fits and predictions: fake models whose votes a test can work out by hand.

Shared by the self-training, ablation and serving tests (import the fixtures
``job`` and ``fake_training`` into a test module to use them).
"""

import json
from pathlib import Path

import pandas as pd
import pytest

from mer.config import job_from_dict
from mer.runfolder import RunFolder
from mer.selftrain import rounds
from mer.selftrain.stage import truth_of
from mer.store import open_store
from mer.train.data import ReadPlan
from mer.train.settings import FitSettings
from mer.train.stage import fit_settings

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
UNLABELED = [f"u{i}" for i in range(6)]
TEST = [f"t{i}" for i in range(6)]
# What each fake model predicts on u0..u5 (and t0..t5).
PLAN = {
    "agt": ["happy", "happy", "angry", "neutral", "sad", "happy"],
    "attention": ["happy", "angry", "angry", "neutral", "sad", "happy"],
    "unimodal": ["sad", "happy", "angry", "worried", "neutral", "happy"],
}

# Cross-validated weighted F1 each fake model's checkpoint reports.
CV = {"agt": 0.9, "attention": 0.6, "unimodal": 0.65}


def _probs(model: str, ids: list[str], p: float) -> pd.DataFrame:
    rows = []
    for sid, label in zip(ids, PLAN[model]):
        probs = dict.fromkeys(LABELS, (1 - p) / 5)
        probs[label] = p
        rows.append({"sample_id": sid, "label": label, **{f"p_{k}": v for k, v in probs.items()}})
    return pd.DataFrame(rows)


def run_rounds(job, echo=lambda _: None):
    """The rounds of ``job``, as its selftrain stage runs them."""
    return rounds.run_rounds(fit_settings(job), job.selftrain, RunFolder(job.run_dir), truth_of(job), echo=echo)


def run_id(job):
    return rounds.run_id(fit_settings(job), job.selftrain, str(job.truth))


def _predict(checkpoint, split):
    model = json.loads((Path(checkpoint) / "config.json").read_text())["model"]
    if split == "test":
        return _probs(model, TEST, 0.8)
    table = _probs(model, UNLABELED, 0.95)
    table.loc[4:, [f"p_{k}" for k in LABELS]] = 1 / 6
    return table


@pytest.fixture
def fake_training(monkeypatch):
    """fit/predict stand-ins: confident on u0..u3, unsure on u4..u5; record every fit."""
    calls = []

    def fit(settings, model, seed, out_dir, extra_labels=None, plan=None):
        calls.append((model, seed, 0 if extra_labels is None else len(extra_labels)))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"model": model, "seed": seed, "labels": LABELS,
                                                     "cv": {"weighted_f1": CV[model]}, "read": {"tables": {}}}))
        return out

    def predict_split(checkpoints, store, split, execution, swap=None, budget_bytes=None):
        return [_predict(c, split) for c in checkpoints]

    monkeypatch.setattr("mer.train.fit.fit", fit)
    monkeypatch.setattr(FitSettings, "plan", lambda self, streaming=None: ReadPlan(self.store, {}, False, 0.0))
    monkeypatch.setattr("mer.train.parallel.predict_split", predict_split)
    return calls


@pytest.fixture
def job(tmp_path):
    manifest = tmp_path / "manifest.csv"
    rows = [{"sample_id": s, "split": "unlabeled", "label": "", "text": "x"} for s in UNLABELED]
    rows += [{"sample_id": s, "split": "test", "label": lab, "text": "x"} for s, lab in zip(TEST, PLAN["agt"])]
    rows += [{"sample_id": "r0", "split": "train", "label": "sad", "text": "x"}]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"sample_id": UNLABELED, "label": ["sad", "happy", "angry", "worried", "sad", "happy"]}).to_csv(truth, index=False)
    open_store(tmp_path / "store")  # the extract stage's, in a real run
    return job_from_dict(
        {
            "name": "st",
            "manifest": str(manifest),
            "store": str(tmp_path / "store"),
            "run_dir": str(tmp_path / "run"),
            "truth": str(truth),
            "encoders": {"text": {"alias": "minilm"}},
            "train": {"seeds": [0, 1]},
            "selftrain": {"rounds": 2, "threshold": 0.9, "voting": "prior", "min_new": 1, "test_threshold": 0.0},
        }
    )
