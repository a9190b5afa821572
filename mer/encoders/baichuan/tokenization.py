"""``BaichuanTokenizer``: Baichuan's sentencepiece ``tokenizer.model``, as a transformers slow tokenizer.

Ids are exactly sentencepiece's (``sp.encode(text)``, its own normalisation
included: NFKC folding, whitespace rules, byte fallback, whatever the model file
says), preceded by ``<s>`` when ``add_bos_token`` (default, as the hub's
tokenizer_config.json) and followed by ``</s>`` when ``add_eos_token`` (off).
Special-token strings typed in the text (``"<s>"``) become their ids, as with any
transformers tokenizer.

Built on transformers' ``SentencePieceBackend`` (a ``PreTrainedTokenizer``), which
loads the processor before the base ``__init__`` runs: the hub's tokenizer asks
for the vocabulary during that ``__init__``, before its ``sp_model`` exists,
and fails under transformers 5.
Transformers 5 does not write ``add_bos_token`` / ``add_eos_token`` to a saved
tokenizer_config.json, so a non-default setting must be passed again on load.
"""

from __future__ import annotations

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

#: (add_bos_token, add_eos_token) -> transformers' name for where special tokens go.
_SPECIAL_TOKENS_PATTERN = {(True, False): "bos", (False, True): "eos", (True, True): "bos_eos", (False, False): "none"}


class BaichuanTokenizer(SentencePieceBackend):
    """Slow sentencepiece tokenizer reading ``tokenizer.model`` (the hub folder's, unchanged).

    Args:
        vocab_file: path of the sentencepiece model.
        add_bos_token: put ``bos_token`` before every sequence.
        add_eos_token: put ``eos_token`` after every sequence.
        pad_token: None as in the hub class (mer's loaders then pad with eos/unk);
            the published tokenizer_config.json sets ``<unk>``.
        sp_model_kwargs: passed to ``SentencePieceProcessor`` (e.g. sampling).
        **kwargs: the usual tokenizer settings (``padding_side``, ``model_max_length``...).
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        sp_model_kwargs: dict | None = None,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        kwargs.pop("auto_map", None)  # names the hub's class; a saved copy must point at no code
        super().__init__(
            vocab_file=vocab_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            sp_model_kwargs=sp_model_kwargs or {},
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            special_tokens_pattern=_SPECIAL_TOKENS_PATTERN[(bool(add_bos_token), bool(add_eos_token))],
            **kwargs,
        )

    @property
    def add_bos_token(self) -> bool:
        """Whether ``bos_token`` starts every sequence (settable)."""
        return self.special_tokens_pattern in ("bos", "bos_eos")

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self.special_tokens_pattern = _SPECIAL_TOKENS_PATTERN[(bool(value), self.add_eos_token)]

    @property
    def add_eos_token(self) -> bool:
        """Whether ``eos_token`` ends every sequence (settable)."""
        return self.special_tokens_pattern in ("eos", "bos_eos")

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self.special_tokens_pattern = _SPECIAL_TOKENS_PATTERN[(self.add_bos_token, bool(value))]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Pieces -> text with sentencepiece's own decoder (byte fallback, ``▁`` spaces); special tokens verbatim."""
        special = set(self.all_special_tokens)
        text, run = [], []
        for token in tokens:
            if token in special:
                text += [self.sp_model.decode(run), token]
                run = []
            else:
                run.append(token)
        return "".join(text) + self.sp_model.decode(run)
