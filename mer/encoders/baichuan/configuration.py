"""``BaichuanConfig``: the shape of Baichuan-13B v1, read from the hub's ``config.json`` as is.

The keys are the hub's (``model_max_length`` instead of ``max_position_embeddings``:
ALiBi has no position table, the length is only the trained context). Two hub
keys are dropped on load because they would do harm under transformers 5:

* ``auto_map`` points at the hub's Python files; mer registers native classes
  for ``model_type: baichuan`` and never runs those files, and an export must not
  point at files it does not hold;
* ``gradient_checkpointing`` is stored as ``[false]`` in the published config: a
  non-empty list is truthy, and transformers would switch checkpointing on for
  every load. Checkpointing is a training setting
  (``model.gradient_checkpointing_enable()``, ``finetune.gradient_checkpointing``).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

#: Hub keys that are read and discarded (see the module docstring).
DROPPED_KEYS = ("auto_map", "gradient_checkpointing")


@strict
class BaichuanConfig(PreTrainedConfig):
    """Baichuan-13B v1 hyper-parameters; the defaults are the published 13B model's.

    Attributes:
        vocab_size: sentencepiece vocabulary (64000).
        hidden_size: model width (5120); ``num_attention_heads`` must divide it.
        intermediate_size: SiLU-gated MLP width (13696).
        num_hidden_layers: decoder layers (40).
        num_attention_heads: attention heads (40), one ALiBi slope each.
        hidden_act: MLP gate activation (``silu``).
        model_max_length: context the model was trained on (4096); longer inputs
            still run (ALiBi extrapolates) but were never trained on.
        initializer_range: std of the normal init of new Linear/Embedding weights.
        rms_norm_eps: epsilon of every RMSNorm.
        use_cache: kept for the hub key; the native model has no KV cache.
    """

    model_type = "baichuan"

    vocab_size: int = 64000
    hidden_size: int = 5120
    intermediate_size: int = 13696
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    hidden_act: str = "silu"
    model_max_length: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for key in DROPPED_KEYS:
            kwargs.pop(key, None)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: heads must split the width evenly."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
