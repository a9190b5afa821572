"""What every encoder shares: the ``Encoder`` interface, pooling, versions, devices.

An encoder turns one manifest row into a pooled ``vector`` (D,) and an optional
``seq`` (L, D) of at most ``spec.seq_len`` time steps. It works in two halves so
that a pipeline can put them on different workers:

* ``prepare(row)`` decodes media on a CPU (PyAV, face crops); it needs no model.
* ``encode(batch)`` runs the model on prepared payloads (on a GPU when there is one).

``decode(row)`` is ``prepare`` plus the spec's corruption (``spec.corrupt``,
:mod:`mer.corpus.corrupt`): the extract stage calls it, so one job can write
clean, noisy or augmented features of the same encoder, each its own version.

The model is loaded by ``ensure_loaded`` (or the first ``encode``), so building an encoder to read
its ``alias``/``dim``/``version`` or to ``prepare`` rows costs no weights load.
No Ray here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar

import numpy as np

from mer.config import EncoderSpec
from mer.corpus.media import EmptyMediaError
from mer.encoders.versions import asr_version, file_digest, weights_fingerprint
from mer.errors import MerError


class EncoderConfigError(MerError, ValueError):
    """Settings that do not fit the model (e.g. a layer index it does not have)."""


class Encoder:
    """Base class: one modality, one model, one version.

    Subclasses set ``alias``, ``role``, ``spec_fields`` (the spec fields that
    change the output, hashed into ``version``) and ``code_version`` (bumped when
    the algorithm changes), and implement ``prepare``, ``_encode`` and ``dim``.

    Attributes:
        spec: the settings from the job file.
        device: ``"cpu"`` or ``"cuda"`` (the GPU Ray pinned this process to).
        version: ``encoder_version(spec)``; the store keeps one table per version.
    """

    alias: ClassVar[str] = ""
    role: ClassVar[str] = ""
    code_version: ClassVar[str] = "1"
    default_model: ClassVar[str | None] = None
    spec_fields: ClassVar[tuple[str, ...]] = ("seq_len", "seq_dtype")
    #: False for feature sets made elsewhere (``mer store import``): nothing to extract or to encode new clips with.
    extracts: ClassVar[bool] = True

    def __init__(self, spec: EncoderSpec, device: str = "cpu"):
        self.spec = spec
        self.device = device
        self.model_name = self.resolve_model(spec)
        self.version = self.compute_version(spec)
        self.corruption = self.parse_corruption(spec)
        self._loaded = False

    # --- interface -----------------------------------------------------------
    @property
    def dim(self) -> int:
        """Width D of ``vector`` and of each ``seq`` step."""
        raise NotImplementedError

    def prepare(self, row: dict) -> Any:
        """Decode one manifest row on a CPU. Raises ``MediaError`` when it cannot."""
        raise NotImplementedError

    def encode(self, batch: list[Any]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Embed prepared payloads: one ``(vector (D,), seq (L<=seq_len, D) | None)`` each."""
        self.ensure_loaded()
        return self._encode(batch)

    def decode(self, row: dict) -> Any:
        """``prepare(row)``, then the spec's corruption with the clip's own random draw."""
        payload = self.prepare(row)
        if self.corruption is None:
            return payload
        from mer.corpus import corrupt

        rng = corrupt.rng_for(row.get("sample_id", ""), self.corruption)
        if self.role == "audio":
            return corrupt.corrupt_audio(payload, self.corruption, rng, self.spec.noise_source or None)
        if hasattr(payload, "frames"):  # a VideoClip
            return dataclasses.replace(payload, frames=corrupt.corrupt_frames(payload.frames, self.corruption, rng))
        return corrupt.corrupt_frames(payload, self.corruption, rng)

    @classmethod
    def parse_corruption(cls, spec: EncoderSpec):
        """The spec's :class:`~mer.corpus.corrupt.Corruption`, checked against the role (None = clean)."""
        if not spec.corrupt:
            return None
        from mer.corpus.corrupt import CorruptionError, parse

        corruption = parse(spec.corrupt)
        if corruption.kind == "drop":
            raise CorruptionError(f"encoders.{cls.role}.corrupt: drop extracts nothing; the robustness runner "
                                  "writes an empty table for a dropped modality instead")
        if corruption.role != cls.role:
            raise CorruptionError(f"encoders.{cls.role}.corrupt: {spec.corrupt!r} is a {corruption.role} corruption, "
                                  f"{cls.alias} encodes {cls.role or 'another role'}")
        return corruption

    def ensure_loaded(self) -> None:
        """Load the weights now if not yet (an actor does it while the first clips decode)."""
        if not self._loaded:
            self.load()
            self._loaded = True

    def load(self) -> None:
        """Load weights (called once, by ``ensure_loaded``)."""

    def _encode(self, batch: list[Any]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        raise NotImplementedError

    # --- version ---------------------------------------------------------------
    @classmethod
    def table_alias(cls, spec: EncoderSpec) -> str:
        """The alias the store names this encoder's tables by (``features__<alias>__<version8>``)."""
        return cls.alias

    @classmethod
    def resolve_model(cls, spec: EncoderSpec) -> str | None:
        """The hub name or folder used: ``spec.model`` or the encoder's default."""
        return spec.model or cls.default_model

    @classmethod
    def weights_fingerprint(cls, spec: EncoderSpec) -> str:
        """Identity of the weights; encoders without weights have only their code version."""
        model = cls.resolve_model(spec)
        return weights_fingerprint(model) if model else ""

    @classmethod
    def compute_version(cls, spec: EncoderSpec) -> str:
        """Hash of alias, code version, the output-relevant spec fields and weights."""
        fields = {name: getattr(spec, name) for name in cls.spec_fields}
        payload = {
            "alias": cls.alias,
            "code": cls.code_version,
            "spec": fields,
            "weights": cls.weights_fingerprint(spec),
        }
        if spec.corrupt:  # only then: clean versions stay what they were
            payload["corrupt"] = spec.corrupt
            payload["noise"] = file_digest(spec.noise_source) if spec.noise_source else ""
        if spec.source != "manifest":  # transcripts made by a recogniser: its version is part of ours
            payload["text_source"] = [spec.source, asr_version(spec.recogniser())]
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # --- helpers for subclasses ---------------------------------------------------
    def finish(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Pool a (T, D) sequence: mean -> vector, ``seq_len`` segment means -> seq."""
        frames = np.asarray(frames, dtype=np.float32)
        vector = frames.mean(axis=0)
        if self.spec.seq_len <= 0:
            return vector, None
        seq = segment_means(frames, self.spec.seq_len).astype(self.spec.seq_dtype)
        return vector, seq


def segment_means(frames: np.ndarray, length: int) -> np.ndarray:
    """Split (T, D) into ``min(length, T)`` contiguous, evenly sized segments; mean each.

    Evenly spaced segment means keep the whole clip's time course in a fixed
    budget (MERTools keeps every frame; a 30 s clip would be 1,500 HuBERT steps).
    """
    frames = np.asarray(frames)
    n = min(length, len(frames))
    bounds = np.linspace(0, len(frames), n + 1).round().astype(int)
    sums = np.add.reduceat(frames.astype(np.float64), bounds[:-1], axis=0)
    return (sums / np.diff(bounds)[:, None]).astype(np.float32)


def mean_of_layers(hidden_states, layers: list[int]):
    """Average the chosen hidden-state layers (index into the model's tuple, negative from the end).

    MERTools sums the last four layers; the mean is the same direction at a
    fixed scale and keeps magnitudes comparable across layer choices.
    """
    n = len(hidden_states)
    bad = [i for i in layers if not -n <= i < n]
    if bad or not layers:
        raise EncoderConfigError(f"layers {layers}: the model has {n} hidden states (embeddings + {n - 1} layers)")
    picked = [hidden_states[i] for i in layers]
    out = picked[0].float()
    for h in picked[1:]:
        out = out + h.float()
    return out / len(picked)


def quiet_transformers() -> None:
    """Silence per-load progress bars and load reports (one per actor would flood the logs)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def torch_dtype(spec_dtype: str, device: str):
    """The torch dtype for ``spec.dtype``: ``auto`` = bf16 (or fp16) on GPU, fp32 on CPU."""
    import torch

    if spec_dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, spec_dtype)


def audio_path(row: dict) -> str:
    """The audio source of a row: its audio file, else its video's audio track."""
    path = row.get("audio") or row.get("video")
    if not path:
        raise EmptyMediaError(row.get("sample_id", "?"), "row has no audio or video file")
    return str(path)


def video_path(row: dict) -> str:
    """The video file of a row."""
    path = row.get("video")
    if not path:
        raise EmptyMediaError(row.get("sample_id", "?"), "row has no video file")
    return str(path)


def row_text(row: dict) -> str:
    """The transcript of a row (stripped)."""
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise EmptyMediaError(row.get("sample_id", "?"), "row has no text")
    return text.strip()

