"""A trained run on 40 real demo clips (validate, extract, train; one AGT seed, 3 epochs): tests and ``benchmarks/serve.py``."""

from __future__ import annotations

from pathlib import Path


def train_tiny_run(root: Path, name: str = "tiny"):
    """Write the corpus, store and run folder under ``root``; returns the job (Ray must be running)."""
    from mer.config import job_from_dict
    from mer.corpus.demo import make_demo_corpus
    from mer.runner import run_job

    manifest = make_demo_corpus(root / "demo", n_train=30, n_unlabeled=0, n_test=10, seed=3, workers=1)
    job = job_from_dict({
        "name": name, "manifest": str(manifest), "store": str(root / "store"), "run_dir": str(root / "run"),
        "encoders": {"audio": {"alias": "logmel"}, "video": {"alias": "frames"}, "text": {"alias": "minilm"}},
        "stages": ["validate", "extract", "train"],
        "train": {"epochs": 3, "seeds": [0], "hidden": 16, "baseline": None},
    })
    run_job(job, echo=lambda _: None)
    return job
