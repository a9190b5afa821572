"""Fusion models over cached embeddings (plain torch, no Ray).

Every model is built by name with :func:`build_model` and takes the same batch:
``{role: {"vector": (B,D), "seq": (B,L,D), "seq_mask": (B,L), "present": (B,)}}``
and returns logits ``(B, C)``.
"""

from mer.models.builder import MODELS, build_model, check_model

__all__ = ["MODELS", "build_model", "check_model"]
