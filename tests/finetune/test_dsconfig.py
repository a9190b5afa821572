"""DeepSpeed config of a fine-tuning job: job values filled, the rest kept.
"""

from __future__ import annotations

import json

import pytest

from mer.config import ConfigError, FinetuneConfig
from mer.finetune.dsconfig import resolve_deepspeed_config


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


