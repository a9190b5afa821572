"""``hf_text``: hidden states of a causal LM or text encoder, mean-pooled over tokens.

Paper: Baichuan-13B (fine-tuned on the labeled set by ``mer.finetune``). Default
weights ``baichuan-inc/Baichuan-13B-Base``, loaded with mer's native classes
(``mer.encoders.baichuan``): the hub's code never runs for a ``model_type: baichuan``
config, whatever ``trust_remote_code`` says; other hub-code models still need it.

Our choices where the paper is silent:
* mean of ``layers`` hidden states (default last 4, as MERTools sums them),
  averaged over real tokens (attention mask), transcript cut at ``MAX_TOKENS``
  or the model's own position limit, whichever is smaller; a Chinese transcript
  is tokenised by the model's own tokenizer (Baichuan's sentencepiece, a BERT
  character vocabulary...), nothing in mer assumes spaces between words;
* ``seq``: ``seq_len`` segment means over the tokens;
* ``dtype: auto`` = bf16 (fp16 without bf16) on GPU, fp32 on CPU.
"""

from __future__ import annotations

from mer.encoders.base import Encoder, quiet_transformers, mean_of_layers, row_text, torch_dtype

MAX_TOKENS = 512


class HFTextEncoder(Encoder):
    """Language model -> token states (chosen layers) -> pooled vector and token segments."""

    alias = "hf_text"
    role = "text"
    default_model = "baichuan-inc/Baichuan-13B-Base"
    spec_fields = ("layers", "seq_len", "seq_dtype", "dtype")

    def __init__(self, spec, device="cpu"):
        super().__init__(spec, device)
        self.layers = list(spec.layers)
        self.model = self.tokenizer = None
        self.max_tokens = MAX_TOKENS

    def _remote_code(self) -> bool:
        from mer.encoders.baichuan import remote_code

        return remote_code(self.model_name, self.spec.trust_remote_code)

    def _config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model_name, trust_remote_code=self._remote_code())

    @property
    def dim(self) -> int:
        return int(self._config().hidden_size)

    def prepare(self, row: dict) -> str:
        return row_text(row)

    def load(self) -> None:
        from transformers import AutoModel, AutoModelForCausalLM

        from mer.encoders.baichuan import load_tokenizer

        quiet_transformers()

        remote = self._remote_code()
        config = self._config()
        # Hub-code models often register only AutoModelForCausalLM (native Baichuan has AutoModel too).
        auto_map = getattr(config, "auto_map", None) or {}
        cls = AutoModelForCausalLM if auto_map and "AutoModel" not in auto_map else AutoModel
        self.tokenizer = load_tokenizer(self.model_name, trust_remote_code=remote)
        if self.tokenizer.pad_token is None:  # causal LM tokenizers often have none
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = cls.from_pretrained(
            self.model_name, trust_remote_code=remote, dtype=torch_dtype(self.spec.dtype, self.device)
        )
        self.model.to(self.device).eval()
        # A transcript is cut to what the model can attend over (a small encoder's position table, or MAX_TOKENS).
        limits = [MAX_TOKENS, getattr(config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        self.max_tokens = min(int(v) for v in limits if isinstance(v, int) and v > 0)

    def token_states(self, texts: list[str]):
        """(B, T, D) float32 mean of the chosen layers, and the (B, T) attention mask."""
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            out = self.model(**enc, output_hidden_states=True)
        return mean_of_layers(out.hidden_states, self.layers), enc["attention_mask"]

    def _encode(self, batch: list[str]):
        states, mask = self.token_states(batch)
        states, mask = states.cpu().numpy(), mask.bool().cpu().numpy()
        return [self.finish(states[i][mask[i]]) for i in range(len(batch))]
