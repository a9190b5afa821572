"""Build a fusion model by name from the job's train config."""

from __future__ import annotations

from torch import nn

from mer.config import ConfigError

from mer.models.agt import AGT
from mer.models.baselines import AttentionFusion, ConcatFusion, Unimodal
from mer.models.standardize import Standardized

MODELS = ("agt", "attention", "concat", "unimodal")


def build_model(name: str, dims: dict[str, int], num_classes: int, cfg) -> Standardized:
    """Build ``name`` for the given role widths, behind a per-feature standardiser.

    The training loop fits the standardiser on the training rows
    (:meth:`Standardized.fit`); the fusion model itself is ``.model``.

    Args:
        name: one of :data:`MODELS`.
        dims: role -> feature width of the encoder the job names for it.
        num_classes: size of the label set.
        cfg: a :class:`mer.config.TrainConfig` (hidden, heads, depth, dropout,
            amf_similarity, use_seq, unimodal_role are read).

    Raises:
        ConfigError: unknown name, or roles the model needs are missing.
    """
    return Standardized(_fusion_model(name, dims, num_classes, cfg), dims)


def _fusion_model(name: str, dims: dict[str, int], num_classes: int, cfg) -> nn.Module:
    if name == "agt":
        return AGT(
            dims, num_classes, hidden=cfg.hidden, heads=cfg.heads, depth=cfg.depth,
            dropout=cfg.dropout, similarity=cfg.amf_similarity, use_seq=cfg.use_seq,
        )
    if name == "attention":
        return AttentionFusion(dims, num_classes, hidden=cfg.hidden, dropout=cfg.dropout)
    if name == "concat":
        return ConcatFusion(dims, num_classes, hidden=cfg.hidden, dropout=cfg.dropout)
    if name == "unimodal":
        return Unimodal(dims, num_classes, cfg.unimodal_role, hidden=cfg.hidden, dropout=cfg.dropout)
    raise ConfigError(f"train.model: unknown model '{name}' (known: {', '.join(MODELS)})")
