"""The per-worker fine-tuning recipe, read top to bottom (runs inside Ray Train).

Ray Train starts one process per worker and sets up the torch process group
(gloo on CPU, NCCL on GPU); ``deepspeed.initialize`` reuses that group, the
pattern Ray documents for DeepSpeed. Every rank runs the same number of steps
(ZeRO's collectives need it), so each rank's share of the examples is padded
by ``DistributedSampler``.

After every epoch but the last, every rank writes its part of a DeepSpeed
checkpoint (its ZeRO shards, rank 0 the module state and ``resume.json``,
each rank its RNG state) and reports it; Ray merges the ranks' files into one
checkpoint folder. A worker restarted by Ray Train, or a rerun of the same run
after the driver died, loads it and goes on from the next epoch with the
weights, optimizer, scheduler, RNG and losses it had, so it ends with the
weights of a run that never stopped (tested).

At the end every rank joins the gather of the ZeRO-3 shards; under LoRA the
gathered state dict holds base weights and adapter matrices, which rank 0
merges on CPU (peft ``merge_and_unload``) before it writes the
plain Hugging Face export and hands it to Ray Train as the run's checkpoint,
which Ray persists to the run's storage (a shared folder or object store on a
cluster), so the driver finds it wherever the workers ran.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, DistributedSampler

from mer.finetune.dsconfig import zero_stage
from mer.finetune.model import (
    PooledClassifier,
    add_lora,
    count_parameters,
    export_folder,
    freeze_unused_output_head,
    load_backbone,
    lora_config,
    merge_lora,
)

PROBE_SIZE = 4  # examples whose final logits are kept, to check the export
PROBE_FILE = "probe.safetensors"
RESUME_FILE = "resume.json"  # in a mid-run checkpoint: what the run had done, and for which inputs
DS_TAG = "deepspeed"  # the DeepSpeed checkpoint's tag (its subfolder)


def _train_dtype(ds_config: dict) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled") is True:
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled") is True:
        return torch.float16
    return torch.float32


def _text_batches(cfg: dict):
    """(dataset, collate): transcripts tokenized per batch with the model's tokenizer."""
    from mer.encoders.baichuan import load_tokenizer

    tokenizer = load_tokenizer(cfg["model"], trust_remote_code=cfg["trust_remote_code"])
    if tokenizer.pad_token is None:  # causal LMs ship without one; the mask hides it
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    examples = list(zip(cfg["inputs"], cfg["labels"]))

    def collate(batch):
        enc = tokenizer(
            [text for text, _ in batch], padding=True, truncation=True,
            max_length=cfg["max_length"], return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor(
            [label for _, label in batch]
        )

    return examples, collate


def _frame_batches(cfg: dict, rank: int, world: int):
    """(dataset, collate): every sampled frame of this rank's videos, labeled with its video's label.

    Videos are split across ranks before decoding (each rank decodes only its
    share); a video that fails to decode is replaced by the rank's other frames
    so that ranks keep equal step counts.
    """
    from transformers import CLIPImageProcessorPil

    from mer.corpus.media import MediaError
    from mer.encoders.hf_clip import FRAME_SIZE
    from mer.encoders.video import sample_clip

    processor = CLIPImageProcessorPil.from_pretrained(cfg["model"])
    order = list(DistributedSampler(range(len(cfg["inputs"])), world, rank, shuffle=False))
    frames, labels = [], []
    for i in order:
        try:  # the same frames and face crops the hf_clip extractor sees
            clip = sample_clip(cfg["inputs"][i], cfg["num_frames"], cfg["face_crop"], FRAME_SIZE)
        except MediaError:
            continue
        frames.extend(clip.frames)
        labels.extend([cfg["labels"][i]] * len(clip.frames))
    if not frames:
        raise RuntimeError(f"rank {rank}: none of its {len(order)} videos decoded")
    target = len(order) * cfg["num_frames"]
    examples = [(frames[i % len(frames)], labels[i % len(frames)]) for i in range(target)]

    def collate(batch):
        pixels = processor(images=[frame for frame, _ in batch], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels}, torch.tensor([label for _, label in batch])

    return examples, collate


def _build_model(cfg: dict, ds_config: dict) -> PooledClassifier:
    dtype = _train_dtype(ds_config)
    if zero_stage(ds_config) == 3:
        # Alive during from_pretrained: transformers builds the model under
        # deepspeed.zero.Init (with accelerate, a dependency), so each rank only
        # ever holds its shard instead of a full copy in host RAM first (26 GB
        # per rank for a 13B model in bf16).
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841
    backbone = load_backbone(cfg["model"], cfg["role"], cfg["trust_remote_code"], dtype=dtype)
    if cfg["role"] == "text":
        freeze_unused_output_head(backbone)
        backbone.config.use_cache = False
    if cfg["gradient_checkpointing"]:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(cfg["seed"])
    if cfg.get("lora"):
        # Adapter matrices are created outside zero.Init; deepspeed.initialize
        # partitions them (ZeRO-3) and broadcasts rank 0's values like the head's.
        backbone = add_lora(backbone, lora_config(**cfg["lora"]))
    return PooledClassifier(backbone, cfg["num_classes"], cfg["layer"])


def _gathered_state_dict(engine) -> dict | None:
    """Full state dict on rank 0 (None elsewhere); every rank must call it."""
    if engine.zero_optimization_partition_weights():
        # DeepSpeed's layer-by-layer ZeRO-3 gather (what HF Accelerate calls too)
        return engine._zero3_consolidated_16bit_state_dict()
    if engine.global_rank == 0:
        return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    return None


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _save_resume_point(engine, cfg: dict, rank: int, done: dict, metrics: dict) -> None:
    """Report the epoch with a checkpoint to resume from; every rank must call it (the save is collective)."""
    import ray.train

    folder = tempfile.mkdtemp(prefix="mer_ft_resume_")
    engine.save_checkpoint(folder, tag=DS_TAG)
    torch.save(_rng_state(), f"{folder}/rng_rank{rank}.pt")
    if rank == 0:
        (Path(folder) / RESUME_FILE).write_text(json.dumps({"fingerprint": cfg["fingerprint"], **done}))
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                     delete_local_checkpoint_after_upload=True)


