"""Per-feature z-scoring with training-set statistics, stored with the weights.

Cached embeddings come on very different per-feature scales (logmel mixes
log energies, standard deviations and pitch in Hz; LLM hidden states have a few
huge outlier dimensions). A per-sample LayerNorm cannot fix a per-feature scale,
and an audio-only MLP on raw logmel stayed at chance. MERTools normalises
features too; the paper is silent. The statistics are buffers, so they travel
in ``model.safetensors`` and prediction needs nothing else.

A feature that is constant up to float noise (a log energy of silence, a
padding value) scales to exactly 0, on every machine: a spread below
``RELATIVE_FLOOR`` times its mean (or below ``eps``) gets an infinite scale.
The same column moved by a relative 1e-6 (another processor's summation
order) must give the same input as the unmoved one, bit for bit: with only an
absolute floor it scaled to N(0, 1) noise and flipped test predictions of the
linear floor; floored at 1e-4 of the mean it scaled to N(0, 0.01), and AdamW,
which turns any non-zero gradient into a step of about ``lr``, moved that
column's first-layer weights by 4e-3 in one epoch where the unmoved column's
gradient was exactly 0 (docs/results.md, "Stability").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mer.models.augment import add_noise, drop_modalities

#: A feature whose spread is below this fraction of its mean is constant: it scales to 0 (module docstring).
RELATIVE_FLOOR = 1e-4


class Standardized(nn.Module):
    """Wrap a fusion model: ``x -> (x - mean) / std`` per role before ``model``.

    ``vector`` and ``seq`` get their own statistics (pooled and per-step
    features differ in spread). Until :meth:`fit` runs, mean 0 and std 1 leave
    inputs unchanged. In training mode the standardised batch is augmented
    (:mod:`mer.models.augment`: ``modality_dropout``, ``feature_noise``); in
    eval mode never.
    """

    def __init__(self, model: nn.Module, dims: dict[str, int], modality_dropout: float = 0.0,
                 feature_noise: float = 0.0):
        super().__init__()
        self.model = model
        self.roles = sorted(dims)
        self.modality_dropout = modality_dropout
        self.feature_noise = feature_noise
        for role, dim in dims.items():
            for kind in ("vector", "seq"):
                self.register_buffer(f"{kind}_mean_{role}", torch.zeros(dim))
                self.register_buffer(f"{kind}_std_{role}", torch.ones(dim))

    @torch.no_grad()
    def fit(self, batches: Iterable[dict], eps: float = 1e-6) -> None:
        """Set the statistics from model-input batches (present samples, valid steps only)."""
        sums: dict[tuple[str, str], list] = {}
        for batch in batches:
            for role in self.roles:
                entry = batch[role]
                present = entry["present"].bool()
                values = {"vector": entry["vector"][present].double()}
                if entry.get("seq") is not None:
                    values["seq"] = entry["seq"][entry["seq_mask"].bool() & present[:, None]].double()
                for kind, x in values.items():
                    acc = sums.setdefault((role, kind), [0, 0.0, 0.0])
                    acc[0] += len(x)
                    acc[1] = acc[1] + x.sum(0)
                    acc[2] = acc[2] + (x * x).sum(0)
        for (role, kind), (n, s, ss) in sums.items():
            if n < 2:
                continue
            mean = s / n
            std = ((ss / n - mean * mean).clamp(min=0)).sqrt()
            getattr(self, f"{kind}_mean_{role}").copy_(mean.float())
            constant = std < (RELATIVE_FLOOR * mean.abs()).clamp(min=eps)
            getattr(self, f"{kind}_std_{role}").copy_(torch.where(constant, torch.inf, std).float())

    def scale(self, batch: dict) -> dict:
        """The batch with every role's features standardised; an absent modality is 0 (as modality dropout makes it)."""
        out = {}
        for role, entry in batch.items():
            entry = dict(entry)
            present = entry["present"].bool()
            for kind in ("vector", "seq"):
                if entry.get(kind) is not None and hasattr(self, f"{kind}_mean_{role}"):
                    mean, std = getattr(self, f"{kind}_mean_{role}"), getattr(self, f"{kind}_std_{role}")
                    scaled = (entry[kind].float() - mean) / std
                    keep = present.view(-1, *[1] * (scaled.dim() - 1))
                    entry[kind] = torch.where(keep, scaled, torch.zeros_like(scaled))
            out[role] = entry
        return out

    def forward(self, batch: dict) -> torch.Tensor:
        batch = self.scale(batch)
        if self.training:
            batch = add_noise(drop_modalities(batch, self.modality_dropout), self.feature_noise)
        return self.model(batch)
