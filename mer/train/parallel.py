"""Prediction of stored splits as Ray work: the shards of :mod:`mer.train.predict` on a Ray Data actor pool.

Each actor loads every checkpoint of the pass once and predicts whole shards
(its own Lance ``take`` of the shard's rows, one GPU per actor with
``execution.use_gpu``); the driver gets back only probabilities. On a cluster
the pool spreads over the nodes; on one machine a split of a single shard
(the demo corpus) is predicted in process, where Ray's start-up would cost
more than the work. ``benchmarks/release_scale.py`` compares both paths at
MER2025's size.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import ray

from mer.config import ExecutionConfig
from mer.train.checkpoint import read_config
from mer.train.predict import SHARD_BYTES, SplitIndex, frame, load_members, passes, predict_members, predict_shard


class ShardPredictor:
    """Ray Data actor: the checkpoints' models, loaded once; predicts shards of one :class:`SplitIndex`."""

    def __init__(self, checkpoints: list[str], index_ref, threads: int):
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.members = load_members(checkpoints, device)
        self.index: SplitIndex = ray.get(index_ref[0])

    def __call__(self, batch: dict) -> dict:
        out = []
        for start, stop in zip(batch["start"], batch["stop"]):
            out.append(pickle.dumps(predict_shard(self.members, self.index.shard(int(start), int(stop))), protocol=5))
        return {"start": batch["start"], "probs": np.array(out, dtype=object)}


def _pool_size(execution: ExecutionConfig, shards: int) -> tuple[int, float, float]:
    """``(actors, cpus, gpus)`` per actor: one GPU each with ``use_gpu``, else the CPUs one core at a time."""
    resources = ray.cluster_resources()
    if execution.use_gpu and resources.get("GPU", 0) >= 1:
        return max(1, min(shards, int(resources["GPU"]))), 1.0, 1.0
    return max(1, min(shards, int(resources.get("CPU", 1)))), 1.0, 0.0


def predict_split(checkpoints: list, store_uri: str, split: str | list[str], execution: ExecutionConfig,
                  swap: dict | None = None, budget_bytes: int = SHARD_BYTES) -> list[pd.DataFrame]:
    """One predictions frame per checkpoint over ``split``: on a Ray Data actor pool when it has several shards.

    Args:
        checkpoints: checkpoint folders.
        store_uri: the store to read.
        split: a split name, or a list of them.
        execution: ``use_gpu`` gives each actor a GPU.
        swap: stream -> FeatureRef read in place of the trained-on table (robustness conditions).
        budget_bytes: features one shard may hold.
    """
    groups = passes(checkpoints, store_uri, split, swap)
    if not ray.is_initialized() or all(len(index.shards(budget_bytes)) <= 1 for index, _ in groups):
        return predict_members(load_members(checkpoints), store_uri, split, swap, budget_bytes)
    labels = [read_config(c)["labels"] for c in checkpoints]
    out: list[pd.DataFrame | None] = [None] * len(checkpoints)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for index, which in groups:
        shards = index.shards(budget_bytes)
        actors, cpus, gpus = _pool_size(execution, len(shards))
        index_ref = [ray.put(index)]  # in a list: Ray passes a bare ObjectRef argument as its value
        ds = ray.data.from_items([{"start": a, "stop": b} for a, b in shards], override_num_blocks=len(shards))
        ds = ds.map_batches(
            ShardPredictor,
            fn_constructor_kwargs={"checkpoints": [str(checkpoints[i]) for i in which], "index_ref": index_ref,
                                   "threads": 0 if gpus else max(1, int(cpus))},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            batch_size=1, batch_format="numpy", num_cpus=cpus, num_gpus=gpus or None,
        )
        parts = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for start, blob in zip(batch["start"], batch["probs"]):
                parts[int(start)] = pickle.loads(blob)
        probs = np.concatenate([parts[a] for a, _ in shards], axis=1)
        for k, i in enumerate(which):
            out[i] = frame(index.ids, probs[k], labels[i])
    return out