def _resume(engine, cfg: dict, rank: int) -> dict | None:
    """Load the run's last mid-run checkpoint into ``engine``; what it had done, or None to start fresh.

    Only a checkpoint of the same inputs counts (``resume.json``'s fingerprint):
    a run name is reused across settings, and its last checkpoint may be an
    earlier run's export.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as folder:
            done = json.loads((Path(folder) / RESUME_FILE).read_text())
            if done.pop("fingerprint") != cfg["fingerprint"]:
                return None
            engine.load_checkpoint(folder, tag=DS_TAG)
            rng = torch.load(f"{folder}/rng_rank{rank}.pt")
    except FileNotFoundError:  # an export, or a checkpoint deleted after its run finished
        return None
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return done


def train_loop_per_worker(cfg: dict) -> None:
    """Fine-tune, report per-epoch losses, gather, export on rank 0.

    Args:
        cfg: built by ``mer.finetune.launch.worker_config``.
    """
    import deepspeed
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ds_config = cfg["ds_config"]
    deepspeed.init_distributed(dist_backend=cfg["backend"])  # reuses Ray Train's process group
    model = _build_model(cfg, ds_config)
    trainable_params, total_params = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: adapter + head only
    optimizer = None if "optimizer" in ds_config else torch.optim.AdamW(params, lr=cfg["lr"])
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer, config=ds_config)
    dtype = _train_dtype(ds_config)

    def to_device(inputs):
        return {
            k: v.to(engine.device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
        }

    if cfg["role"] == "text":
        examples, collate = _text_batches(cfg)
        sampler = DistributedSampler(examples, world, rank, shuffle=True, seed=cfg["seed"])
    else:
        examples, collate = _frame_batches(cfg, rank, world)
        sampler = DistributedSampler(examples, 1, 0, shuffle=True, seed=cfg["seed"] + rank)
    loader = DataLoader(examples, batch_size=engine.train_micro_batch_size_per_gpu(), sampler=sampler, collate_fn=collate)

    resumed = _resume(engine, cfg, rank)
    done = resumed or {"epoch": -1, "step": 0, "losses": []}
    losses, step, start = done["losses"], done["step"], time.perf_counter()
    for epoch in range(done["epoch"] + 1, cfg["epochs"]):
        sampler.set_epoch(epoch)
        engine.train()
        epoch_losses = []
        for inputs, labels in loader:
            logits = engine(**to_device(inputs))
            loss = F.cross_entropy(logits.float(), labels.to(engine.device))
            engine.backward(loss)
            engine.step()
            mean = loss.detach().float().clone()
            torch.distributed.all_reduce(mean)
            epoch_losses.append(mean.item() / world)
            if engine.is_gradient_accumulation_boundary():
                step += 1
            if cfg["max_steps"] and step >= cfg["max_steps"]:
                break
        losses.extend(epoch_losses)
        if epoch == cfg["epochs"] - 1 or (cfg["max_steps"] and step >= cfg["max_steps"]):
            break
        _save_resume_point(engine, cfg, rank, {"epoch": epoch, "step": step, "losses": losses},
                           {"epoch": epoch, "step": step, "loss": float(np.mean(epoch_losses))})

    # Every rank forwards its probe batch (ZeRO-3 forwards are collective); rank 0 keeps its logits.
    engine.eval()
    probe_inputs, _ = collate(examples[:PROBE_SIZE])
    with torch.no_grad():
        probe_logits = engine(**to_device(probe_inputs)).float().cpu()
    metrics = {
        "epoch": epoch, "step": step, "loss": float(np.mean(epoch_losses)), "losses": losses,
        "resumed_at_epoch": resumed and resumed["epoch"] + 1,
        "seconds": round(time.perf_counter() - start, 1),
        "zero_stage": zero_stage(ds_config), "world_size": world,
        "trainable_params": trainable_params, "total_params": total_params,
    }
    state_dict = _gathered_state_dict(engine)
    if rank != 0:
        ray.train.report(metrics)
        return
    backbone = engine.module.backbone
    if cfg.get("lora"):
        backbone, state_dict = merge_lora(backbone, state_dict)
    with tempfile.TemporaryDirectory() as tmp:
        export_folder(
            backbone, state_dict, tmp, cfg["model"], cfg["role"],
            {k: cfg[k] for k in ("layer", "label_names", "fingerprint")} | {"train_metrics": metrics},
            trust_remote_code=cfg["trust_remote_code"],
        )
        # Beside the export, not in it: the driver moves it out and checks the export against it.
        save_file({**probe_inputs, "logits": probe_logits}, f"{tmp}/{PROBE_FILE}")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
