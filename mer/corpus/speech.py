"""Spoken transcripts: each clip's text said by ``espeak-ng``, for measuring speech recognition on real speech.

``mer demo-data --speech`` gives every row with text an ``audio`` file
(``speech/<sample_id>.wav``, 16 kHz mono) in which espeak-ng (a Debian
package) speaks the row's transcript, with a little seeded noise (a
recogniser decoding a noiseless synthetic voice is an easier case than any
recording). The video keeps its own track; the audio role then reads the
speech. No model weights are needed, so speech recognition is measured here on
speech, not on tones.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.io import wavfile
from scipy.signal import resample_poly

from mer.errors import MerError

RATE = 16000
NOISE = 0.003  # gaussian noise std (full scale 1.0): about 35 dB below the speech


def speak(text: str, path: str | Path, voice: str = "en-us", words_per_minute: int = 160, seed: int = 0) -> Path:
    """Write ``text`` spoken by espeak-ng to ``path`` (16 kHz mono 16-bit WAV, seeded noise added).

    Raises:
        MerError: espeak-ng is not installed, or it failed on the text.
    """
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise MerError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        done = subprocess.run([binary, "-v", voice, "-s", str(words_per_minute), "-w", str(raw), text],
                              capture_output=True, text=True)
        if done.returncode != 0 or not raw.is_file():
            raise MerError(f"espeak-ng failed on {text[:40]!r}: {done.stderr.strip() or done.returncode}")
        rate, wave = wavfile.read(raw)
    wave = wave.astype(np.float32) / 32768.0
    if rate != RATE:
        step = np.gcd(rate, RATE)
        wave = resample_poly(wave, RATE // step, rate // step).astype(np.float32)
    wave += NOISE * np.random.default_rng(seed).standard_normal(len(wave)).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, RATE, (np.clip(wave, -1, 1) * 32767).astype(np.int16))
    return path


def speak_manifest(manifest: str | Path, voice: str = "en-us") -> int:
    """Give each row with text a spoken ``audio`` file beside the manifest (``speech/``); returns rows spoken.

    The manifest is rewritten in place (atomically) with the ``audio`` column set.
    """
    manifest = Path(manifest)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    spoken = 0
    audio = frame["audio"].tolist() if "audio" in frame else [""] * len(frame)
    for i, row in enumerate(frame.itertuples(index=False)):
        if row.text.strip():
            speak(row.text, manifest.parent / "speech" / f"{row.sample_id}.wav", voice, seed=i)
            audio[i] = f"speech/{row.sample_id}.wav"  # relative to the manifest, like the demo's media
            spoken += 1
    frame["audio"] = audio
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(manifest)
    return spoken
