"""``egemaps``: the eGeMAPSv02 parameter set (openSMILE), the classic paralinguistic features MERTools offers too.

openSMILE ships inside the ``opensmile`` wheel (its own ``SMILExtract``
library), so this runs anywhere pip does. ``vector`` is the set's 88
functionals over the whole clip (pitch, jitter, shimmer, loudness, spectral
balance, formants, rates of voiced segments, ...). ``seq`` keeps the time
course: the same 88 functionals over each of ``seq_len`` equal segments of
the clip. Our choice: every stream in mer has one width, and the set's 25
low-level descriptors summarised per segment by the set's own functionals keep
that width (the 25-d descriptor frames themselves would need a second one).
No weights: the version is the code version and the settings.
"""

from __future__ import annotations

import functools

import numpy as np

from mer.corpus.media import load_audio
from mer.encoders.base import Encoder, audio_path

SAMPLE_RATE = 16000
DIM = 88
#: openSMILE's functionals need a little signal; shorter segments are padded with silence to this length.
MIN_SEGMENT_SECONDS = 0.25


@functools.lru_cache(maxsize=1)
def _smile():
    """The eGeMAPSv02 functionals extractor (built once per process)."""
    import opensmile

    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)


def functionals(wave: np.ndarray) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of a 16 kHz float wave (NaN, e.g. no voiced frame, becomes 0)."""
    wave = np.asarray(wave, np.float32)
    short = int(MIN_SEGMENT_SECONDS * SAMPLE_RATE) - len(wave)
    if short > 0:
        wave = np.pad(wave, (0, short))
    values = _smile().process_signal(wave, SAMPLE_RATE).to_numpy(np.float32)[0]
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


class EGeMAPSEncoder(Encoder):
    """eGeMAPSv02 functionals of 16 kHz audio (88-d), per clip and per segment."""

    alias = "egemaps"
    role = "audio"
    spec_fields = ("seq_len", "seq_dtype", "max_seconds")

    @property
    def dim(self) -> int:
        return DIM

    def prepare(self, row: dict) -> np.ndarray:
        """16 kHz mono waveform, cut at ``max_seconds``."""
        return load_audio(audio_path(row), sr=SAMPLE_RATE, max_seconds=self.spec.max_seconds)

    def _encode(self, batch: list[np.ndarray]):
        out = []
        for wave in batch:
            seq = None
            if self.spec.seq_len > 0:
                bounds = np.linspace(0, len(wave), min(self.spec.seq_len, max(1, len(wave) // 160)) + 1).round().astype(int)
                seq = np.stack([functionals(wave[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]).astype(self.spec.seq_dtype)
            out.append((functionals(wave), seq))
        return out
