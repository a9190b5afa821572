"""Baichuan-13B v1 in plain PyTorch: a Llama-style decoder with ALiBi attention.

Written from the architecture, not from the hub's code, with the hub's module
names so that published checkpoints load key for key (``model.embed_tokens``,
``model.layers.N.self_attn.W_pack`` / ``o_proj``, ``model.layers.N.mlp.gate_proj`` /
``up_proj`` / ``down_proj``, ``model.layers.N.input_layernorm`` /
``post_attention_layernorm``, ``model.norm``, ``lm_head``):

* pre-norm decoder layers, RMSNorm, SiLU-gated MLP, no biases anywhere;
* ``W_pack``: one Linear(hidden, 3 x hidden) whose output is [q | k | v], each
  split into heads;
* no position embeddings: ALiBi adds ``slope_h * (j - i)`` to the score of
  query i and key j (j <= i), one slope per head (:func:`alibi_slopes`).

Our choices:

* Bias form ``slope * (j - i)``, not the hub's ``slope * j``: the two differ by
  ``slope * i``, constant along each softmax row, so attention is the same; the
  relative form keeps the bias small next to the scores (the hub's grows with
  the query position, which costs precision in bf16) and makes left padding
  exact (distances between real tokens do not move).
* One additive float mask per batch (ALiBi + causal + padding, masked entries
  at the dtype's minimum rather than -inf so a query with no visible key, a
  left-padding position, gives finite output) handed to torch's
  ``scaled_dot_product_attention``.
* No KV cache and no ``generate``: mer reads hidden states and fine-tunes.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from mer.encoders.baichuan.configuration import BaichuanConfig


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al., "Train Short, Test Long", 2022).

    For ``n`` a power of two: the geometric sequence ``2^(-8/n), 2^(-16/n), ...``.
    Otherwise (Baichuan-13B's 40 heads): the slopes for the largest power of two
    ``c`` below ``n``, then the 1st, 3rd, 5th... slopes for ``2c`` (they fall
    between those for ``c``) until there are ``n``.
    """
    closest = 2 ** math.floor(math.log2(num_heads))
    return _geometric_slopes(closest) + _geometric_slopes(2 * closest)[0::2][: num_heads - closest]


def _geometric_slopes(n: int) -> list[float]:
    return [2 ** (-8 * (i + 1) / n) for i in range(n)]


def attention_bias(
    attention_mask: torch.Tensor | None, num_heads: int, length: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """Additive attention mask (B or 1, heads, T, T): ALiBi where a key is visible, dtype minimum elsewhere.

    Args:
        attention_mask: (B, T), 1 for real tokens, 0 for padding (either side), or None.
        num_heads: one ALiBi slope per head.
        length: sequence length T.
        dtype: dtype of the attention scores.
    """
    pos = torch.arange(length, device=device)
    distance = (pos[None, :] - pos[:, None]).float()  # j - i
    slopes = torch.tensor(alibi_slopes(num_heads), device=device)
    visible = (distance <= 0)[None, None]  # causal
    if attention_mask is not None:
        visible = visible & attention_mask.bool()[:, None, None, :]
    bias = slopes[:, None, None] * distance
    return torch.where(visible, bias, torch.finfo(dtype).min).to(dtype)


class BaichuanRMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 (``weight`` has the hub's name)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(hidden_states.dtype)


class BaichuanMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``, no biases."""

    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAttention(nn.Module):
    """Multi-head attention with the fused ``W_pack`` q/k/v projection; positions come from the bias."""

    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        qkv = self.W_pack(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.hidden_size))


class BaichuanDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block: attention, then MLP (checkpointed when enabled)."""

    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.self_attn = BaichuanAttention(config)
        self.mlp = BaichuanMLP(config)
        self.input_layernorm = BaichuanRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = BaichuanRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attention_bias)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class BaichuanPreTrainedModel(PreTrainedModel):
    """Shared transformers settings; the default ``_init_weights`` covers Linear, Embedding and RMSNorm."""

    config: BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanDecoderLayer"]
    _supports_sdpa = True


class BaichuanModel(BaichuanPreTrainedModel):
    """Embeddings, decoder layers and final norm; returns hidden states (what mer's extractors read)."""

    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([BaichuanDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = BaichuanRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        """Hidden states of a (padded) batch.

        Args:
            input_ids: (B, T) token ids, or give ``inputs_embeds`` (B, T, D) instead.
            attention_mask: (B, T), 0 at padding (left or right); None = no padding.
            output_hidden_states: also return the embeddings and every layer's
                output (``num_hidden_layers + 1`` tensors, the last after the final norm).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        bias = attention_bias(
            attention_mask, self.config.num_attention_heads, hidden.shape[1], hidden.dtype, hidden.device
        )
        states = ()
        for layer in self.layers:
            if output_hidden_states:
                states += (hidden,)
            hidden = layer(hidden, bias)
        hidden = self.norm(hidden)
        states = states + (hidden,) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=states)


class BaichuanForCausalLM(BaichuanPreTrainedModel):
    """``BaichuanModel`` + ``lm_head``; next-token cross-entropy when ``labels`` are given."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # only with tie_word_embeddings

    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **loss_kwargs,
    ) -> CausalLMOutput:
        """Logits (B, T, vocab); ``labels`` (B, T, -100 = ignored) are shifted inside the loss."""
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
