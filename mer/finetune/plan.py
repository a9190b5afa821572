"""``mer finetune plan``: will a model fit? DeepSpeed's own ZeRO-2/ZeRO-3 memory estimates.

The model is built on the meta device from its config (no weights, no memory,
no accelerate), its parameters counted the way DeepSpeed's
``estimate_zero{2,3}_model_states_mem_needs_all_live`` count them, and
DeepSpeed's estimators are called for every offload option. The figures cover
model states (parameters, gradients, optimizer states) only; activations come
on top (gradient checkpointing keeps them small).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from mer.errors import MerError

CONFIG_DIR = Path(__file__).parent / "configs"
GIB = 2**30


@dataclass
class Option:
    """One ZeRO setup and its per-GPU / per-node-CPU model-state memory (bytes)."""

    stage: int
    offload_optimizer: bool
    offload_param: bool
    gpu_bytes: int
    cpu_bytes: int

    @property
    def name(self) -> str:
        offload = [n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_param)) if on]
        return f"ZeRO-{self.stage}" + (f" + offload {' & '.join(offload)}" if offload else "")


@dataclass
class Plan:
    """Estimates for one model on ``gpus`` GPUs of ``gpu_mem_gb`` each."""

    model: str
    total_params: int
    largest_layer_params: int
    gpus: int
    nodes: int
    gpu_mem_gb: float
    options: list[Option] = field(default_factory=list)
    deepspeed_tables: str = ""

    def fits(self, option: Option) -> bool:
        return option.gpu_bytes <= self.gpu_mem_gb * GIB

    def table(self) -> str:
        """Markdown table: option, GB per GPU, GB CPU per node, fits."""
        lines = [
            f"{self.model}: {self.total_params / 1e9:.2f} B params (largest layer {self.largest_layer_params / 1e6:.0f} M), "
            f"{self.gpus} GPUs x {self.gpu_mem_gb:g} GB on {self.nodes} node(s)",
            "",
            "| setup | model states per GPU | CPU RAM per node | fits |",
            "|---|---|---|---|",
        ]
        for o in self.options:
            lines.append(
                f"| {o.name} | {o.gpu_bytes / GIB:.1f} GB | {o.cpu_bytes / GIB:.0f} GB | {'yes' if self.fits(o) else 'no'} |"
            )
        return "\n".join(lines)


def model_config(name: str, trust_remote_code: bool = False):
    """A transformers config from a shipped name (``baichuan-13b``), a config.json, a folder or a hub name.

    ``model_type: baichuan`` builds mer's native config (its hub ``auto_map`` is ignored).
    """
    from transformers import AutoConfig

    from mer.encoders.baichuan import register, remote_code

    register()
    shipped = CONFIG_DIR / f"{name.lower()}.json"
    path = shipped if shipped.is_file() else Path(name)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MerError(f"--model {path}: not a JSON model config ({' '.join(str(exc).split())})") from None
        if not isinstance(data, dict):
            raise MerError(f"--model {path}: not a JSON model config (a {type(data).__name__}, not an object)")
        data.pop("_comment", None)
        model_type = data.pop("model_type", None)
        if not model_type:
            raise MerError(f"{path}: config has no model_type")
        return AutoConfig.for_model(model_type, **data)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=remote_code(name, trust_remote_code))
    except (OSError, ValueError) as exc:
        shipped_names = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob("*.json")))
        raise MerError(
            f"--model {name}: no config found ({str(exc).splitlines()[0]}); give a config.json, a model folder, "
            f"or a shipped name ({shipped_names})"
        ) from None


def count_params(config) -> tuple[int, int]:
    """(total, largest single module) parameter counts of the model built on the meta device."""
    from mer.finetune.model import empty_model

    model = empty_model(config)
    # parameters() yields a tied weight once; meta tensors have no data_ptr to dedupe by
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def make_plan(model: str, gpus: int, gpu_mem_gb: float, nodes: int = 1, trust_remote_code: bool = False) -> Plan:
    """DeepSpeed's ZeRO-2 and ZeRO-3 estimates for ``model`` on ``gpus`` GPUs over ``nodes`` nodes."""
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs,
        estimate_zero3_model_states_mem_needs_all_cold,
    )
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    if gpus < 1 or nodes < 1 or gpus % nodes:
        raise MerError(f"--gpus {gpus} must be a positive multiple of --nodes {nodes}")
    total, largest = count_params(model_config(model, trust_remote_code))
    per_node = gpus // nodes
    plan = Plan(model, total, largest, gpus, nodes, gpu_mem_gb)
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=offload)
        plan.options.append(Option(2, offload, False, gpu, cpu))
    for offload_opt, offload_param in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, per_node, nodes, cpu_offload=offload_opt, cpu_offload_params=offload_param, zero_init=True
        )
        plan.options.append(Option(3, offload_opt, offload_param, gpu, cpu))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # DeepSpeed's own tables, kept verbatim
        estimate_zero2_model_states_mem_needs_all_cold(total, per_node, nodes)
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, per_node, nodes)
    plan.deepspeed_tables = printed.getvalue()
    return plan
