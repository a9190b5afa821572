"""Adaptive Multimodal Fusion (AMF): weight modalities by agreement with audio.

Paper (arXiv 2409.05007) specifies: the similarity between each audio-guided
stream and the audio stream decides the modality weights, so a modality that
disagrees with the audio is suppressed.

Our choices (config key ``train.amf_similarity``): ``cosine`` similarity times
a learned scale (initial 5, so the softmax is not flat at the start), or a
learned ``bilinear`` form ``g^T W a / sqrt(H)`` (W starts at the identity);
the audio stream itself takes part in the weighted sum with its own score
(``sim(a, a)``); absent modalities get weight 0 through a mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mer.config import ConfigError


class AMF(nn.Module):
    """Softmax over similarities to the audio stream, then a weighted sum.

    Args:
        hidden: width of the streams.
        similarity: ``cosine`` or ``bilinear``.
    """

    def __init__(self, hidden: int, similarity: str = "cosine"):
        super().__init__()
        if similarity not in ("cosine", "bilinear"):
            raise ConfigError(f"train.amf_similarity: expected cosine or bilinear, got {similarity!r}")
        self.similarity = similarity
        if similarity == "cosine":
            self.log_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        else:
            self.weight = nn.Parameter(torch.eye(hidden))

    def scores(self, streams: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Similarity of each stream (B, M, H) with the audio vector (B, H) -> (B, M)."""
        if self.similarity == "cosine":
            return F.cosine_similarity(streams, audio[:, None, :], dim=-1) * self.log_scale.exp()
        projected = audio @ self.weight.T
        return (streams * projected[:, None, :]).sum(-1) / math.sqrt(streams.shape[-1])

    def forward(
        self, streams: torch.Tensor, audio: torch.Tensor, present: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse the streams.

        Args:
            streams: (B, M, H) pooled streams (audio-guided ones and the audio one).
            audio: (B, H) pooled audio stream the others are compared with.
            present: (B, M) bool; a False stream gets weight 0. A row with no
                present stream gets uniform weights over zeroed streams.
            bias: (B, M) added to the scores (AGT's audio gate adds ``log r`` to the audio stream's).

        Returns:
            ``(fused (B, H), weights (B, M))``; weights sum to 1 over each row.
        """
        scores = self.scores(streams, audio)
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~present, float("-inf"))
        empty = ~present.any(dim=1, keepdim=True)
        scores = torch.where(empty, torch.zeros_like(scores), scores)
        weights = torch.softmax(scores, dim=1)
        fused = (weights.unsqueeze(-1) * streams).sum(1)
        return fused, weights
