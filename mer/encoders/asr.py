"""Speech recognisers: a clip's audio in, its transcript out, with the recogniser's own confidence.

Two engines behind one interface (:class:`Transcriber`), which the extraction
machinery drives like an encoder (``prepare`` on CPUs, ``encode`` batched on the
GPU its actor holds):

* ``whisper``: any Hugging Face Whisper folder or hub name through transformers
  (``WhisperForConditionalGeneration``). A clip is cut into ``chunk_seconds``
  windows (Whisper sees 30 s at a time), windows are generated in batches; the
  language is fixed (``language``) or detected from each clip's first window.
  Per window: ``avg_logprob`` (mean log-probability of the generated tokens)
  and ``no_speech_prob`` (the probability of Whisper's no-speech token right
  after ``<|startoftranscript|>``, one extra forward pass). Whisper's own rule
  turns a window that is probably not speech (no-speech probability above
  ``no_speech_threshold`` and average log-probability below
  ``logprob_threshold``) into empty text: music, silence or a language the
  model cannot follow give an empty transcript with its no-speech
  probability, not a failure.
* ``pocketsphinx``: CMU PocketSphinx with the US-English model its wheel
  ships (CPU, no download). Its ``no_speech_prob`` is the share of 30 ms
  frames its voice activity detector calls non-speech; a clip with no speech
  frame at all is not decoded (the decoder makes words of noise) and gets an
  empty transcript. Its ``avg_logprob`` is the hypothesis' log-probability per word.

A transcriber's version hashes its engine, weights, language and decoding
settings: the ``transcripts__<engine>__<version8>`` table of the store and the
text features made from it carry it. No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mer.config import AsrSpec
from mer.corpus.media import load_audio
from mer.encoders.base import EncoderConfigError, audio_path, quiet_transformers, torch_dtype
from mer.encoders.versions import DEFAULT_WHISPER, asr_version, source_label

SAMPLE_RATE = 16000
#: Languages written without spaces between words: their windows join without one.
NO_SPACES = ("zh", "ja", "ko", "th", "yue")


@dataclass
class Transcript:
    """One clip's transcript: text (empty when no speech was found), language, and the recogniser's confidence."""

    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float


class Transcriber:
    """A speech recogniser with the interface the extraction machinery drives (``decode`` / ``encode``)."""

    engine: ClassVar[str] = ""
    role = "audio"  # what it reads

    def __init__(self, spec: AsrSpec, device: str = "cpu"):
        self.spec, self.device = spec, device
        self.alias = f"asr-{self.engine}"
        self.version = asr_version(spec)
        self._loaded = False

    def prepare(self, row: dict) -> np.ndarray:
        """The clip's audio as 16 kHz mono float32 (its audio file, else its video's track)."""
        return load_audio(audio_path(row), sr=SAMPLE_RATE)

    decode = prepare  # no corruption: a transcript is of the clip as recorded

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def load(self) -> None:
        raise NotImplementedError

    def encode(self, waves: list[np.ndarray]) -> list[Transcript]:
        """Transcripts of prepared clips, in order."""
        self.ensure_loaded()
        return self._transcribe(waves)

    def _transcribe(self, waves: list[np.ndarray]) -> list[Transcript]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How a transcript's source is named in outputs: ``asr:<engine>:<model>@<version8>``."""
        return source_label(self.spec, self.version)


