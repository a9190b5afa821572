"""Realistic corruptions of decoded media: the MER-NOISE setting, by name.

A corruption is a short string ``kind@level`` that an encoder spec carries
(``encoders.audio.corrupt: babble@10``). The extract stage applies it to every
decoded clip before the model sees it, and the spec's version hashes it, so
corrupted features land in their own feature table beside the clean ones.
Robustness tests corrupt the test split; noise augmentation corrupts the
training rows (``mix``). No Ray here.

Audio (a mono float waveform; SNR in dB relative to the clip's own power):

* ``white@S``, ``pink@S`` (1/f), ``brown@S`` (1/f^2): coloured Gaussian noise.
* ``babble@S``: speech of other people, read from the spec's ``noise_source``
  recording (the robustness runner mixes one from other clips of the corpus);
  any real noise recording (MUSAN, a cafe) works the same way.
* ``music@S``: tonal noise: random chords of harmonic notes with note onsets.
* ``hum@S``: mains hum: 50 or 60 Hz and its first harmonics.
* ``mix@A:B``: augmentation: per clip one of white, pink, brown, music and hum
  at an SNR drawn uniformly in [A, B] (babble, reverb and clipping are left out,
  so robustness to them is measured, not trained).
* ``reverb@T``: a room: the clip convolved with exponentially decaying noise of
  RT60 ``T`` seconds, scaled back to the clip's power.
* ``clip@F``: hard clipping at ``F`` times the clip's peak.

Video (uint8 frames ``(N, H, W, 3)`` as the encoder sees them, after the face
crop):

* ``blur@P``: Gaussian blur, sigma = ``P`` percent of the frame width.
* ``dark@G``: low light: brightness times ``G``, gamma 1.5, sensor noise.
* ``occlude@F``: a grey box over fraction ``F`` of each frame's area at one
  random place per clip (a hand, a mask, a microphone).

A missing modality is not a corruption of media: ``drop`` extracts no rows for
the role, so the model sees the modality as absent (see
:mod:`mer.experiments.robustness`).

Every random draw comes from the clip's ``sample_id`` and the spec's
corruption, so the same job gives the same corrupted features.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mer.errors import MerError

SAMPLE_RATE = 16000
AUDIO_KINDS = ("white", "pink", "brown", "babble", "music", "hum", "mix", "reverb", "clip")
VIDEO_KINDS = ("blur", "dark", "occlude")
#: Kinds ``mix`` draws from: the synthetic additive noises.
MIX_KINDS = ("white", "pink", "brown", "music", "hum")
ADDITIVE = ("white", "pink", "brown", "babble", "music", "hum")


class CorruptionError(MerError, ValueError):
    """A corruption string that does not parse or does not fit the modality."""


@dataclass(frozen=True)
class Corruption:
    """A parsed ``kind@level`` (``mix`` has ``level``..``high``)."""

    kind: str
    level: float
    high: float | None = None

    @property
    def role(self) -> str:
        return "audio" if self.kind in AUDIO_KINDS else "video"

    def __str__(self) -> str:
        if self.kind == "drop":
            return "drop"
        return f"{self.kind}@{self.level:g}" + ("" if self.high is None else f":{self.high:g}")


def parse(text: str) -> Corruption:
    """``white@10`` -> ``Corruption("white", 10.0)``; ``mix@0:20``; ``drop``.

    Raises:
        CorruptionError: unknown kind, missing or bad level.
    """
    text = str(text).strip()
    if text == "drop":
        return Corruption("drop", 0.0)
    kind, _, level = text.partition("@")
    if kind not in AUDIO_KINDS + VIDEO_KINDS:
        raise CorruptionError(f"corruption {text!r}: unknown kind {kind!r} (expected one of "
                              f"{', '.join(AUDIO_KINDS + VIDEO_KINDS)}, or drop)")
    low, _, high = level.partition(":")
    try:
        values = [float(low)] + ([float(high)] if high else [])
    except ValueError:
        raise CorruptionError(f"corruption {text!r}: expected {kind}@<number>") from None
    if (kind == "mix") != bool(high):
        raise CorruptionError(f"corruption {text!r}: " + ("mix takes an SNR range, e.g. mix@0:20" if kind == "mix"
                                                          else f"{kind} takes one level, e.g. {kind}@10"))
    if kind in ("clip", "dark", "occlude") and not 0 < values[0] < 1:
        raise CorruptionError(f"corruption {text!r}: the level of {kind} is a fraction in (0, 1)")
    if kind in ("reverb", "blur") and values[0] <= 0:
        raise CorruptionError(f"corruption {text!r}: the level of {kind} must be > 0")
    return Corruption(kind, values[0], values[1] if high else None)


def heard_in_training(corruption: Corruption, audio_augment: str) -> bool:
    """Whether training with ``audio_augment`` (``train.audio_augment``) heard this corruption at this level.

    ``mix@0:20`` covers white, pink, brown, music and hum from 0 to 20 dB; babble, reverb and clipping are
    never part of it. The robustness report names the conditions this is false for.
    """
    if not audio_augment or corruption.kind == "drop" or corruption.role != "audio":
        return False
    augment = parse(audio_augment)
    kinds = MIX_KINDS if augment.kind == "mix" else (augment.kind,)
    high = augment.level if augment.high is None else augment.high
    return corruption.kind in kinds and augment.level <= corruption.level <= high


def rng_for(sample_id: str, corruption: Corruption) -> np.random.Generator:
    """The clip's own generator: same sample and corruption, same draw."""
    return np.random.default_rng([zlib.crc32(str(sample_id).encode()), zlib.crc32(str(corruption).encode())])


