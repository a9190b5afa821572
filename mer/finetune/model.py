"""Backbone + classification head, export to a plain Hugging Face folder, reload.

No Ray and no DeepSpeed here: the same module is trained under ZeRO by
``loop.py`` and rebuilt from the exported folder with plain ``transformers``.

Our choice where the paper is silent: the head is one linear layer over what
the extractor later reads, so fine-tuning shapes those features: for text the
masked token mean of hidden layer ``finetune.layer``; for CLIP the pooled
(post-layernorm CLS) output of the vision tower, per frame.

With ``finetune.lora`` the text backbone is wrapped by peft (``add_lora``):
only the adapter matrices and the head train. The export merges the adapter
into the base weights (``merge_lora``), so the folder is the plain base
architecture and nothing downstream needs peft.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

HEAD_FILE = "classifier.safetensors"
META_FILE = "mer_finetune.json"


def auto_class_name(config) -> str:
    """``AutoModelForCausalLM`` for decoder LMs (Baichuan, Llama, Qwen), else ``AutoModel``."""
    archs = getattr(config, "architectures", None) or []
    return "AutoModelForCausalLM" if any(a.endswith("ForCausalLM") for a in archs) else "AutoModel"


def load_backbone(model: str, role: str, trust_remote_code: bool = False, dtype=None) -> nn.Module:
    """Load the model to fine-tune from a hub name or a local folder.

    Text: the whole causal LM (so the export is a drop-in for the original
    checkpoint) or an encoder (``AutoModel``); video: ``CLIPVisionModel``,
    which also reads the vision tower out of a full CLIP checkpoint. A Baichuan
    config loads mer's native classes, never the hub's code.
    """
    import transformers

    from mer.encoders.baichuan import remote_code

    if role == "video":
        return transformers.CLIPVisionModel.from_pretrained(model, dtype=dtype)
    trust_remote_code = remote_code(model, trust_remote_code)  # Baichuan: mer's native classes
    config = transformers.AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    cls = getattr(transformers, auto_class_name(config))
    return cls.from_pretrained(model, trust_remote_code=trust_remote_code, dtype=dtype)


def empty_model(config) -> nn.Module:
    """The architecture of ``config`` on the meta device: no weights, no memory, no download."""
    import transformers

    cls = getattr(transformers, auto_class_name(config))
    with torch.device("meta"):
        return cls.from_config(config, trust_remote_code=getattr(config, "auto_map", None) is not None)


#: LoRA targets for architectures peft has no default for, used when ``finetune.lora_target_modules``
#: is null: Baichuan's fused q/k/v projection (adapting q and v alone is not possible there).
DEFAULT_LORA_TARGETS = {"baichuan": ["W_pack"]}


def lora_config(r: int, alpha: int, dropout: float, target_modules: list[str] | None = None):
    """peft ``LoraConfig`` of the ``finetune.lora_*`` keys (``target_modules`` None = the architecture's default)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")


def add_lora(backbone: nn.Module, config) -> nn.Module:
    """Wrap ``backbone`` in a peft ``PeftModel``: only the LoRA matrices stay trainable.

    Without named targets, ``DEFAULT_LORA_TARGETS`` of the model type, else peft's default.

    Raises:
        ConfigError: neither mer nor peft has default target modules for the
            architecture, or the named modules are not in the model.
    """
    from peft import get_peft_model

    from mer.config import ConfigError

    model_type = getattr(backbone.config, "model_type", None)
    if config.target_modules is None and model_type in DEFAULT_LORA_TARGETS:
        config = dataclasses.replace(config, target_modules=DEFAULT_LORA_TARGETS[model_type])
    targets = sorted(config.target_modules) if config.target_modules else None
    try:
        return get_peft_model(backbone, config)
    except ValueError as exc:
        raise ConfigError(
            f"finetune.lora_target_modules={targets}: {str(exc).splitlines()[0]} "
            f"(model_type {getattr(backbone.config, 'model_type', '?')!r}; name the Linear modules to adapt)"
        ) from None


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitioned parameters count in full."""
    trainable = total = 0
    for p in module.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def merge_lora(backbone: nn.Module, state_dict: dict) -> tuple[nn.Module, dict]:
    """Merge a trained LoRA adapter into the base weights (peft ``merge_and_unload``).

    Args:
        backbone: the trained ``PeftModel`` (possibly ZeRO-3 partitioned); only
            its base config and adapter config are read.
        state_dict: the gathered full state dict of the ``PooledClassifier``
            (base weights and adapter matrices).

    Returns:
        (plain backbone of the base architecture holding the merged weights,
        the ``PooledClassifier`` state dict with merged backbone weights and the
        head), ready for :func:`export_folder`.
    """
    weights, head = split_state_dict(state_dict)
    config = copy.deepcopy(backbone.peft_config["default"])
    adapter = add_lora(empty_model(backbone.get_base_model().config), config)
    # assign: the gathered tensors become the parameters (no second copy); safe_merge
    # writes each merged weight to a new tensor, so the gathered ones (which on CPU
    # may share memory with the live engine) are never modified.
    adapter.load_state_dict(weights, strict=True, assign=True)
    merged = adapter.merge_and_unload(safe_merge=True)
    merged_state = {f"backbone.{k}": v for k, v in merged.state_dict().items()}
    return merged, merged_state | {f"head.{k}": v for k, v in head.items()}


def hidden_size(backbone: nn.Module) -> int:
    config = backbone.config
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


def freeze_unused_output_head(backbone: nn.Module) -> None:
    """Freeze an untied LM head: the classifier never reads it, so it needs no optimizer state."""
    out = backbone.get_output_embeddings() if hasattr(backbone, "get_output_embeddings") else None
    if out is None:
        return
    inp = backbone.get_input_embeddings()
    if inp is not None and out.weight is inp.weight:
        return
    out.weight.requires_grad_(False)


class PooledClassifier(nn.Module):
    """Classification head on the masked mean of one hidden layer of a backbone.

    Args:
        backbone: a Hugging Face model (causal LM, encoder or CLIP vision tower).
        num_classes: labels in the job's label set.
        layer: text: index into ``hidden_states`` (negative = from the end).
        dim: width of the pooled hidden state (read from the backbone config if None).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, layer: int = -1, dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.head = nn.Linear(dim or hidden_size(backbone), num_classes)

    def pooled(self, input_ids=None, attention_mask=None, pixel_values=None) -> torch.Tensor:
        """(B, D) masked mean of the chosen layer."""
        if pixel_values is not None:
            return self.backbone(pixel_values=pixel_values).pooler_output
        # base_model skips the LM head of a causal LM: its logits are never used
        # (get_base_model: under LoRA, the adapted model inside the PeftModel)
        model = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[self.layer]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None) -> torch.Tensor:
        """(B, C) logits."""
        return self.head(self.pooled(input_ids, attention_mask, pixel_values))


