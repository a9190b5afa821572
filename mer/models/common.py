"""Small pieces shared by the fusion models: input projection and masks."""

from __future__ import annotations

import torch
from torch import nn


class InputProjection(nn.Module):
    """LayerNorm then Linear: brings one encoder's features to the model width.

    The LayerNorm is our choice (the paper is silent): pooled features from
    different encoders live on very different scales, and a per-sample norm
    needs no statistics from the training set, so the numpy and the streaming
    read paths feed the model exactly the same thing.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.norm(x)))


def tokens(inputs: dict, use_seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A role's time steps and their validity mask.

    Args:
        inputs: one role's batch entry (``vector``, optional ``seq``/``seq_mask``, ``present``).
        use_seq: use ``seq`` when the batch has it; otherwise the pooled
            ``vector`` becomes a length-1 sequence.

    Returns:
        ``(x, mask)``: ``x`` (B, L, D) and ``mask`` (B, L) bool, where a row of
        an absent modality is all False.
    """
    present = inputs["present"].bool()
    if use_seq and inputs.get("seq") is not None:
        x = inputs["seq"].float()
        mask = inputs["seq_mask"].bool() & present[:, None]
    else:
        x = inputs["vector"].float()[:, None, :]
        mask = present[:, None]
    return x, mask


def safe_key_padding(mask: torch.Tensor) -> torch.Tensor:
    """``key_padding_mask`` for attention that never masks a whole row.

    A row with no valid key (absent modality) would give NaN from softmax; we
    let it attend to position 0 and the caller drops that row's output with
    the presence mask.
    """
    padding = ~mask
    empty = ~mask.any(dim=1)
    if empty.any():
        padding = padding.clone()
        padding[empty, 0] = False
    return padding


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, L, H) over valid steps of ``mask`` (B, L); zeros where none."""
    weights = mask.float().unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def classifier(hidden: int, num_classes: int, dropout: float) -> nn.Module:
    """Head over a fused vector (our choice: one hidden layer, GELU)."""
    return nn.Sequential(
        nn.LayerNorm(hidden),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
