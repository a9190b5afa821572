"""Native Baichuan-13B (mer.encoders.baichuan): tokenizer, ALiBi, padding, checkpointing, hub-folder loading.

Everything runs on a tiny Baichuan (3 layers, hidden 32, 4 heads) with random
weights and a sentencepiece model trained here; the hub-like folders hold the
hub's file names and weight keys, and hub ``.py`` files that raise if imported.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mer.encoders.baichuan import (
    BaichuanConfig,
    BaichuanForCausalLM,
    BaichuanModel,
    BaichuanTokenizer,
    alibi_slopes,
    attention_bias,
    register,
    remote_code,
)
from finetune_helpers import (  # noqa: F401 (text_manifest: a fixture, used by name)
    LABELS,
    WORDS,
    assert_loss_decreases,
    assert_reextracted,
    text_job,
    text_manifest,
)

pytestmark = pytest.mark.timeout(240)

VOCAB = 320  # byte fallback alone takes 256 pieces + 3 specials
TINY = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    model_max_length=64, initializer_range=0.2,  # large init: attention far from uniform, so ALiBi matters
)
HUB_PY = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")
CHINESE = "今天 天气 很好 我 很 高兴 难过 担心 惊讶 生气".split()
TEXTS = [
    "the weather report says cloudy",
    "ＴＨＥ　ｗｅａｔｈｅｒ　ｒｅｐｏｒｔ",  # full-width letters and ideographic spaces: NFKC folds them
    "  I   am    furious  ",  # runs of spaces: collapsed by sentencepiece
    "今天 天气 很好",
    "wow 🙂 ☃ unseen",  # not in the training text: byte fallback
]


# --- fixtures -------------------------------------------------------------------
@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A BPE sentencepiece model (NFKC normalisation, byte fallback) trained on 400 random lines."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    words = " ".join(WORDS.values()).split() + CHINESE
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=VOCAB,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2,
    )
    return folder / "tokenizer.model"


def tiny_model(seed: int = 0, **overrides) -> BaichuanForCausalLM:
    """Random tiny Baichuan; norm weights moved off 1 so they are exercised too."""
    torch.manual_seed(seed)
    model = BaichuanForCausalLM(BaichuanConfig(**TINY | overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def hub_folder(root, sp_model, weights: str, hub_code: bool):
    """A folder laid out like baichuan-inc/Baichuan-13B-Base: hub config, tokenizer config and weight names.

    Args:
        weights: ``bin`` = two ``pytorch_model-0000X-of-00002.bin`` shards + index;
            ``safetensors`` = one ``model.safetensors``.
        hub_code: write the hub's three .py files, each raising on import.
    """
    from safetensors.torch import save_file

    root.mkdir()
    state = tiny_model().state_dict()
    config = {
        "_from_model_config": True, "architectures": ["BaichuanForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "gradient_checkpointing": [False],
        "hidden_act": "silu", "rms_norm_eps": 1e-06, "model_type": "baichuan", "tie_word_embeddings": False,
        "torch_dtype": "float32", "transformers_version": "4.29.2", "use_cache": True, **TINY,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}

    (root / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "bos_token": added("<s>"), "eos_token": added("</s>"), "unk_token": added("<unk>"), "pad_token": added("<unk>"),
        "clean_up_tokenization_spaces": False, "model_max_length": 64, "sp_model_kwargs": {},
        "tokenizer_class": "BaichuanTokenizer",
    }, indent=2))
    (root / "tokenizer.model").write_bytes(sp_model.read_bytes())
    if weights == "bin":
        names = sorted(state)
        shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
        for file, keys in shards.items():
            torch.save({k: state[k] for k in keys}, root / file)
        index = {"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
                 "weight_map": {k: file for file, keys in shards.items() for k in keys}}
        (root / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    else:
        save_file(state, str(root / "model.safetensors"))
    if hub_code:
        for file in HUB_PY:
            (root / file).write_text('raise RuntimeError("hub code must not run")\n')
    return root, state


@pytest.fixture(scope="module", params=[("bin", True), ("safetensors", False)], ids=["bin-shards+hub-py", "safetensors"])
def folder(request, tmp_path_factory, sp_model):
    """(hub-like folder, the state dict written into it), in both weight layouts."""
    weights, hub_code = request.param
    return hub_folder(tmp_path_factory.mktemp("hub") / weights, sp_model, weights, hub_code)


def hub_reference_logits(model: BaichuanForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits of one unpadded sequence, computed naively the hub's way from the state dict.

    Explicit scores + softmax, the hub's ALiBi form ``slope * j`` with a -inf causal
    mask, slopes of 4 heads written out from the ALiBi paper (2^-8/4 ... 2^-8).
    """
    cfg, sd = model.config, model.state_dict()
    heads, width = cfg.num_attention_heads, cfg.hidden_size
    head_dim, length = width // heads, ids.shape[1]

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    slopes = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])
    mask = torch.full((length, length), float("-inf")).triu(1) + slopes[:, None, None] * torch.arange(length)
    x = sd["model.embed_tokens.weight"][ids[0]]
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q, k, v = (h @ sd[p + "self_attn.W_pack.weight"].T).unflatten(-1, (3, heads, head_dim)).permute(1, 2, 0, 3)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask, dim=-1) @ v
        x = x + attn.transpose(0, 1).reshape(length, width) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gated = F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)
        x = x + gated @ sd[p + "mlp.down_proj.weight"].T
    return (rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T)[None]


