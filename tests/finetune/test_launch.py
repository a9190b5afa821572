"""One fine-tune on Ray Train workers under DeepSpeed ZeRO-2/3 (full or LoRA), export and re-extraction; resume.

The multi-worker tests (``slow``) fine-tune on 2 CPU workers with gloo, with torch AdamW so no
DeepSpeed optimizer op is compiled (only DeepSpeed's CPU shared-memory comm op, once, cached in
TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import os

import pytest
import torch
from finetune_helpers import (
    LABELS,
    LM_HEAD_PARAMS,
    assert_loss_decreases,
    assert_reextracted,
    dying_after_first_checkpoint,
    killed_marker,
    text_job,
)

from mer.config import job_from_dict
from mer.errors import MerError
from mer.finetune.stage import finetune_settings


# --- multi-worker: ZeRO-3 / ZeRO-2 / offload on 2 CPU workers ----------------
@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, ray_local, text_manifest, tiny_llama):
    """The finetune stage with ZeRO-3 on 2 workers, 4 epochs: ``(job, summary, tmp_path)``."""
    from mer.finetune.stage import run as finetune_stage

    tmp_path = tmp_path_factory.mktemp("zero3")
    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3})
    return job, finetune_stage(job), tmp_path


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on an idle 2-core box; a shared, saturated one needs far more
def test_zero3_text_finetune_export_and_reextract(zero3_run, text_manifest, tiny_llama):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mer.encoders import encoder_version
    from mer.finetune.launch import finetune

    job, summary, tmp_path = zero3_run
    base_version = encoder_version(job.encoders["text"])

    assert summary["zero_stage"] == 3 and not summary["skipped"]
    assert_loss_decreases(summary)
    assert summary["trainable_params"] == summary["total_params"] - LM_HEAD_PARAMS  # all but the LM head
    # the export loads with plain transformers and reproduces the engine's logits
    assert summary["export_max_abs_diff"] < 1e-5
    out = summary["out"]
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(tuned.state_dict()[key], base.state_dict()[key])  # trained, not copied
    torch.testing.assert_close(tuned.lm_head.weight, base.lm_head.weight)  # frozen: the head never reads it
    assert set(load_file(f"{out}/classifier.safetensors")) == {"weight", "bias"}
    assert_reextracted(summary, job, base_version)

    again = finetune(finetune_settings(text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3})))  # same inputs: no retraining
    assert again["skipped"] and again["losses"] == summary["losses"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_zero3_run_that_failed_after_epoch_one_resumes_on_rerun_to_the_same_weights(zero3_run, tmp_path):
    """No restarts left (``max_failures: 0``): the run fails; the user's rerun picks up its epoch-0 checkpoint.

    Each rank's ZeRO-3 shards, optimizer and RNG state come back, so the rerun
    ends with the losses and weights of the run that never failed.
    """
    from pathlib import Path

    import ray.train
    from safetensors.torch import load_file

    from mer.config import with_values
    from mer.finetune.launch import finetune, worker_config

    job, clean, _ = zero3_run
    job = with_values(job, {"run_dir": str(tmp_path / "run"), "execution.max_failures": 0})
    marker = killed_marker(worker_config(finetune_settings(job))["fingerprint"])
    with pytest.raises(ray.train.TrainingFailedError):
        finetune(finetune_settings(job), name="finetune_text_dies", worker_loop=dying_after_first_checkpoint)
    assert marker.exists()  # the fault fired
    marker.unlink()
    resumed = finetune(finetune_settings(job), name="finetune_text_dies")
    assert resumed["resumed_at_epoch"] == 1 and clean["resumed_at_epoch"] is None
    assert resumed["losses"] == clean["losses"] and resumed["step"] == clean["step"]
    weights = [load_file(Path(folder) / "model.safetensors") for folder in (clean["out"], resumed["out"])]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on an idle 2-core box; a shared, saturated one needs far more
def test_zero3_lora_text_finetune_merged_export_and_reextract(tmp_path, ray_local, text_manifest, tiny_llama):
    """LoRA under ZeRO-3: only adapter + head train; the export holds merged weights, loadable without peft."""
    from transformers import AutoModelForCausalLM

    from mer.encoders import encoder_version
    from mer.finetune.stage import run as finetune_stage

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3}, lora=True, lr=1e-2)
    base_version = encoder_version(job.encoders["text"])
    summary = finetune_stage(job)

    assert summary["zero_stage"] == 3 and not summary["skipped"]
    assert_loss_decreases(summary)
    # default targets for llama (q_proj, v_proj), r 8: 2 layers x 2 x (8 x 64 + 64 x 8), + the head
    assert summary["trainable_params"] == 2 * 2 * (8 * 64 + 64 * 8) + 6 * 64 + 6
    assert summary["trainable_params"] < 0.005 * (summary["total_params"] - LM_HEAD_PARAMS)  # vs full fine-tuning
    assert summary["export_max_abs_diff"] < 1e-5  # merged export == the engine's adapted model
    out = summary["out"]
    assert not os.path.exists(f"{out}/adapter_config.json")
    tuned, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tuned, base = tuned.state_dict(), AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    for layer in (0, 1):  # the adapter's update, merged: a nonzero delta of rank <= r on the targets only
        delta = tuned[f"model.layers.{layer}.self_attn.q_proj.weight"] - base[f"model.layers.{layer}.self_attn.q_proj.weight"]
        assert 0 < torch.linalg.matrix_rank(delta) <= 8
        torch.testing.assert_close(tuned[f"model.layers.{layer}.self_attn.k_proj.weight"],
                                   base[f"model.layers.{layer}.self_attn.k_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(tuned["model.embed_tokens.weight"], base["model.embed_tokens.weight"], rtol=0, atol=0)
    assert_reextracted(summary, job, base_version)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on an idle 2-core box; a shared, saturated one needs far more
@pytest.mark.parametrize("zero, extra", [
    ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, {}),
    ({"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}, {}),
    ({"stage": 2}, {"lora": True, "lr": 1e-2, "lora_target_modules": ["q_proj", "v_proj", "o_proj"]}),
], ids=["zero2-offload-optimizer", "zero3-offload-all", "zero2-lora"])
def test_text_finetune_zero2_and_offload(tmp_path, ray_local, text_manifest, tiny_llama, zero, extra):
    from mer.finetune.launch import finetune

    summary = finetune(finetune_settings(text_job(tmp_path, text_manifest, tiny_llama, zero, reextract=False, **extra)))
    assert summary["zero_stage"] == zero["stage"]
    assert_loss_decreases(summary)
    assert summary["export_max_abs_diff"] < 1e-5


# --- CLIP: ZeRO-2 on sampled frames of real mp4 clips --------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A full tiny CLIP (vision hidden 32, 32 px images, projection 24) with a PIL processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on an idle 2-core box; a shared, saturated one needs far more
def test_clip_finetune_export_and_reextract(tmp_path, ray_local, tiny_clip):
    from transformers import CLIPModel

    from mer.corpus.demo import make_demo_corpus
    from mer.encoders import encoder_version
    from mer.finetune.stage import run as finetune_stage

    manifest = make_demo_corpus(tmp_path / "demo", n_train=6, n_unlabeled=0, n_test=2, seed=3, workers=1)
    job = job_from_dict({
        "name": "ft_clip", "manifest": str(manifest), "store": str(tmp_path / "store"),
        "run_dir": str(tmp_path / "run"), "labels": LABELS,
        "encoders": {"video": {"alias": "hf_clip", "model": str(tiny_clip), "num_frames": 2, "seq_len": 2}},
        "stages": ["finetune"],
        "finetune": {"role": "video", "epochs": 3, "lr": 3e-3, "batch_size": 2, "num_workers": 2, "folds": 0,
                     "deepspeed": {"zero_optimization": {"stage": 2}}},
    })
    base_version = encoder_version(job.encoders["video"])
    summary = finetune_stage(job)
    assert summary["zero_stage"] == 2 and len(summary["losses"]) == 3 * 3  # 3 videos x 2 frames per rank / 2
    assert summary["export_max_abs_diff"] < 1e-5
    tuned, base = CLIPModel.from_pretrained(summary["out"]), CLIPModel.from_pretrained(tiny_clip)
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.allclose(tuned.state_dict()[key], base.state_dict()[key])
    torch.testing.assert_close(tuned.text_projection.weight, base.text_projection.weight)  # rest of CLIP kept
    after = summary["extract"]["video"]
    assert after["version"] != base_version and after["written"] == 8 and after["failed"] == 0


def test_more_workers_than_gpus_is_an_error_before_anything_starts(tmp_path, ray_local, text_manifest, tiny_llama):
    """3 GPU workers on Ray's 2 fake GPUs: Ray Train would wait for the third forever."""
    from mer.finetune.launch import finetune

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 2}, num_workers=3, use_gpu=True)
    with pytest.raises(MerError, match=r"3 Ray Train worker\(s\) needing GPU: 1 each cannot be placed: the live "
                                       r"nodes hold 2 .*finetune.num_workers / finetune.use_gpu"):
        finetune(finetune_settings(job))
    assert not (tmp_path / "run").exists()