def snr_db(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Measured SNR: clean power over the power of what the corruption added."""
    clean = clean.astype(np.float64)
    noise = corrupted.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean**2) / max(np.mean(noise**2), 1e-20)))


# --- audio -------------------------------------------------------------------------
def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    white = rng.standard_normal(n)
    if exponent == 0:
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def music_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Chords of three harmonic notes (5 partials each), a new chord every 0.25-0.6 s."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    start = 0
    while start < n:
        length = int(rng.uniform(0.25, 0.6) * SAMPLE_RATE)
        seg = slice(start, min(n, start + length))
        tt = t[seg] - t[start]
        envelope = np.exp(-tt * rng.uniform(2, 6))
        for midi in rng.choice(np.arange(48, 84), size=3, replace=False):
            f0 = 440.0 * 2 ** ((midi - 69) / 12)
            for k in range(1, 6):
                if k * f0 < SAMPLE_RATE / 2:
                    out[seg] += envelope * np.sin(2 * np.pi * k * f0 * tt + rng.uniform(0, 2 * np.pi)) / k
        start += length
    return out


def hum_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: a 50 or 60 Hz fundamental plus harmonics 2-8, slowly decaying."""
    f0 = rng.choice([50.0, 60.0])
    t = np.arange(n) / SAMPLE_RATE
    return sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k**0.7 for k in range(1, 9))


@lru_cache(maxsize=4)
def _recording(path: str) -> np.ndarray:
    from mer.corpus.media import load_audio

    return load_audio(path, sr=SAMPLE_RATE).astype(np.float64)


def recorded_noise(n: int, source: str | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the ``source`` recording from a random offset (looped when shorter)."""
    if not source:
        raise CorruptionError("babble needs a noise recording: set the encoder's noise_source to a WAV of other speech")
    rec = _recording(source)
    start = int(rng.integers(len(rec)))
    return np.resize(np.roll(rec, -start), n)


def additive_noise(kind: str, n: int, rng: np.random.Generator, source: str | None = None) -> np.ndarray:
    """Unscaled noise of one additive kind, ``n`` samples."""
    if kind in ("white", "pink", "brown"):
        return coloured_noise(n, ("white", "pink", "brown").index(kind), rng)
    if kind == "music":
        return music_noise(n, rng)
    if kind == "hum":
        return hum_noise(n, rng)
    return recorded_noise(n, source, rng)


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """``wave + noise`` scaled so the SNR is ``snr`` dB (no clipping: the encoders take floats)."""
    power = float(np.mean(wave.astype(np.float64) ** 2)) or 1e-12
    noise = noise - noise.mean()
    scale = np.sqrt(power / 10 ** (snr / 10) / max(float(np.mean(noise**2)), 1e-20))
    return (wave + scale * noise).astype(np.float32)


def reverberate(wave: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response (decaying noise, RT60 ``rt60`` s), same power."""
    from scipy.signal import fftconvolve

    n = max(1, int(rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * 10 ** (-3 * t / rt60)  # -60 dB at rt60
    rir[0] = 1.0  # the direct path
    wet = fftconvolve(wave.astype(np.float64), rir)[: len(wave)]
    power = np.mean(wave.astype(np.float64) ** 2)
    return (wet * np.sqrt(power / max(np.mean(wet**2), 1e-20))).astype(np.float32)


def corrupt_audio(wave: np.ndarray, corruption: Corruption, rng: np.random.Generator,
                  source: str | None = None) -> np.ndarray:
    """Apply one audio corruption to a mono waveform."""
    kind, level = corruption.kind, corruption.level
    if kind == "mix":
        kind = str(rng.choice(MIX_KINDS))
        level = float(rng.uniform(corruption.level, corruption.high))
    if kind in ADDITIVE:
        return mix_at_snr(wave, additive_noise(kind, len(wave), rng, source), level)
    if kind == "reverb":
        return reverberate(wave, level, rng)
    if kind == "clip":
        peak = float(np.abs(wave).max()) * level
        return np.clip(wave, -peak, peak).astype(np.float32)
    raise CorruptionError(f"{corruption} is not an audio corruption")


# --- video -------------------------------------------------------------------------
def corrupt_frames(frames: np.ndarray, corruption: Corruption, rng: np.random.Generator) -> np.ndarray:
    """Apply one video corruption to uint8 frames ``(N, H, W, 3)``."""
    import cv2

    kind, level = corruption.kind, corruption.level
    x = np.asarray(frames)
    if kind == "blur":
        sigma = max(0.3, level / 100 * x.shape[2])
        return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in x])
    if kind == "dark":
        y = (x / 255.0 * level) ** 1.5 + rng.normal(0, 0.02, x.shape)
        return (np.clip(y, 0, 1) * 255).round().astype(np.uint8)
    if kind == "occlude":
        h, w = x.shape[1:3]
        bh, bw = max(1, round(h * np.sqrt(level))), max(1, round(w * np.sqrt(level)))
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out = x.copy()
        out[:, top:top + bh, left:left + bw] = 128
        return out
    raise CorruptionError(f"{corruption} is not a video corruption")