# --- tokenizer ------------------------------------------------------------------
def test_tokenizer_ids_are_sentencepiece_ids(sp_model, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tok = BaichuanTokenizer(vocab_file=str(sp_model))
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == [1] + sp.encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(sp.encode(text))
        assert tok.decode(ids) == "<s>" + sp.decode(sp.encode(text))
    # sentencepiece's normalisation is in the ids, and decoding gives the normalised text back
    assert tok(TEXTS[1])["input_ids"] == tok("THE weather report")["input_ids"]
    assert tok.decode(tok(TEXTS[2])["input_ids"], skip_special_tokens=True) == "I am furious"
    assert tok.decode(tok(TEXTS[4])["input_ids"], skip_special_tokens=True) == TEXTS[4]  # bytes round-trip
    assert tok.decode(tok(TEXTS[0])["input_ids"], skip_special_tokens=True) == TEXTS[0]

    assert tok.vocab_size == len(tok) == VOCAB
    assert tok.get_vocab() == {sp.id_to_piece(i): i for i in range(VOCAB)}
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token) == (1, 2, 0, None)
    eos_only = BaichuanTokenizer(vocab_file=str(sp_model), add_bos_token=False, add_eos_token=True)
    assert eos_only(TEXTS[0])["input_ids"] == sp.encode(TEXTS[0]) + [2]
    eos_only.add_bos_token = True
    assert eos_only(TEXTS[0])["input_ids"] == [1] + sp.encode(TEXTS[0]) + [2] and tok.add_bos_token

    left = BaichuanTokenizer(vocab_file=str(sp_model), pad_token="<unk>", padding_side="left")
    batch = left([TEXTS[0], TEXTS[3]], padding=True)
    short = len(sp.encode(TEXTS[3])) + 1
    assert batch["input_ids"][1][-short:] == [1] + sp.encode(TEXTS[3]) and set(batch["input_ids"][1][:-short]) == {0}
    assert batch["attention_mask"][1] == [0] * (len(batch["input_ids"][1]) - short) + [1] * short

    (path,) = tok.save_vocabulary(str(tmp_path))
    assert open(path, "rb").read() == sp_model.read_bytes()


def test_tokenizer_loads_from_a_hub_folder(folder, tmp_path):
    from transformers import AutoTokenizer

    from mer.encoders.baichuan import load_tokenizer

    path, _ = folder
    register()
    for tok in (load_tokenizer(str(path), trust_remote_code=True), AutoTokenizer.from_pretrained(path)):
        assert type(tok) is BaichuanTokenizer and tok.pad_token == "<unk>" and tok.model_max_length == 64
    tok = load_tokenizer(str(path), trust_remote_code=True)
    tok.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "BaichuanTokenizer" and "auto_map" not in saved  # no pointer to hub code
    assert BaichuanTokenizer.from_pretrained(tmp_path)(TEXTS[:2])["input_ids"] == tok(TEXTS[:2])["input_ids"]


# --- ALiBi ----------------------------------------------------------------------
def test_alibi_slopes_follow_the_paper():
    # power of two: 2^(-8/n), 2^(-16/n), ...
    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    # otherwise: the slopes of the closest power of two c, then every other slope of 2c
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8] + [2.0**-1, 2.0**-3]
    assert alibi_slopes(12) == [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    assert alibi_slopes(40)[:32] == alibi_slopes(32) and len(alibi_slopes(40)) == 40  # Baichuan-13B's heads


def test_attention_bias_is_slope_times_distance_and_masks():
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]])  # right and left padding
    bias = attention_bias(mask, 6, 5, torch.float32, "cpu")
    low = torch.finfo(torch.float32).min
    assert bias.shape == (2, 6, 5, 5)
    for h, slope in enumerate(alibi_slopes(6)):
        for i in range(5):
            for j in range(5):
                visible = j <= i and bool(mask[0, j])
                assert bias[0, h, i, j] == (slope * (j - i) if visible else low)
    assert (bias[1, :, :, :2] == low).all() and bias[1, 0, 4, 2] == alibi_slopes(6)[0] * -2
    # the hub's form slope * j differs by slope * i along each row: the same softmax
    ours = torch.softmax(attention_bias(None, 6, 5, torch.float32, "cpu")[0], dim=-1)
    slopes = torch.tensor(alibi_slopes(6))[:, None, None]
    hub = torch.softmax(torch.full((5, 5), float("-inf")).triu(1) + slopes * torch.arange(5), dim=-1)
    torch.testing.assert_close(ours, hub)


