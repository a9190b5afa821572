"""Baselines on pooled vectors: MERTools' attention fusion, concat, unimodal.

All three read each role's pooled ``vector`` (MERTools' utterance-level
setting); an absent modality enters as zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from mer.config import ConfigError

from mer.models.common import InputProjection, classifier


class MLPEncoder(nn.Module):
    """MERTools' per-modality encoder: dropout, then three Linear layers, with GELU where MERTools has ReLU.

    We add a LayerNorm on the input (see :class:`InputProjection`). GELU is our
    change, for stability: a ReLU unit dead on every sample of a batch has a
    gradient of exactly 0, and the same unit barely alive on features moved by
    a relative 1e-6 (another processor's summation order) has a tiny one, which
    AdamW scales up to a step of about ``lr``; with ReLU such a fit ended 4e-3
    away in probability and flipped the self-training vote, with GELU 5e-7
    (docs/results.md, "Stability").
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            InputProjection(in_dim, hidden, dropout),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _vectors(batch: dict, roles: list[str], encoders: nn.ModuleDict) -> list[torch.Tensor]:
    """Encoded vector per role, zeroed where the modality is absent."""
    out = []
    for role in roles:
        present = batch[role]["present"].float()[:, None]
        out.append(encoders[role](batch[role]["vector"].float()) * present)
    return out


class AttentionFusion(nn.Module):
    """MERTools (MER2024 ``toolkit/models/attention.py``) attention fusion.

    Per-modality MLP encoders -> concatenate -> MLP -> one weight per modality
    -> weighted sum of the modality vectors -> linear classifier. As in
    MERTools, the weights are the raw output of a linear layer (no softmax).
    """

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.roles = sorted(dims)
        self.encoders = nn.ModuleDict({r: MLPEncoder(dims[r], hidden, dropout) for r in self.roles})
        self.attention_mlp = MLPEncoder(hidden * len(self.roles), hidden, dropout)
        self.fc_att = nn.Linear(hidden, len(self.roles))
        self.fc_out = nn.Linear(hidden, num_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = _vectors(batch, self.roles, self.encoders)
        attention = self.fc_att(self.attention_mlp(torch.cat(hidden, dim=1)))  # (B, M)
        fused = (torch.stack(hidden, dim=1) * attention.unsqueeze(-1)).sum(1)
        return self.fc_out(fused)


class ConcatFusion(nn.Module):
    """Concatenate the projected modality vectors, then an MLP classifier."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.roles = sorted(dims)
        self.encoders = nn.ModuleDict({r: InputProjection(dims[r], hidden, dropout) for r in self.roles})
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden * len(self.roles), hidden))
        self.head = classifier(hidden, num_classes, dropout)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.mlp(torch.cat(_vectors(batch, self.roles, self.encoders), dim=1)))


class Unimodal(nn.Module):
    """MLP on one role's vector (the audio model in the self-training vote)."""

    def __init__(self, dims: dict[str, int], num_classes: int, role: str, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        if role not in dims:
            raise ConfigError(f"train.unimodal_role '{role}' is not an encoder of the job ({', '.join(sorted(dims))})")
        self.role = role
        self.encoder = MLPEncoder(dims[role], hidden, dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.encoder(batch[self.role]["vector"].float()))
