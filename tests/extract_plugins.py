"""Test encoders loaded by the extraction tests as ``extract_plugins:ClassName``.

They run inside Ray actors, so they live in an importable module (the tests put
this folder on the workers' PYTHONPATH) and report what the actor saw through
their output vectors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from mer.corpus.media import load_audio
from mer.encoders import Encoder


class ProbeEncoder(Encoder):
    """Text 'encoder' whose vector records the GPU its actor was pinned to.

    vector = [CUDA_VISIBLE_DEVICES as a number (-1 if unset), pid, len(text), 1].
    ``spec.model`` names a marker file: when set, the first actor process to
    finish ``spec.num_frames`` batches creates it and dies (``os._exit``), once.
    """

    alias = "probe"
    role = "text"

    @classmethod
    def weights_fingerprint(cls, spec) -> str:
        return ""

    @property
    def dim(self) -> int:
        return 4

    def prepare(self, row: dict) -> str:
        return str(row.get("text") or "")

    def load(self) -> None:
        self.batches = 0

    def _encode(self, batch):
        time.sleep(0.15)  # long enough that both actors of a pool get work
        self.batches += 1
        marker = self.spec.model
        if marker and self.batches >= self.spec.num_frames and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
        gpu = float(os.environ.get("CUDA_VISIBLE_DEVICES") or -1)
        return [(np.array([gpu, os.getpid(), len(t), 1.0], np.float32), None) for t in batch]


class FragileEncoder(Encoder):
    """Audio RMS 'encoder' that decodes real media and fails to encode text 'boom'."""

    alias = "fragile"
    role = "audio"

    @classmethod
    def weights_fingerprint(cls, spec) -> str:
        return ""

    @property
    def dim(self) -> int:
        return 2

    def prepare(self, row: dict):
        return load_audio(row.get("audio") or row["video"], max_seconds=1.0), str(row.get("text") or "")

    def _encode(self, batch):
        if any(text == "boom" for _, text in batch):
            raise RuntimeError("boom in the model")
        out = []
        for wave, _ in batch:
            v = np.array([np.sqrt(np.mean(wave**2)), wave.size], np.float32)
            out.append((v, np.stack([v, v])))
        return out