def test_model_matches_a_naive_reference_of_the_hub_math():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, hub_reference_logits(model, ids), rtol=1e-5, atol=1e-5)
    # ALiBi matters: without the bias (all slopes 0) the logits move
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr("mer.encoders.baichuan.modeling.alibi_slopes", lambda n: [0.0] * n)
        assert (model(input_ids=ids).logits - logits).abs().max() > 1e-2


# --- padding, checkpointing -------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_hidden_states_do_not_depend_on_padding(side):
    model = tiny_model().model
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, VOCAB, (n,), generator=gen) for n in (9, 5, 2)]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for r, row in enumerate(rows):
        where = slice(0, len(row)) if side == "right" else slice(9 - len(row), 9)
        ids[r, where], mask[r, where] = row, 1
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert len(padded) == 4 and all(torch.isfinite(h).all() for h in padded)  # fully masked rows stay finite
        for r, row in enumerate(rows):
            alone = model(input_ids=row[None], output_hidden_states=True).hidden_states
            real = mask[r].bool()
            for layer in range(4):
                torch.testing.assert_close(padded[layer][r][real], alone[layer][0], rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_model().train()
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    plain_loss, plain_grads = loss_and_grads()
    assert len(calls) == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert len(calls) == 3  # forward + recomputation in backward: checkpointing really ran
    torch.testing.assert_close(ckpt_loss, plain_loss)
    torch.testing.assert_close(ckpt_grads, plain_grads, rtol=1e-5, atol=1e-6)
    assert plain_grads["model.layers.0.self_attn.W_pack.weight"].abs().sum() > 0


# --- hub folders: Auto classes, hf_text, finetune ----------------------------------
def test_hub_folder_loads_natively_with_every_key(folder, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from mer.finetune.model import load_backbone

    path, state = folder
    register()
    register()  # idempotent
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert remote_code(str(path), True) is False  # Baichuan: never the hub's code
    assert remote_code(str(tmp_path), True) is True and remote_code(str(tmp_path / "missing"), True) is True
    config = AutoConfig.from_pretrained(path)
    assert type(config) is BaichuanConfig and not hasattr(config, "auto_map")
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(model) is BaichuanForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(model.state_dict(), state, rtol=0, atol=0)  # the folder's weights, not a fresh init
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)  # the hub's [false] is dropped
    base, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert type(base) is BaichuanModel and not info["missing_keys"]
    tuned = load_backbone(str(path), "text", trust_remote_code=True)  # the job's flag cannot bring hub code in
    assert type(tuned) is BaichuanForCausalLM


def test_hf_text_extracts_from_a_hub_folder(folder):
    from mer.config import EncoderSpec
    from mer.encoders.hf_text import HFTextEncoder

    path, state = folder
    enc = HFTextEncoder(EncoderSpec(alias="hf_text", model=str(path), trust_remote_code=True, seq_len=4))
    assert enc.dim == 32
    texts = ["the weather", "今天 天气 很好 我 很 高兴 难过 担心"]
    out = enc.encode(texts)
    assert type(enc.tokenizer) is BaichuanTokenizer and type(enc.model) is BaichuanModel
    for vector, seq in out:
        assert vector.shape == (32,) and np.isfinite(vector).all() and seq.shape[1] == 32 and 1 <= len(seq) <= 4
    alone = enc.encode(texts[:1])[0][0]
    np.testing.assert_allclose(out[0][0], alone, rtol=1e-5, atol=1e-5)  # padded next to a longer text
    # the vector is the token mean of the mean of the last 4 hidden states of the folder's weights
    model = tiny_model()
    ids = enc.tokenizer(texts[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(alone, torch.stack(hidden[-4:]).mean(0)[0].mean(0).numpy(), rtol=1e-5, atol=1e-5)


def test_finetune_plan_cli_accepts_a_baichuan_config(folder, tmp_path):
    from click.testing import CliRunner

    from mer.cli import cli
    from mer.finetune.plan import make_plan

    path, state = folder
    args = ["finetune", "plan", "--model", f"{path}/config.json", "--gpus", "2", "--gpu-mem", "24"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "| ZeRO-3 |" in result.output and "| ZeRO-2 |" in result.output
    assert make_plan(str(path), gpus=2, gpu_mem_gb=24).total_params == sum(v.numel() for v in state.values())
    # the published 13B shape, as a baichuan config: the same count as the shipped Llama-shaped alias
    hub_13b = json.loads((path / "config.json").read_text()) | {
        "vocab_size": 64000, "hidden_size": 5120, "intermediate_size": 13696, "num_hidden_layers": 40,
        "num_attention_heads": 40, "model_max_length": 4096,
    }
    (tmp_path / "config.json").write_text(json.dumps(hub_13b))
    assert make_plan(str(tmp_path / "config.json"), 8, 80).total_params == make_plan("baichuan-13b", 8, 80).total_params


def test_lora_defaults_to_w_pack_and_merges_into_a_plain_export(folder, tmp_path, text_manifest, monkeypatch):
    from transformers import AutoModelForCausalLM

    from mer.config import ConfigError
    from mer.finetune import model as ft
    from mer.finetune.launch import worker_config
    from mer.finetune.stage import finetune_settings

    path, _ = folder
    job = text_job(tmp_path, text_manifest, path, {"stage": 3}, lora=True)
    job.encoders["text"].trust_remote_code = True
    assert job.finetune.lora_target_modules is None
    assert worker_config(finetune_settings(job))["lora"]["target_modules"] is None  # resolved per architecture, checked before launch

    torch.manual_seed(1)
    backbone = ft.add_lora(ft.load_backbone(str(path), "text"), ft.lora_config(r=4, alpha=8, dropout=0.0))
    assert backbone.peft_config["default"].target_modules == {"W_pack"}
    classifier = ft.PooledClassifier(backbone, num_classes=6, layer=-1).eval()
    # 3 layers x W_pack (A: 4 x 32, B: 96 x 4) + the head
    assert ft.count_parameters(classifier)[0] == 3 * (4 * 32 + 96 * 4) + 6 * 32 + 6
    ids, mask = torch.tensor([[1, 5, 6, 7, 0], [1, 5, 6, 7, 8]]), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        for name, param in classifier.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
        adapted = classifier(input_ids=ids, attention_mask=mask)
    merged, merged_state = ft.merge_lora(classifier.backbone, dict(classifier.state_dict()))
    meta = {"layer": -1, "label_names": LABELS}
    out = ft.export_folder(merged, merged_state, tmp_path / "export", str(path), "text", meta, trust_remote_code=True)
    exported = json.loads((out / "config.json").read_text())
    assert exported["model_type"] == "baichuan" and "auto_map" not in exported
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(ft.load_finetuned(out)(input_ids=ids, attention_mask=mask), adapted)
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    monkeypatch.setattr(ft, "DEFAULT_LORA_TARGETS", {})  # an architecture neither mer nor peft has targets for
    with pytest.raises(ConfigError, match=r"finetune.lora_target_modules=None: .*model_type 'baichuan'"):
        ft.add_lora(ft.load_backbone(str(path), "text"), ft.lora_config(r=4, alpha=8, dropout=0.0))


# --- multi-worker: ZeRO-3 on 2 CPU workers ----------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on an idle 2-core box; a shared, saturated one needs far more
def test_zero3_finetune_export_and_reextract_tiny_baichuan(tmp_path, tmp_path_factory, ray_local, text_manifest, sp_model):
    """The whole text path on Baichuan: ZeRO-3 on 2 workers, export, plain reload, re-extraction."""
    from transformers import AutoModelForCausalLM

    from mer.encoders import encoder_version
    from mer.finetune.stage import run as finetune_stage

    path, state = hub_folder(tmp_path_factory.mktemp("zero3") / "hub", sp_model, "bin", hub_code=True)
    job = text_job(tmp_path, text_manifest, path, {"stage": 3})
    job.encoders["text"].trust_remote_code = True  # as old job files say; the hub .py files raise if run
    base_version = encoder_version(job.encoders["text"])
    summary = finetune_stage(job)

    assert summary["zero_stage"] == 3 and not summary["skipped"]
    assert_loss_decreases(summary)
    assert summary["trainable_params"] == summary["total_params"] - VOCAB * 32  # all but the untied LM head
    assert summary["export_max_abs_diff"] < 1e-5
    tuned, info = AutoModelForCausalLM.from_pretrained(summary["out"], output_loading_info=True)
    assert type(tuned) is BaichuanForCausalLM and not info["missing_keys"] and not info["unexpected_keys"]
    key = "model.layers.0.self_attn.W_pack.weight"
    assert not torch.allclose(tuned.state_dict()[key], state[key])  # trained, not copied
    torch.testing.assert_close(tuned.lm_head.weight, state["lm_head.weight"])  # frozen: the head never reads it
    assert_reextracted(summary, job, base_version)
