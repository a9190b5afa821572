"""mer finetune plan: DeepSpeed's own ZeRO memory estimators on a model built on the meta device.
"""

from __future__ import annotations

import pytest

from mer.errors import MerError
from mer.finetune.plan import make_plan


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


def test_cli_finetune_plan():
    from click.testing import CliRunner

    from mer.cli import cli

    result = CliRunner().invoke(cli, ["finetune", "plan", "--model", "baichuan-13b", "--gpus", "4", "--gpu-mem", "80"])
    assert result.exit_code == 0, result.output
    assert "| ZeRO-2 | 80.3 GB | 296 GB | no |" in result.output
    assert "| ZeRO-3 + offload optimizer | 7.4 GB | 296 GB | yes |" in result.output
    assert "next: " in result.output


