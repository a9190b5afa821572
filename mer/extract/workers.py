"""The two Ray Data steps of extraction: CPU decode tasks and the encoder actor (or speech recogniser).

Payloads cross the object store as pickled bytes: decoded media (a waveform,
a stack of face crops, a transcript) and results (a vector plus a ragged seq)
differ in shape from row to row, and one ``bytes`` column keeps every block a
plain Arrow table whatever the encoder returns.

A failure of one sample never fails its batch: the row carries an ``error``
string (``decode: ...`` or ``encode: ...``) to the driver, which quarantines it.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import time

import numpy as np
import ray
from ray.util import metrics

from mer.config import AsrSpec, EncoderSpec
from mer.encoders import build_encoder
from mer.encoders.asr import build_transcriber

PASS_THROUGH = ("sample_id", "split", "label", "text_source")


def build_worker(spec_json: str, device: str = "cpu"):
    """The encoder, or the speech recogniser (``{"asr": ...}``), a pipeline's spec names."""
    data = json.loads(spec_json)
    if "asr" in data and len(data) == 1:
        return build_transcriber(AsrSpec(**data["asr"]), device)
    return build_encoder(EncoderSpec(**data), device)


@functools.lru_cache(maxsize=8)
def _preparer(spec_json: str):
    """One encoder per process for ``prepare`` (no weights are loaded for it)."""
    return build_worker(spec_json)


@functools.lru_cache(maxsize=1)
def _metrics():
    """Ray metrics, created once per worker process (shown on the dashboard's /metrics)."""
    return {
        "samples": metrics.Counter(
            "mer_extract_samples_total", "Samples encoded", tag_keys=("encoder", "role")
        ),
        "failures": metrics.Counter(
            "mer_extract_failures_total", "Samples that failed to decode or encode", tag_keys=("encoder", "stage")
        ),
        "throughput": metrics.Gauge(
            "mer_extract_actor_samples_per_second",
            "Samples per second of one encoder actor (last batch)",
            tag_keys=("encoder", "actor"),
        ),
    }


def _error(stage: str, exc: BaseException) -> str:
    return f"{stage}: {type(exc).__name__}: {' '.join(str(exc).split())}"


def decode_batch(batch: dict, spec_json: str) -> dict:
    """Ray Data task: decode each manifest row of ``batch`` with the encoder's ``decode`` (prepare + corruption).

    Args:
        batch: numpy batch with ``sample_id, split, label, video, audio, text``.
        spec_json: the encoder spec as JSON (hashable, for the per-process cache).

    Returns:
        Columns ``sample_id, split, label, payload`` (pickled, empty on failure),
        ``error`` (empty on success) and ``no_face`` (frames without a face).
    """
    encoder = _preparer(spec_json)
    n = len(batch["sample_id"])
    payloads, errors, no_face = [], [], []
    for i in range(n):
        row = {k: (v[i] if isinstance(v[i], str) and v[i] else None) for k, v in batch.items()}
        try:
            payload = encoder.decode(row)
            payloads.append(pickle.dumps(payload, protocol=5))
            errors.append("")
            no_face.append(int(getattr(payload, "no_face", 0)))
        except Exception as exc:  # any failure of one sample is quarantined, not fatal
            payloads.append(b"")
            errors.append(_error("decode", exc))
            no_face.append(0)
            _metrics()["failures"].inc(tags={"encoder": encoder.alias, "stage": "decode"})
    out = {k: batch[k] for k in PASS_THROUGH}
    out.update(payload=np.array(payloads, dtype=object), error=np.array(errors, dtype=object))
    out["no_face"] = np.array(no_face, dtype=np.int64)
    return out


class EncodeActor:
    """Ray Data actor: holds one encoder (on the GPU Ray pinned it to) and embeds batches.

    Args:
        spec_json: the encoder spec as JSON.
        threads: torch CPU threads (CPU fallback: the node's cores shared by the actors).
    """

    def __init__(self, spec_json: str, threads: int = 0):
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU(s): "cuda" means that GPU.
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.encoder = build_worker(spec_json, device)
        self.encoder.ensure_loaded()
        self.tags = {"encoder": self.encoder.alias}
        self.actor = ray.get_runtime_context().get_actor_id() or f"pid{os.getpid()}"
        self.gpu = ",".join(str(g) for g in ray.get_gpu_ids())

    def _encode_each(self, payloads: list) -> list:
        """Encode a batch; if it fails, encode one by one so only the bad samples fail."""
        try:
            return list(self.encoder.encode(payloads))
        except Exception:
            results = []
            for p in payloads:
                try:
                    results.extend(self.encoder.encode([p]))
                except Exception as exc:
                    results.append(exc)
            return results

    def __call__(self, batch: dict) -> dict:
        start = time.perf_counter()
        errors = list(batch["error"])
        ok = [i for i, e in enumerate(errors) if not e]
        results = self._encode_each([pickle.loads(batch["payload"][i]) for i in ok]) if ok else []
        packed = [b""] * len(errors)
        for i, res in zip(ok, results):
            if isinstance(res, Exception):
                errors[i] = _error("encode", res)
                _metrics()["failures"].inc(tags={"encoder": self.encoder.alias, "stage": "encode"})
            else:  # (vector, seq) of an encoder, or a recogniser's Transcript
                packed[i] = pickle.dumps(res, protocol=5)
        done = sum(1 for p in packed if p)
        if done:
            _metrics()["samples"].inc(done, tags={**self.tags, "role": self.encoder.role})
        rate = done / max(time.perf_counter() - start, 1e-9)
        _metrics()["throughput"].set(rate, tags={**self.tags, "actor": self.actor})
        out = {k: batch[k] for k in PASS_THROUGH}
        out.update(result=np.array(packed, dtype=object), error=np.array(errors, dtype=object))
        out["no_face"] = batch["no_face"]
        out["gpu"] = np.array([self.gpu] * len(errors), dtype=object)
        return out
