"""A tiny random-weight Whisper written to a folder, loadable offline by ``from_pretrained``.

The layout real checkpoints have, at toy size: a byte-level BPE vocabulary
(``Ġ`` = 220 as in GPT-2), then the special tokens in Whisper's order, the
no-speech token right before ``<|notimestamps|>`` (transformers finds it by
that position) and 1501 timestamp tokens. Random weights would mostly emit
control or timestamp tokens (decoding to ""); a logit bias against them (the
final decoder norm's feature 0 pinned to 1, ``proj_out``'s column 0 used as
the bias) makes the model emit text, so the generation path is exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperProcessor, WhisperTokenizer)

LANGS = ["en", "zh", "de"]


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in id order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    order, extra = list(printable), []
    for b in range(256):
        if b not in printable:
            order.append(b)
            extra.append(256 + len(extra))
    codes = printable + extra
    return [chr(c) for _, c in sorted(zip(order, codes))]


def build_tiny_whisper(folder: Path, d_model: int = 64, layers: int = 2, heads: int = 4, mel_bins: int = 80,
                       seed: int = 0) -> Path:
    """Write the processor and model to ``folder``; returns it (``benchmarks/gpu.py`` builds Whisper-large-v3's
    shape with it: d_model 1280, 32 layers, 20 heads, 128 mel bins)."""
    folder = Path(folder)
    vocab = {ch: i for i, ch in enumerate(_byte_symbols())}
    merges = [("Ġ", "t"), ("h", "e")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    specials = ["<|startoftranscript|>", *(f"<|{lang}|>" for lang in LANGS), "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)  # <|endoftext|> first
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens(["<|%.2f|>" % (i * 0.02) for i in range(1501)])
    tokenizer.pad_token = "<|endoftext|>"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", *specials]}
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=mel_bins), tokenizer=tokenizer).save_pretrained(folder)

    eot, sot, space = ids["<|endoftext|>"], ids["<|startoftranscript|>"], vocab["Ġ"]
    suppress = [ids[t] for t in specials]  # the prompt is forced; control tokens are never generated
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=mel_bins, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, suppress_tokens=suppress, begin_suppress_tokens=[space, eot],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # logit bias: text tokens over timestamps and control tokens
        model.model.decoder.layer_norm.weight[0], model.model.decoder.layer_norm.bias[0] = 0.0, 1.0
        model.proj_out.weight[:, 0] = 0.0
        keep = {eot, ids["<|nospeech|>"], *(ids[f"<|{lang}|>"] for lang in LANGS)}
        model.proj_out.weight[[i for i in range(sot, len(tokenizer)) if i not in keep], 0] = -10.0
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        is_multilingual=True, lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in LANGS},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        suppress_tokens=suppress, begin_suppress_tokens=[space, eot], max_initial_timestamp_index=50,
        return_timestamps=False, alignment_heads=[[layers - 1, 0]],
    )
    model.save_pretrained(folder)
    return folder
