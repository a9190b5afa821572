"""Training-time augmentation of model batches, applied in standardised feature space.

Two regularisers for small labeled sets, both off by default and chosen by
cross-validation (``train.modality_dropout``, ``train.feature_noise``):

* **modality dropout**: each present modality of a training sample is hidden
  (``present`` False, features zeroed) with probability ``p``, so no model can
  lean on one stream alone and a missing modality at test time looks like
  something seen in training (the first-place MER2024-SEMI recipe). A sample
  never loses every modality it has: one of them, drawn at random, stays.
* **feature noise**: Gaussian noise of standard deviation ``sigma`` added to
  every standardised ``vector`` and ``seq`` step (z-units, so one value suits
  every encoder).

Random draws come from torch's global generator, which the training loop seeds
per (seed, epoch), so a resumed run draws the same masks.
"""

from __future__ import annotations

import torch

from mer.config import role_of


def drop_modalities(batch: dict, p: float) -> dict:
    """Hide each present modality of each sample with probability ``p``, keeping at least one.

    A modality with several streams (``audio`` and ``audio:egemaps``) is hidden
    or kept as a whole: a lost microphone takes every audio feature set with it.
    """
    if p <= 0:
        return batch
    streams = sorted(batch)
    roles = sorted({role_of(s) for s in streams})
    column = {s: roles.index(role_of(s)) for s in streams}
    present = torch.zeros(len(batch[streams[0]]["present"]), len(roles), dtype=torch.bool,
                          device=batch[streams[0]]["present"].device)  # (B, M)
    for s in streams:
        present[:, column[s]] |= batch[s]["present"].bool()
    keep = present & (torch.rand(present.shape, device=present.device) >= p)
    lost = present.any(1) & ~keep.any(1)
    if lost.any():
        pick = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0).argmax(1)
        keep[lost, pick[lost]] = True
    out = {}
    for stream in streams:
        entry = dict(batch[stream])
        k = keep[:, column[stream]] & entry["present"].bool()
        entry["present"] = k
        entry["vector"] = entry["vector"] * k[:, None]
        if entry.get("seq") is not None:
            entry["seq"] = entry["seq"] * k[:, None, None]
            entry["seq_mask"] = entry["seq_mask"].bool() & k[:, None]
        out[stream] = entry
    return out


def add_noise(batch: dict, sigma: float) -> dict:
    """Add N(0, sigma^2) to every role's ``vector`` and ``seq``."""
    if sigma <= 0:
        return batch
    out = {}
    for role, entry in batch.items():
        entry = dict(entry)
        for kind in ("vector", "seq"):
            if entry.get(kind) is not None:
                entry[kind] = entry[kind] + sigma * torch.randn_like(entry[kind])
        out[role] = entry
    return out
