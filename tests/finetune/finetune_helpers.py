"""Corpora, jobs and assertions shared by the fine-tuning tests (fault injection included)."""

from __future__ import annotations

import os

import numpy as np
import torch

from mer.config import job_from_dict

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
WORDS = {
    "neutral": "the weather report says cloudy",
    "angry": "I am furious this is outrageous",
    "happy": "what a wonderful lovely day",
    "sad": "I miss her so much tears",
    "worried": "I am anxious about the exam",
    "surprise": "wow I did not expect that",
}


def text_job(tmp_path, manifest, model, zero: dict, **finetune):
    """A text fine-tuning job; one model (``folds: 0``) unless ``finetune`` says otherwise."""
    return job_from_dict({
        "name": "ft", "manifest": str(manifest), "store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
        "labels": LABELS,
        "encoders": {"text": {"alias": "hf_text", "model": str(model), "layers": [-1], "seq_len": 4}},
        "stages": ["finetune"],
        "finetune": {
            "role": "text", "epochs": 4, "lr": 3e-3, "batch_size": 4, "num_workers": 2, "max_length": 24,
            "deepspeed": {"zero_optimization": zero}, "folds": 0, **finetune,
        },
    })


def assert_loss_decreases(summary):
    losses = summary["losses"]
    assert len(losses) == 4 * 3  # 4 epochs x 24 rows / (2 workers x 4)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def assert_reextracted(summary, job, base_version):
    """A new encoder version, a new table, every text row again; later stages are told to read the export."""
    from mer.config import with_values
    from mer.encoders import encoder_version
    from mer.store import open_store

    assert summary["job_updates"] == {"encoders.text.model": summary["out"]}  # the runner applies it
    after = summary["extract"]["text"]
    assert after["version"] == encoder_version(with_values(job, summary["job_updates"]).encoders["text"]) != base_version
    assert after["written"] == 36 and after["failed"] == 0  # every transcript of every split
    assert len(open_store(job.store).read("hf_text", after["version"]).ids) == 36


LM_HEAD_PARAMS = 30522 * 64  # tiny_llama's untied LM head (MiniLM vocabulary x hidden 64), always frozen

# two transcripts, the first padded: pooling must ignore the padding
IDS = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def killed_marker(fingerprint: str):
    """Left by :func:`dying_after_first_checkpoint` when it kills a worker (one kill per training set)."""
    import tempfile
    from pathlib import Path

    return Path(tempfile.gettempdir()) / f"mer_test_killed_{fingerprint}"


def dying_after_first_checkpoint(cfg: dict) -> None:
    """``train_loop_per_worker``, but the rank-0 worker of a run named ``*_fold1`` (cross-fitting's fold 1)
    or ``*_dies`` exits once, like a lost machine, right after it reported its first epoch's checkpoint;
    Ray Train (``FailureConfig``) restarts the run.
    """
    import time

    import ray.train

    from mer.finetune.loop import train_loop_per_worker

    ctx = ray.train.get_context()
    marker = killed_marker(cfg["fingerprint"])
    if ctx.get_experiment_name().endswith(("_fold1", "_dies")) and ctx.get_world_rank() == 0 and not marker.exists():
        report = ray.train.report

        def report_then_die(*args, **kwargs):  # the loop reports after each epoch but the last
            report(*args, **kwargs)
            time.sleep(5)  # the controller collects the report on its poll
            marker.touch()
            os._exit(1)

        ray.train.report = report_then_die
    train_loop_per_worker(cfg)


