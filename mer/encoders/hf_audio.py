"""``hf_audio``: a Hugging Face self-supervised speech model (HuBERT, wav2vec2, WavLM, data2vec).

Paper: HuBERT-large features (used as is, not fine-tuned). Default weights
``facebook/hubert-large-ls960-ft``; any model ``AutoModel`` loads with a
``Wav2Vec2FeatureExtractor``-style processor works by setting ``model``.

Our choices where the paper is silent (config keys in brackets):
* hidden states: mean of ``layers`` (default last 4, as MERTools sums them);
* long audio: cut into equal chunks of at most ``max_seconds`` (MERTools: 10 s),
  each encoded, their valid frames concatenated (at most ``MAX_CHUNKS`` chunks);
* pooling: mean over frames -> ``vector``; ``seq_len`` segment means -> ``seq``.
"""

from __future__ import annotations

import math

import numpy as np

from mer.corpus.media import load_audio
from mer.encoders.base import Encoder, quiet_transformers, audio_path, mean_of_layers, torch_dtype

SAMPLE_RATE = 16000
#: Upper bound on chunks per clip, so one very long file cannot exhaust memory.
MAX_CHUNKS = 20
#: A padded forward pass holds clips within this fraction of each other's length.
PAD_TOLERANCE = 0.1
#: Shortest input the convolutional front end accepts comfortably (0.1 s, zero padded).
MIN_SAMPLES = 1600


class HFAudioEncoder(Encoder):
    """Speech SSL model -> frame features -> pooled vector and segment sequence."""

    alias = "hf_audio"
    role = "audio"
    default_model = "facebook/hubert-large-ls960-ft"
    spec_fields = ("layers", "seq_len", "seq_dtype", "max_seconds", "dtype")

    def __init__(self, spec, device="cpu"):
        super().__init__(spec, device)
        self.model = self.processor = None

    @property
    def dim(self) -> int:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.model_name).hidden_size)

    def prepare(self, row: dict) -> np.ndarray:
        """16 kHz mono waveform, at most ``MAX_CHUNKS * max_seconds`` long."""
        return load_audio(audio_path(row), sr=SAMPLE_RATE, max_seconds=MAX_CHUNKS * self.spec.max_seconds)

    def load(self) -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        quiet_transformers()

        self.processor = AutoFeatureExtractor.from_pretrained(self.model_name)
        self.model = AutoModel.from_pretrained(self.model_name, dtype=torch_dtype(self.spec.dtype, self.device))
        self.model.to(self.device).eval()

    def _chunks(self, wave: np.ndarray) -> list[np.ndarray]:
        """Equal pieces no longer than ``max_seconds`` (no tiny tail chunk)."""
        if wave.size < MIN_SAMPLES:
            wave = np.pad(wave, (0, MIN_SAMPLES - wave.size))
        n = max(1, math.ceil(wave.size / (self.spec.max_seconds * SAMPLE_RATE)))
        return np.array_split(wave, n)

    def _encode(self, batch: list[np.ndarray]):
        import torch

        chunks, owner = [], []
        for i, wave in enumerate(batch):
            for piece in self._chunks(wave):
                chunks.append(piece)
                owner.append(i)
        lengths = [len(c) for c in chunks]
        valid = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        pieces: list[np.ndarray | None] = [None] * len(chunks)
        for group in length_groups(lengths, PAD_TOLERANCE):
            frames = self._forward([chunks[j] for j in group])
            for row, j in enumerate(group):
                pieces[j] = frames[row, : max(1, int(valid[j]))]
        per_sample: list[list[np.ndarray]] = [[] for _ in batch]
        for j, i in enumerate(owner):
            per_sample[i].append(pieces[j])
        return [self.finish(np.concatenate(parts)) for parts in per_sample]

    def _forward(self, chunks: list[np.ndarray]) -> np.ndarray:
        """Hidden-state frames (chunks, T, D) of one padded forward pass."""
        import torch

        # The processor pads and returns an attention mask only for models trained
        # with one (its config decides); frames past each chunk's length are dropped by the caller.
        inputs = self.processor(chunks, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "input_values" in inputs:
            inputs["input_values"] = inputs["input_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=True)
        return mean_of_layers(out.hidden_states, self.spec.layers).cpu().numpy()


def length_groups(lengths: list[int], tolerance: float) -> list[list[int]]:
    """Indices grouped by similar length: sorted, a group's longest <= (1 + tolerance) x its shortest.

    A padded batch computes every clip at the longest clip's length. Clips of
    1.5-3 s batched together wasted more than batching saved on CPU
    (benchmarks/extract.py: batch 8 padded 13.1 clips/s vs one clip at a time
    16.9); grouping similar lengths keeps the batching and drops most padding.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for j in order:
        if groups and lengths[j] <= (1 + tolerance) * lengths[groups[-1][0]]:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups
