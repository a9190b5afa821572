"""``logmel``: a light CPU audio encoder from real signal processing (no weights).

Per 10 ms frame: 64 log-mel energies (torch STFT, 25 ms Hann window; mel filters
from ``transformers.audio_utils``), log energy, and pitch from the normalised
autocorrelation of a 40 ms window (60-400 Hz, voiced when the peak exceeds
``VOICING``). A span of frames is summarised as mel mean and std, energy mean /
std / min / max, and log-pitch mean / std / min / max over voiced frames plus the
voiced fraction: ``DIM`` = 137 numbers, the eGeMAPS-like prosody MERTools' hand
-crafted audio features carry. ``vector`` summarises the clip, each ``seq`` step
one of ``seq_len`` equal time segments.
"""

from __future__ import annotations

import numpy as np

from mer.corpus.media import load_audio
from mer.encoders.base import Encoder, audio_path

SAMPLE_RATE = 16000
N_MELS = 64
N_FFT, WIN, HOP = 512, 400, 160
PITCH_WIN = 640
F0_MIN, F0_MAX = 60.0, 400.0
VOICING = 0.45
DIM = 2 * N_MELS + 4 + 5


class LogMelEncoder(Encoder):
    """Log-mel, energy and pitch statistics of 16 kHz audio (137-d)."""

    alias = "logmel"
    role = "audio"
    spec_fields = ("seq_len", "seq_dtype", "max_seconds")

    def __init__(self, spec, device="cpu"):
        super().__init__(spec, device)
        from transformers.audio_utils import mel_filter_bank

        self._mel = mel_filter_bank(
            num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=N_MELS, min_frequency=20.0,
            max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
        ).astype(np.float32)

    @property
    def dim(self) -> int:
        return DIM

    def prepare(self, row: dict) -> np.ndarray:
        """16 kHz mono waveform, cut at ``max_seconds``."""
        return load_audio(audio_path(row), sr=SAMPLE_RATE, max_seconds=self.spec.max_seconds)

    def frame_features(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame log-mel (T, 64), log energy (T,) and log f0 (T,; NaN when unvoiced)."""
        import torch

        x = torch.from_numpy(np.pad(wave, (0, max(0, PITCH_WIN - wave.size))))
        spec = torch.stft(x, N_FFT, HOP, WIN, torch.hann_window(WIN), center=True, return_complex=True)
        power = spec.abs().square().numpy().T  # (T, F)
        logmel = np.log(power @ self._mel + 1e-6)
        energy = np.log(power.sum(axis=1) + 1e-6)
        # Pitch: autocorrelation via the FFT of zero-padded 40 ms windows.
        frames = torch.nn.functional.pad(x, (PITCH_WIN // 2, PITCH_WIN // 2)).unfold(0, PITCH_WIN, HOP)
        frames = frames - frames.mean(dim=1, keepdim=True)
        ac = torch.fft.irfft(torch.fft.rfft(frames, n=2 * PITCH_WIN).abs().square(), n=2 * PITCH_WIN)
        ac = (ac / ac[:, :1].clamp_min(1e-9)).numpy()
        lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
        lag = lo + ac[:, lo:hi].argmax(axis=1)
        peak = ac[np.arange(len(ac)), lag]
        f0 = np.where(peak > VOICING, np.log(SAMPLE_RATE / lag), np.nan)
        t = min(len(logmel), len(f0))
        return logmel[:t], energy[:t], f0[:t]

    @staticmethod
    def summarise(logmel: np.ndarray, energy: np.ndarray, f0: np.ndarray) -> np.ndarray:
        """One ``DIM`` vector of statistics over a span of frames."""
        voiced = f0[~np.isnan(f0)]
        pitch = (
            [voiced.mean(), voiced.std(), voiced.min(), voiced.max(), voiced.size / f0.size]
            if voiced.size
            else [0.0] * 5
        )
        parts = [logmel.mean(0), logmel.std(0), [energy.mean(), energy.std(), energy.min(), energy.max()], pitch]
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])

    def _encode(self, batch: list[np.ndarray]):
        out = []
        for wave in batch:
            logmel, energy, f0 = self.frame_features(wave)
            vector = self.summarise(logmel, energy, f0)
            seq = None
            if self.spec.seq_len > 0:
                n = min(self.spec.seq_len, len(logmel))
                bounds = np.linspace(0, len(logmel), n + 1).round().astype(int)
                seq = np.stack([self.summarise(logmel[a:b], energy[a:b], f0[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
                seq = seq.astype(self.spec.seq_dtype)
            out.append((vector, seq))
        return out
