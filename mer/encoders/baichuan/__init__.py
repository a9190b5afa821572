"""Native Baichuan-13B (v1) for transformers 5: config, model, tokenizer, and the Auto* registration.

The published hub code does not load under the pinned transformers (an import
check trips on ``transformers_stream_generator``; its tokenizer calls
``get_vocab()`` before ``sp_model`` exists). mer registers its own classes for
``model_type: baichuan`` and loads every Baichuan folder or hub name with them,
with ``trust_remote_code=False`` whatever the job says, so the hub's ``.py``
files never run. Module names are the hub's, so published weights load as they are.

Use :func:`remote_code` before any ``from_pretrained`` that takes
``trust_remote_code``, and :func:`load_tokenizer` for tokenizers.
"""

from __future__ import annotations

from mer.encoders.baichuan.configuration import BaichuanConfig
from mer.encoders.baichuan.modeling import BaichuanForCausalLM, BaichuanModel, alibi_slopes, attention_bias
from mer.encoders.baichuan.tokenization import BaichuanTokenizer

MODEL_TYPE = BaichuanConfig.model_type


def register() -> None:
    """Map ``model_type: baichuan`` to the native classes in transformers' Auto* registries (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    AutoConfig.register(MODEL_TYPE, BaichuanConfig, exist_ok=True)
    AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
    AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)
    AutoTokenizer.register(BaichuanConfig, tokenizer_class=BaichuanTokenizer, exist_ok=True)


def is_baichuan(model: str) -> bool:
    """Whether the ``config.json`` of a folder or (cached) hub name says ``model_type: baichuan``.

    Reads the JSON only: nothing from the folder runs. A model without a readable
    config is not Baichuan here; the caller's own load then reports what is missing.
    """
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(model)
    except OSError:
        return False
    return config.get("model_type") == MODEL_TYPE


def remote_code(model: str, trust_remote_code: bool) -> bool:
    """The ``trust_remote_code`` to load ``model`` with: False for Baichuan (native classes, registered here).

    transformers 5.24 already prefers registered config and model classes over a
    hub ``auto_map``, but not registered tokenizers; with False, no load path can
    reach the hub's code, whatever transformers' precedence rules become.
    """
    register()
    return False if is_baichuan(model) else trust_remote_code


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of ``model``: :class:`BaichuanTokenizer` for Baichuan, else ``AutoTokenizer``'s choice.

    Baichuan's tokenizer_config.json names the hub class in ``auto_map``; loading
    mer's class directly keeps that code from being picked, whatever ``trust_remote_code`` says.
    """
    from transformers import AutoTokenizer

    if is_baichuan(model):
        register()
        return BaichuanTokenizer.from_pretrained(model)
    return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)


__all__ = [
    "BaichuanConfig",
    "BaichuanForCausalLM",
    "BaichuanModel",
    "BaichuanTokenizer",
    "alibi_slopes",
    "attention_bias",
    "is_baichuan",
    "load_tokenizer",
    "register",
    "remote_code",
]
