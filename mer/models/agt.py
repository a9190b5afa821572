"""Audio-Guided Transformer (AGT): CBT per non-audio modality, AMF, classifier.

Paper (arXiv 2409.05007) specifies: audio guides the fusion; for the visual and
the textual modality a Context-Based Transformer takes the audio sequence as
query and the modality's sequence as keys/values; Adaptive Multimodal Fusion
weights the audio-guided streams by their similarity with the audio stream;
a classifier predicts the emotion.

Our choices: every role is projected to ``train.hidden`` (LayerNorm + Linear);
the audio stream is ``train.depth`` self-attention-only blocks over the audio
steps; streams are pooled by a masked mean over the audio steps; the audio
stream joins the AMF sum; a sample without audio uses a learned "missing
audio" query token and the audio stream is masked out of AMF, so the guided
streams degrade to learned-query attention pooling of the other modalities.

``train.audio_gate`` (our addition, off by default; the paper's AGT has no
such fallback and its authors name noisy audio as its weak point): a learned
audio-reliability score ``r = sigmoid(MLP([pooled audio, pooled other
modalities]))`` per sample. The guiding query becomes ``r * audio + (1 - r) *
missing-audio token`` and the audio stream's AMF score gets ``log r``, so at
``r -> 0`` the model is exactly its no-audio path (which modality dropout
trains). It learns when audio is unreliable from noisy training copies
(``train.audio_augment``) and from audio that disagrees with the other streams.

``train.linear_skip`` (our addition, off by default and chosen by
cross-validation like every recipe key) adds a linear late-fusion shortcut:
per present role a linear map of its standardised pooled vector is added to
the classifier's logits, so the transformer only has to learn what a linear
probe on the same features misses.
"""

from __future__ import annotations

import torch
from torch import nn

from mer.config import ConfigError

from mer.models.amf import AMF
from mer.models.cbt import CBT
from mer.models.common import InputProjection, classifier, masked_mean, tokens

GUIDE_ROLE = "audio"


class AGT(nn.Module):
    """Audio-Guided Transformer.

    Args:
        dims: role -> input feature width; must include ``audio``.
        num_classes: number of labels.
        hidden, heads, depth, dropout: transformer sizes.
        similarity: AMF similarity (``cosine`` or ``bilinear``).
        use_seq: attend over ``seq`` steps when the batch has them.
        linear_skip: add per-role linear logits of the pooled vectors (see the module docstring).
        audio_gate: a learned audio-reliability gate (see the module docstring).
    """

    def __init__(
        self,
        dims: dict[str, int],
        num_classes: int,
        hidden: int = 128,
        heads: int = 4,
        depth: int = 1,
        dropout: float = 0.2,
        similarity: str = "cosine",
        use_seq: bool = True,
        linear_skip: bool = False,
        audio_gate: bool = False,
    ):
        super().__init__()
        if GUIDE_ROLE not in dims:
            raise ConfigError(f"agt needs an '{GUIDE_ROLE}' encoder (job has: {', '.join(sorted(dims))})")
        self.use_seq = use_seq
        self.guided_roles = sorted(r for r in dims if r != GUIDE_ROLE)
        self.project = nn.ModuleDict({r: InputProjection(d, hidden, dropout) for r, d in dims.items()})
        self.missing_audio = nn.Parameter(torch.randn(hidden) * 0.02)
        self.audio_stream = CBT(hidden, heads, depth, dropout, cross=False)
        self.cbt = nn.ModuleDict({r: CBT(hidden, heads, depth, dropout) for r in self.guided_roles})
        self.amf = AMF(hidden, similarity)
        self.head = classifier(hidden, num_classes, dropout)
        self.skip = nn.ModuleDict({r: nn.Linear(d, num_classes) for r, d in dims.items()}) if linear_skip else None
        self.gate = None
        if audio_gate:
            self.gate = nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
            nn.init.constant_(self.gate[-1].bias, 3.0)  # starts trusting audio (r ~ 0.95)

    def _audio_query(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, mask = tokens(batch[GUIDE_ROLE], self.use_seq)
        q = self.project[GUIDE_ROLE](x)
        present = batch[GUIDE_ROLE]["present"].bool()
        if not present.all():
            absent = ~present
            q = q.clone()
            q[absent] = self.missing_audio.to(q.dtype)
            mask = mask.clone()
            mask[absent] = False
            mask[absent, 0] = True
        return q, mask, present

    def reliability(self, query: torch.Tensor, query_mask: torch.Tensor, audio_present: torch.Tensor,
                    contexts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The gate's audio-reliability score per sample (B,), 0 where audio is absent."""
        pooled = [masked_mean(x, m) * p[:, None] for x, m, p in contexts]
        count = torch.stack([p for _, _, p in contexts], 1).sum(1, keepdim=True).clamp_min(1) if contexts else 1
        others = torch.stack(pooled, 0).sum(0) / count if pooled else torch.zeros_like(query[:, 0])
        r = torch.sigmoid(self.gate(torch.cat([masked_mean(query, query_mask), others], -1))).squeeze(-1)
        return r * audio_present

    def _context(self, batch: dict, role: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A guided role's projected steps, their mask and its presence (B,)."""
        x, mask = tokens(batch[role], self.use_seq)
        return self.project[role](x), mask, batch[role]["present"].float()

    def fusion(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused vector (B, H) and AMF weights (B, M) ordered audio, then guided roles."""
        query, query_mask, audio_present = self._audio_query(batch)
        contexts, bias = {}, None
        if self.gate is not None:  # the gate reads every role first; without it the paper's order is kept
            contexts = {role: self._context(batch, role) for role in self.guided_roles}
            r = self.reliability(query, query_mask, audio_present.to(query.dtype), list(contexts.values()))
            query = r[:, None, None] * query + (1 - r)[:, None, None] * self.missing_audio.to(query.dtype)
            bias = torch.zeros(len(r), 1 + len(contexts), dtype=query.dtype, device=query.device)
            bias[:, 0] = torch.log(r.clamp_min(1e-6))
        audio = masked_mean(self.audio_stream(query, query_mask), query_mask)
        streams, present = [audio], [audio_present]
        for role in self.guided_roles:
            context, mask, _ = contexts.get(role) or self._context(batch, role)
            guided = self.cbt[role](query, query_mask, context, mask)
            streams.append(masked_mean(guided, query_mask))
            present.append(batch[role]["present"].bool())
        return self.amf(torch.stack(streams, 1), audio, torch.stack(present, 1), bias)

    def forward(self, batch: dict) -> torch.Tensor:
        fused, _ = self.fusion(batch)
        logits = self.head(fused)
        if self.skip is not None:
            for role, linear in self.skip.items():
                present = batch[role]["present"].to(logits.dtype).unsqueeze(-1)
                logits = logits + present * linear(batch[role]["vector"].float())
        return logits

    @torch.no_grad()
    def modality_weights(self, batch: dict) -> dict[str, torch.Tensor]:
        """AMF weight of each role per sample, role -> (B,): how much each modality counted.

        The weights of a sample sum to 1; an absent modality has 0. Reported by
        ``mer predict --run`` and ``mer serve`` beside the probabilities.
        """
        _, weights = self.fusion(batch)
        return dict(zip([GUIDE_ROLE, *self.guided_roles], weights.unbind(1)))
