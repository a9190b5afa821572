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

from mer.corpus.media import load_audio, load_frames
from mer.encoders import Encoder


class _TestEncoder(Encoder):
    """A test encoder: no weights to fingerprint, a fixed ``width``."""

    width = 0

    @classmethod
    def weights_fingerprint(cls, spec) -> str:
        return ""

    @property
    def dim(self) -> int:
        return self.width


class ProbeEncoder(_TestEncoder):
    """Text 'encoder' whose vector records the GPU its actor was pinned to.

    vector = [CUDA_VISIBLE_DEVICES as a number (-1 if unset), pid, len(text), 1].
    ``spec.model`` names a marker file: when set, the first actor process to
    finish ``spec.num_frames`` batches, once another actor has finished 2
    (so the run has output from both GPUs whatever their start-up order),
    creates it and dies (``os._exit``), once.
    """

    alias = "probe"
    role = "text"
    width = 4

    def prepare(self, row: dict) -> str:
        return str(row.get("text") or "")

    def load(self) -> None:
        self.batches = 0

    def _encode(self, batch):
        time.sleep(0.15)  # long enough that both actors of a pool get work
        marker = Path(self.spec.model) if self.spec.model else None
        if marker and not marker.exists():
            # this actor's count of batches returned so far (the previous call's has gone back by now)
            (marker.parent / f"probe_batches_{os.getpid()}").write_text(str(self.batches))
            peers = [int(p.read_text() or 0) for p in marker.parent.glob("probe_batches_*")
                     if p.name != f"probe_batches_{os.getpid()}"]
            if self.batches >= self.spec.num_frames and max(peers, default=0) >= 2:
                time.sleep(0.5)  # the driver takes in what the peer returned
                marker.write_text(str(os.getpid()))
                os._exit(1)
        self.batches += 1
        gpu = float(os.environ.get("CUDA_VISIBLE_DEVICES") or -1)
        return [(np.array([gpu, os.getpid(), len(t), 1.0], np.float32), None) for t in batch]


class FragileEncoder(_TestEncoder):
    """Audio RMS 'encoder' that decodes real media and fails to encode text 'boom'."""

    alias = "fragile"
    role = "audio"
    width = 2

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


class SimGpuEncoder(_TestEncoder):
    """Video 'encoder' with real decoding and a simulated accelerator forward.

    ``prepare`` decodes ``spec.num_frames`` frames at 224x224 with PyAV (the real
    CPU work a CLIP-style encoder feeds its GPU). ``_encode`` computes nothing:
    it sleeps ``batch_ms`` per batch plus ``sample_ms`` per sample, the way a
    GPU kernel leaves the CPU free while it runs. ``spec.model`` holds
    ``"batch_ms:sample_ms"``. Run it on ``num_gpus=1`` actors over fake GPUs
    (``ray.init(num_gpus=2)``).

    vector = [CUDA_VISIBLE_DEVICES as a number (-1 if unset), forward start
    (``time.time()`` mod 3600), forward seconds, batch size], so a reader can
    sum each simulated GPU's busy time.
    """

    alias = "sim_gpu"
    role = "video"
    width = 4

    def prepare(self, row: dict) -> np.ndarray:
        return load_frames(row["video"], self.spec.num_frames, size=(224, 224))

    def forward_seconds(self, batch_size: int) -> float:
        """Simulated kernel time of one batch: ``batch_ms + batch_size * sample_ms``."""
        batch_ms, sample_ms = (float(v) for v in (self.spec.model or "0:0").split(":"))
        return (batch_ms + batch_size * sample_ms) / 1000

    def _encode(self, batch):
        start = time.time()
        time.sleep(self.forward_seconds(len(batch)))
        busy = time.time() - start
        gpu = float(os.environ.get("CUDA_VISIBLE_DEVICES") or -1)
        vector = np.array([gpu, start % 3600, busy, len(batch)], np.float32)
        return [(vector, None) for _ in batch]
