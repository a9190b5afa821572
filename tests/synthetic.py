"""Synthetic, class-separable features written into a real store (tests and ``benchmarks/train.py``).

Each class has a random prototype per role; a sample's pooled vector is its
class prototype plus Gaussian noise, and its ``seq`` steps scatter around the
vector. ``noisy_role`` gets a wrong-class prototype for a fraction of samples,
which is the disagreement AMF is meant to suppress.
"""

from __future__ import annotations

import numpy as np

from mer.config import Job


def write_synthetic_features(
    job: Job,
    n: dict[str, int],
    dims: dict[str, int] | None = None,
    seed: int = 0,
    noise: float = 1.0,
    noisy_role: str | None = "text",
    noisy_fraction: float = 0.3,
    missing_fraction: float = 0.0,
) -> dict[str, str]:
    """Upsert synthetic features for every role of ``job`` into ``job.store``.

    Args:
        job: names the store, the encoders (table names) and the labels.
        n: samples per split, e.g. ``{"train": 240, "test": 120, "unlabeled": 120}``.
        dims: feature width per role (default 32).
        seed: same seed, same features.
        noise: standard deviation of the per-sample noise (prototypes have norm ~sqrt(D)).
        noisy_role: role whose features point to a wrong class for ``noisy_fraction`` of samples.
        missing_fraction: per non-audio role, the fraction of samples left out of its table.

    Returns:
        role -> table name written.
    """
    from mer.encoders import feature_ref
    from mer.store import open_store

    rng = np.random.default_rng(seed)
    store = open_store(job.store)
    ids, splits = [], []
    for split, count in n.items():
        ids += [f"{split}_{i:05d}" for i in range(count)]
        splits += [split] * count
    ids, splits = np.array(ids), np.array(splits)
    k = len(job.labels)
    y = rng.integers(0, k, len(ids))
    labels = np.array(job.labels, object)[y]
    labels[splits == "unlabeled"] = None
    written = {}
    for role, spec in sorted(job.encoders.items()):
        dim = (dims or {}).get(role, 32)
        protos = rng.normal(size=(k, dim)).astype(np.float32)
        cls = y.copy()
        if role == noisy_role:
            flip = rng.random(len(ids)) < noisy_fraction
            cls[flip] = (cls[flip] + rng.integers(1, k, flip.sum())) % k
        vector = protos[cls] + noise * rng.normal(size=(len(ids), dim)).astype(np.float32)
        keep = np.ones(len(ids), bool)
        if role != "audio" and missing_fraction:
            keep = rng.random(len(ids)) >= missing_fraction
        rows = {"sample_id": ids[keep].tolist(), "split": splits[keep].tolist(),
                "label": labels[keep].tolist(), "vector": vector[keep]}
        if spec.seq_len:
            steps = vector[:, None, :] + noise * rng.normal(size=(len(ids), spec.seq_len, dim)).astype(np.float32)
            lengths = rng.integers(1, spec.seq_len + 1, len(ids))
            rows["seq"], rows["seq_lengths"] = steps[keep], lengths[keep]
        ref = feature_ref(role, spec)
        store.upsert(ref.alias, ref.version, rows)
        written[role] = ref.table
    return written
