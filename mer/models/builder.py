"""Build a fusion model by name from the job's train config."""

from __future__ import annotations

from torch import nn

from mer.config import ConfigError

from mer.models.agt import AGT
from mer.models.baselines import AttentionFusion, ConcatFusion, Unimodal
from mer.models.linear import LinearLateFusion
from mer.models.standardize import Standardized

MODELS = ("agt", "attention", "concat", "unimodal", "linear")


def check_model(name: str, streams, key: str, cfg) -> None:
    """ConfigError (naming ``key``) when ``name`` is no model, or the job's streams lack what it needs.

    Checked when a job is read, before any stage runs: a misspelt model fails
    in one line instead of after extraction.
    """
    if name not in MODELS:
        raise ConfigError(f"{key}: unknown model '{name}' (known: {', '.join(MODELS)})")
    if name == "agt" and "audio" not in streams:
        raise ConfigError(f"{key}: agt needs an audio encoder (encoders has: {', '.join(sorted(streams))})")
    if name == "unimodal" and cfg.unimodal_role not in streams:
        raise ConfigError(f"{key}: unimodal trains on train.unimodal_role '{cfg.unimodal_role}', which has no "
                          f"encoder (encoders has: {', '.join(sorted(streams))})")


def build_model(name: str, dims: dict[str, int], num_classes: int, cfg) -> Standardized:
    """Build ``name`` for the given role widths, behind a per-feature standardiser.

    The training loop fits the standardiser on the training rows
    (:meth:`Standardized.fit`); the fusion model itself is ``.model``.

    Args:
        name: one of :data:`MODELS`.
        dims: role -> feature width of the encoder the job names for it.
        num_classes: size of the label set.
        cfg: a :class:`mer.config.TrainConfig` (hidden, heads, depth, dropout,
            amf_similarity, use_seq, unimodal_role, linear_c, class_weighted,
            modality_dropout, feature_noise are read).

    Raises:
        ConfigError: unknown name, or roles the model needs are missing.
    """
    # The audio-only model has nothing to fall back on: hiding its one input is pure noise.
    dropout = 0.0 if name == "unimodal" else cfg.modality_dropout
    return Standardized(_fusion_model(name, dims, num_classes, cfg), dims,
                        modality_dropout=dropout, feature_noise=cfg.feature_noise)


def _fusion_model(name: str, dims: dict[str, int], num_classes: int, cfg) -> nn.Module:
    if name == "agt":
        return AGT(
            dims, num_classes, hidden=cfg.hidden, heads=cfg.heads, depth=cfg.depth,
            dropout=cfg.dropout, similarity=cfg.amf_similarity, use_seq=cfg.use_seq, linear_skip=cfg.linear_skip,
            audio_gate=cfg.audio_gate,
        )
    if name == "attention":
        return AttentionFusion(dims, num_classes, hidden=cfg.hidden, dropout=cfg.dropout)
    if name == "concat":
        return ConcatFusion(dims, num_classes, hidden=cfg.hidden, dropout=cfg.dropout)
    if name == "unimodal":
        return Unimodal(dims, num_classes, cfg.unimodal_role, hidden=cfg.hidden, dropout=cfg.dropout)
    if name == "linear":
        return LinearLateFusion(dims, num_classes, c=cfg.linear_c, class_weighted=cfg.class_weighted)
    raise ConfigError(f"train.model: unknown model '{name}' (known: {', '.join(MODELS)})")