def split_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Full wrapper state dict -> (backbone state dict, head state dict), prefixes stripped."""
    backbone, head = {}, {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        (backbone if part == "backbone" else head)[rest] = value
    return backbone, head


def export_folder(
    backbone: nn.Module, state_dict: dict, out: str | Path, source: str, role: str, meta: dict,
    trust_remote_code: bool = False,
) -> Path:
    """Write the fine-tuned model as a plain Hugging Face folder.

    Args:
        backbone: the (possibly ZeRO-partitioned) backbone module; only its
            config and class are used, the weights come from ``state_dict``.
        state_dict: the gathered full state dict of the ``PooledClassifier``.
        out: destination folder.
        source: the model it was fine-tuned from (tokenizer / image processor,
            and the rest of a full CLIP checkpoint).
        role: ``text`` or ``video``.
        meta: written to ``mer_finetune.json`` (labels, layer, metrics...).
    """
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights, head = split_state_dict(state_dict)
    if role == "video":
        # Keep the checkpoint's own shape (full CLIP or vision tower) so any
        # CLIP loader reads the export like the original.
        full = transformers.AutoModel.from_pretrained(source)
        tower = full.vision_model if full.config.model_type == "clip" else full
        tower.load_state_dict(weights, strict=True)
        full.save_pretrained(out)
        transformers.CLIPImageProcessorPil.from_pretrained(source).save_pretrained(out)
    else:
        from mer.encoders.baichuan import load_tokenizer

        backbone.save_pretrained(out, state_dict=weights)
        load_tokenizer(source, trust_remote_code=trust_remote_code).save_pretrained(out)
    save_file({k: v.contiguous() for k, v in head.items()}, str(out / HEAD_FILE))
    (out / META_FILE).write_text(json.dumps({"source": source, "role": role, **meta}, indent=2, default=str))
    return out


def load_finetuned(folder: str | Path, trust_remote_code: bool = False) -> PooledClassifier:
    """Rebuild the fine-tuned classifier from an exported folder with plain transformers."""
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    backbone = load_backbone(str(folder), meta["role"], trust_remote_code=trust_remote_code)
    head = load_file(str(folder / HEAD_FILE))
    model = PooledClassifier(backbone, head["weight"].shape[0], meta["layer"], dim=head["weight"].shape[1])
    model.head.load_state_dict(head)
    return model.eval()


def export_logit_gap(folder: str | Path, probe_file: str | Path, trust_remote_code: bool = False) -> float:
    """Max |logit difference| between the export (plain transformers) and the trained engine.

    ``probe_file`` holds the probe inputs and the logits the DeepSpeed engine
    gave for them after training; a faithful export reproduces them.
    """
    probe = load_file(str(probe_file))
    expected = probe.pop("logits")
    model = load_finetuned(folder, trust_remote_code=trust_remote_code).float()
    with torch.no_grad():
        got = model(**{k: (v.float() if v.is_floating_point() else v) for k, v in probe.items()})
    return float((got - expected).abs().max())
