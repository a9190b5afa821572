"""The DeepSpeed config of a fine-tuning job: from the job YAML, not from code.

``finetune.deepspeed`` is a DeepSpeed config dict or the path of a JSON file.
Code only fills what follows from the job (the Hugging Face "auto" convention):
batch sizes from ``finetune.batch_size`` and the worker count, the optimizer
learning rate, and mixed precision (on by the config's ``enabled: auto`` only
when workers have GPUs).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mer.config import ConfigError, FinetuneConfig


def load_deepspeed_config(value: Any) -> dict:
    """Read ``finetune.deepspeed``: a mapping, or a JSON file path."""
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if isinstance(value, str):
        path = Path(value)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"finetune.deepspeed: no such file {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"finetune.deepspeed: {path} is not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"finetune.deepspeed: {path} must hold a JSON object")
        return data
    raise ConfigError(f"finetune.deepspeed: expected a mapping or a JSON path, got {value!r}")


def zero_stage(ds_config: dict) -> int:
    """ZeRO stage of a DeepSpeed config (0 = plain data parallel)."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def _auto(section: dict, key: str, value: Any) -> None:
    if section.get(key, "auto") == "auto":
        section[key] = value


def resolve_deepspeed_config(cfg: FinetuneConfig, world_size: int, use_gpu: bool) -> dict:
    """The job's DeepSpeed config with the job-derived values filled in.

    Args:
        cfg: the job's ``finetune`` section.
        world_size: number of Ray Train workers (data-parallel ranks).
        use_gpu: whether the workers hold GPUs (bf16/fp16 ``auto`` -> on).

    Returns:
        A config dict ready for ``deepspeed.initialize(config=...)``.

    Raises:
        ConfigError: stage outside 0-3, or batch sizes that do not multiply out.
    """
    ds = load_deepspeed_config(cfg.deepspeed)
    stage = zero_stage(ds)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"finetune.deepspeed: zero_optimization.stage must be 0-3, got {stage}")
    _auto(ds, "train_micro_batch_size_per_gpu", cfg.batch_size)
    _auto(ds, "gradient_accumulation_steps", 1)
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    _auto(ds, "train_batch_size", micro * accum * world_size)
    if ds["train_batch_size"] != micro * accum * world_size:
        raise ConfigError(
            f"finetune.deepspeed: train_batch_size {ds['train_batch_size']} != micro batch {micro} x "
            f"accumulation {accum} x {world_size} workers"
        )
    if "optimizer" in ds:
        _auto(ds["optimizer"].setdefault("params", {}), "lr", cfg.lr)
    else:
        # The loop passes torch AdamW; DeepSpeed refuses a client optimizer under
        # offload unless told that this is intended (no compiled cpu_adam op needed).
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    for precision in ("bf16", "fp16"):
        if precision in ds:
            _auto(ds[precision], "enabled", use_gpu)
    ds.setdefault("steps_per_print", 10**9)  # progress goes through Ray Train reports
    return ds
