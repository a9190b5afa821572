"""Ray Train edge of fine-tuning: one ``TorchTrainer`` run, export copied to the job's folder.

``ScalingConfig(num_workers=finetune.num_workers, use_gpu=finetune.use_gpu)``:
one DeepSpeed rank per worker (one GPU each on a cluster; gloo on CPU). A rerun
with the same base model, settings and training rows finds the finished export
(``mer_finetune.json`` fingerprint) and skips training. A dead worker is Ray
Train's to restart (``FailureConfig(execution.max_failures)``): the run goes on
from its last epoch's DeepSpeed checkpoint (:mod:`mer.finetune.loop`), and so
does a rerun after the driver died (Ray Train finds the run's checkpoints under
the same name); only the newest is kept, and the run's folder is deleted once
the export is copied out.
Cross-fitting (:mod:`mer.finetune.crossfit`) calls :func:`finetune` once per
fold with that fold's training rows and export folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from mer.encoders import encoder_class
from mer.errors import MerError
from mer.finetune.data import labeled_examples
from mer.finetune.dsconfig import resolve_deepspeed_config
from mer.finetune.loop import PROBE_FILE, train_loop_per_worker
from mer.finetune.model import META_FILE, export_logit_gap
from mer.finetune.settings import FinetuneSettings
from mer.placement import check_placeable
from mer.runfolder import RunFolder


def export_dir(ft: FinetuneSettings) -> Path:
    """Where the export goes: ``finetune.out`` or ``run_dir/finetuned_<role>``."""
    return Path(ft.cfg.out or Path(ft.run_dir) / f"finetuned_{ft.cfg.role}")


def worker_config(ft: FinetuneSettings, examples: pd.DataFrame | None = None) -> dict:
    """Everything a worker needs, as plain picklable values.

    Args:
        examples: the rows to train on (:func:`labeled_examples` layout); default
            every labeled row. Their CSV is part of the fingerprint, so each
            cross-fitting fold has its own.
    """
    cfg, spec = ft.cfg, ft.spec
    model = encoder_class(spec.alias).resolve_model(spec) if spec else None
    if not model:
        raise MerError(f"finetune.role={cfg.role}: the job needs an encoders.{cfg.role} with a model (hub name or folder)")
    lora = None
    if cfg.lora:
        lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": cfg.lora_target_modules}
        check_lora_targets(model, spec.trust_remote_code, lora)
    examples = labeled_examples(ft) if examples is None else examples
    ds_config = resolve_deepspeed_config(cfg, cfg.num_workers, cfg.use_gpu)
    settings = {
        "role": cfg.role, "model": model, "trust_remote_code": spec.trust_remote_code,
        "num_classes": len(ft.labels), "label_names": list(ft.labels), "layer": cfg.layer,
        "ds_config": ds_config, "epochs": cfg.epochs, "lr": cfg.lr, "max_steps": cfg.max_steps,
        "seed": cfg.seed, "max_length": cfg.max_length, "gradient_checkpointing": cfg.gradient_checkpointing,
        "num_frames": spec.num_frames, "face_crop": spec.face_crop,
    }
    if lora:  # only then: fingerprints of full fine-tuning runs stay as they were
        settings["lora"] = lora
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(examples.to_csv(index=False).encode())
    return settings | {
        "inputs": examples["input"].tolist(), "labels": examples["label"].tolist(),
        "backend": "nccl" if cfg.use_gpu else "gloo", "fingerprint": digest.hexdigest()[:16],
        "num_examples": len(examples), "num_pseudo": int((examples["source"] == "pseudo").sum()),
    }


def check_lora_targets(model: str, trust_remote_code: bool, lora: dict) -> None:
    """Fail before launching when the LoRA targets do not resolve (model built on the meta device).

    Raises:
        ConfigError: no default targets for the architecture (mer's or peft's), or a named module is missing.
    """
    import transformers

    from mer.encoders.baichuan import remote_code
    from mer.finetune.model import add_lora, empty_model, lora_config

    config = transformers.AutoConfig.from_pretrained(model, trust_remote_code=remote_code(model, trust_remote_code))
    add_lora(empty_model(config), lora_config(**lora))


def _finished(out: Path, fingerprint: str) -> dict | None:
    meta = out / META_FILE
    if meta.is_file():
        data = json.loads(meta.read_text())
        if data.get("fingerprint") == fingerprint:
            return data
    return None


def finetune(
    ft: FinetuneSettings,
    examples: pd.DataFrame | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    worker_loop=train_loop_per_worker,
) -> dict:
    """Fine-tune ``finetune.role``'s encoder on Ray Train workers and export it.

    Args:
        examples: rows to train on (default every labeled row).
        out: export folder (default :func:`export_dir`).
        name: Ray Train run name (default ``finetune_<role>``); also names the probe file.
        worker_loop: the per-worker function (tests inject faults here).

    Returns:
        Summary: ``out`` (export folder), ``losses`` per step, ``loss``,
        ``export_max_abs_diff`` (export vs engine logits), ``skipped``,
        ``examples`` (rows trained on).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = worker_config(ft, examples)
    out = Path(out) if out else export_dir(ft)
    name = name or f"finetune_{ft.cfg.role}"
    done = _finished(out, config["fingerprint"])
    if done:
        return {"out": str(out), "skipped": True, "examples": config["num_examples"], **done["train_metrics"]}
    scaling = ScalingConfig(num_workers=ft.cfg.num_workers, use_gpu=ft.cfg.use_gpu)
    check_placeable(scaling, "finetune.num_workers / finetune.use_gpu")
    run_dir = Path(ft.run_dir).resolve()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=scaling,
        torch_config=TorchConfig(backend=config["backend"]),
        run_config=RunConfig(
            name=name, storage_path=str(RunFolder(run_dir).ray_train),
            failure_config=FailureConfig(max_failures=ft.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if out.exists():
        shutil.rmtree(out)
    result.checkpoint.to_directory(str(out))
    # The export is the result; a second full copy (26 GB for 13B) in Ray's storage is not needed,
    # and a later run under this name (other settings) must not find this one's checkpoints.
    result.filesystem.delete_dir(result.path)
    probe = run_dir / f"{name}_{PROBE_FILE}"
    shutil.move(out / PROBE_FILE, probe)
    gap = export_logit_gap(out, probe, trust_remote_code=config["trust_remote_code"])
    kept = ("loss", "losses", "step", "seconds", "zero_stage", "trainable_params", "total_params", "resumed_at_epoch")
    metrics = {k: v for k, v in result.metrics.items() if k in kept}
    return {
        "out": str(out), "base_model": config["model"], "skipped": False, "export_max_abs_diff": gap,
        "examples": config["num_examples"], "pseudo_examples": config["num_pseudo"], **metrics,
    }
