"""Context-Based Transformer (CBT) block: audio context guides another modality.

Paper (arXiv 2409.05007) specifies: the audio sequence is the query, the other
modality's temporal sequence gives keys and values (cross-attention), with
self-attention over the audio context, residual connections, layer norm and a
feed-forward layer; blocks are stacked.

Our choices (config keys in ``train``): width ``hidden``, ``heads``, ``depth``
(number of stacked blocks), ``dropout``; post-norm residuals as in the original
Transformer; FFN width 4x with GELU; no positional encoding (pooled encoders
and short ``seq`` windows; order is already in the encoder features).
"""

from __future__ import annotations

import torch
from torch import nn

from mer.models.common import safe_key_padding


class CBTBlock(nn.Module):
    """Self-attention over the query stream, cross-attention to a context, FFN.

    Args:
        hidden: model width.
        heads: attention heads.
        dropout: dropout on attention weights and residual branches.
        cross: with a cross-attention sublayer (False: plain self-attention block).
    """

    def __init__(self, hidden: int, heads: int, dropout: float, cross: bool = True):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True) if cross else None
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden, hidden)
        )
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden) if cross else None
        self.norm3 = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        query_mask: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Guide ``query`` (B, Lq, H) by ``context`` (B, Lk, H).

        Args:
            query: audio (or already audio-guided) stream.
            query_mask: (B, Lq) bool, True = valid step.
            context: the other modality's steps (ignored without cross-attention).
            context_mask: (B, Lk) bool, True = valid step.

        Returns:
            (B, Lq, H) guided stream, same mask as the query.
        """
        q_pad = safe_key_padding(query_mask)
        attended, _ = self.self_attn(query, query, query, key_padding_mask=q_pad, need_weights=False)
        x = self.norm1(query + self.drop(attended))
        if self.cross_attn is not None and context is not None:
            k_pad = safe_key_padding(context_mask)
            attended, _ = self.cross_attn(x, context, context, key_padding_mask=k_pad, need_weights=False)
            x = self.norm2(x + self.drop(attended))
        return self.norm3(x + self.drop(self.ffn(x)))


class CBT(nn.Module):
    """``depth`` stacked :class:`CBTBlock` s guiding one modality by audio."""

    def __init__(self, hidden: int, heads: int, depth: int, dropout: float, cross: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(CBTBlock(hidden, heads, dropout, cross) for _ in range(max(1, depth)))

    def forward(self, query, query_mask, context=None, context_mask=None) -> torch.Tensor:
        x = query
        for block in self.blocks:
            x = block(x, query_mask, context, context_mask)
        return x
