"""The fine-tuned model: pooled classifier head, export to a plain Hugging Face folder, LoRA merge.
"""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import IDS, LABELS, MASK, text_job

from mer.finetune.stage import finetune_settings
from mer.config import ConfigError
from mer.finetune.model import PooledClassifier, export_folder, load_finetuned


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

    from mer.finetune.model import (
        add_lora,
        count_parameters,
        load_backbone,
        lora_config,
        merge_lora,
    )

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
        worker_config(finetune_settings(job(lora_target_modules=["W_pack"])))
    assert worker_config(finetune_settings(job(lora_target_modules=["q_proj", "o_proj"])))["lora"]["r"] == 8