class WhisperTranscriber(Transcriber):
    """Whisper through transformers: windows of ``chunk_seconds``, batched generation, per-window confidence."""

    engine = "whisper"

    def load(self) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        quiet_transformers()
        name = self.spec.model or DEFAULT_WHISPER
        self.processor = WhisperProcessor.from_pretrained(name)
        self.model = WhisperForConditionalGeneration.from_pretrained(name, dtype=torch_dtype(self.spec.dtype, self.device))
        self.model.to(self.device).eval()
        config = self.model.generation_config
        self.language_of = {token_id: token.strip("<|>") for token, token_id in (config.lang_to_id or {}).items()}
        self.no_speech_id = config.no_timestamps_token_id - 1  # transformers' own convention for Whisper
        self.sot = config.decoder_start_token_id

    def _windows(self, waves: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
        size = int(self.spec.chunk_seconds * SAMPLE_RATE)
        return [(i, wave[start:start + size]) for i, wave in enumerate(waves)
                for start in range(0, max(len(wave), 1), size)]

    def _window_batch(self, audio: list[np.ndarray]) -> list[tuple[str, str, float, float]]:
        """``(text, language, avg_logprob, no_speech_prob)`` of each window of one batch."""
        import torch

        features = self.processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        features = features.to(self.device, self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(features, language=self.spec.language or None, task="transcribe",
                                      return_dict_in_generate=True, output_scores=True,
                                      max_new_tokens=self.spec.max_new_tokens)
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).float()
            first = self.model(input_features=features, decoder_input_ids=torch.full((len(audio), 1), self.sot,
                                                                                     device=self.device)).logits
            no_speech = first[:, 0].float().softmax(-1)[:, self.no_speech_id].cpu().numpy()
        texts = self.processor.batch_decode(out.sequences, skip_special_tokens=True)
        generated = out.sequences[:, -scores.shape[1]:].cpu()
        eot = self.model.generation_config.eos_token_id
        results = []
        for k in range(len(audio)):
            keep = torch.ones(scores.shape[1], dtype=torch.bool)
            hit = (generated[k] == eot).nonzero()
            if len(hit):
                keep[hit[0, 0] + 1:] = False  # padding after the first end of text
            keep &= torch.isfinite(scores[k].cpu())
            logprob = float(scores[k].cpu()[keep].mean()) if keep.any() else float("-inf")
            language = self.spec.language or self.language_of.get(int(out.sequences[k, 1]), "")
            silent = no_speech[k] > self.spec.no_speech_threshold and logprob < self.spec.logprob_threshold
            results.append(("" if silent else texts[k].strip(), language, logprob, float(no_speech[k])))
        return results

    def _transcribe(self, waves: list[np.ndarray]) -> list[Transcript]:
        windows = self._windows(waves)
        found: list[tuple[str, str, float, float]] = []
        for start in range(0, len(windows), max(1, self.spec.batch_size)):
            found += self._window_batch([w for _, w in windows[start:start + self.spec.batch_size]])
        out = []
        for i in range(len(waves)):
            mine = [f for (j, _), f in zip(windows, found) if j == i]
            language = mine[0][1]
            joiner = "" if language in NO_SPACES else " "
            out.append(Transcript(joiner.join(t for t, *_ in mine if t).strip(), language,
                                  float(np.mean([m[2] for m in mine])), float(np.mean([m[3] for m in mine]))))
        return out


class SphinxTranscriber(Transcriber):
    """CMU PocketSphinx with the US-English model its wheel ships (CPU, no download)."""

    engine = "pocketsphinx"

    def load(self) -> None:
        from pocketsphinx import Decoder, Vad

        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        self.vad = Vad(sample_rate=SAMPLE_RATE)

    def _speech_share(self, pcm: np.ndarray) -> float:
        """The share of 30 ms frames PocketSphinx's voice activity detector calls speech."""
        step = self.vad.frame_bytes // 2
        frames = [pcm[i:i + step].tobytes() for i in range(0, len(pcm) - step + 1, step)]
        return float(np.mean([self.vad.is_speech(f) for f in frames])) if frames else 0.0

    def _transcribe(self, waves: list[np.ndarray]) -> list[Transcript]:
        out = []
        for wave in waves:
            pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
            no_speech = 1.0 - self._speech_share(pcm)
            if no_speech == 1.0:
                out.append(Transcript("", "en", float("-inf"), no_speech))  # the decoder would make words of noise
                continue
            self.decoder.start_utt()
            self.decoder.process_raw(pcm.tobytes(), full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            text = hyp.hypstr.strip() if hyp is not None else ""
            words = max(1, len(text.split()))
            logprob = float(self.decoder.get_logmath().log(hyp.prob)) / words if hyp is not None and text else float("-inf")
            out.append(Transcript(text, "en", logprob, no_speech))
        return out


ENGINES: dict[str, type[Transcriber]] = {cls.engine: cls for cls in (WhisperTranscriber, SphinxTranscriber)}


def build_transcriber(spec: AsrSpec, device: str = "cpu") -> Transcriber:
    """The transcriber of ``spec``; weights load on its first ``encode``."""
    check_asr(spec)
    return ENGINES[spec.engine](spec, device)


def check_asr(spec: AsrSpec) -> None:
    """EncoderConfigError naming the setting a recogniser cannot use."""
    if spec.engine not in ENGINES:
        raise EncoderConfigError(f"asr.engine: unknown engine {spec.engine!r} (known: {', '.join(ENGINES)})")
    if spec.engine == "pocketsphinx" and spec.language not in ("", "en"):
        raise EncoderConfigError(f"asr.language: pocketsphinx ships a US-English model only, got {spec.language!r}")
    if spec.chunk_seconds <= 0 or spec.batch_size < 1 or spec.max_new_tokens < 1:
        raise EncoderConfigError("asr: chunk_seconds, batch_size and max_new_tokens must be positive")
