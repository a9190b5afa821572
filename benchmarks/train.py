"""Training throughput: reading from the store vs tensors in memory; 1 vs 2 Ray Train workers.

Prints, side by side in one run:

1. Epoch time of the AGT training loop when every batch is assembled from the
   store's read (numpy path: one ``FeatureStore.read`` per role, amortised over
   the epochs and included; streaming path: Lance ``take`` per batch) against the
   same loop over batches already built as torch tensors. Target: <= 1.2x.
2. Wall time and mean epoch time of ``fit`` with ``ScalingConfig(num_workers=1)``
   vs ``num_workers=2`` (DDP on CPU).

Run: ``python benchmarks/train.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mer.config import job_from_dict
from mer.models import build_model
from mer.train.stage import fit_settings
from mer.train.learner import choose_rows, epoch_order, targets_of, train_epoch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import write_synthetic_features  # noqa: E402


class InMemory:
    """Every sample's model input built once as torch tensors; ``batch`` only indexes."""

    def __init__(self, data):
        self.tensors = data.batch(np.arange(len(data)))

    def batch(self, index):
        index = torch.from_numpy(np.asarray(index))
        return {r: {k: v[index] for k, v in e.items()} for r, e in self.tensors.items()}


def make_job(root: Path, run: str = "run", num_workers: int = 1, **train) -> object:
    return job_from_dict({
        "name": "bench", "manifest": "none.csv", "store": str(root / "store"), "run_dir": str(root / run),
        "encoders": {"audio": {"alias": "logmel", "seq_len": 16}, "video": {"alias": "frames", "seq_len": 16},
                     "text": {"alias": "minilm", "seq_len": 0}},
        "train": {"patience": 100, "seeds": [0], **train}, "execution": {"num_workers": num_workers},
    })


def epoch_times(job, sources: dict, epochs: int) -> dict[str, list[float]]:
    """Seconds per epoch of the training loop for each batch source, epochs interleaved.

    Every source trains its own copy of the same model (same seed, same batch
    order); running their epochs in turn exposes them to the same machine load.
    """
    labeled = fit_settings(job).load(streaming=False)
    targets = targets_of(labeled, job.labels, None)
    rows = choose_rows(labeled, targets, job.train, 0, None, None)
    runs = {}
    for name in sources:
        torch.manual_seed(0)
        model = build_model("agt", labeled.dims, len(job.labels), job.train)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=job.train.lr))
    times = {name: [] for name in sources}
    for epoch in range(epochs):
        for name, data in sources.items():
            model, optimizer = runs[name]
            start = time.perf_counter()
            train_epoch(model, data, targets, epoch_order(rows, 0, epoch, 0, 1), optimizer,
                        nn.CrossEntropyLoss(), job.train.batch_size)
            times[name].append(time.perf_counter() - start)
    return times


def bench_read(job, epochs: int) -> dict:
    start = time.perf_counter()
    numpy_data = fit_settings(job).load(streaming=False)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    stream_data = fit_settings(job).load(streaming=True)
    stream_index_s = time.perf_counter() - start
    times = epoch_times(job, {"memory": InMemory(numpy_data), "numpy": numpy_data, "stream": stream_data}, epochs)
    mem = statistics.median(times["memory"])
    store_epoch = statistics.median(times["numpy"]) + read_s / epochs
    stream_epoch = statistics.median(times["stream"]) + stream_index_s / epochs
    return {
        "read_seconds": read_s,
        "epoch_in_memory_s": mem,
        "epoch_numpy_path_incl_read_s": store_epoch,
        "epoch_streaming_path_s": stream_epoch,
        "ratio_numpy_path": store_epoch / mem,
        "ratio_streaming_path": stream_epoch / mem,
    }


def bench_workers(root: Path, epochs: int) -> dict:
    import ray

    from mer.train.fit import fit

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    for workers in (1, 2):
        job = make_job(root, run=f"run_w{workers}", epochs=epochs, num_workers=workers)
        start = time.perf_counter()
        ckpt = fit(fit_settings(job), "agt", 0, root / f"ckpt_w{workers}")
        wall = time.perf_counter() - start
        history = json.loads((ckpt / "config.json").read_text())["history"][0]
        out[workers] = {
            "fit_wall_s": wall,
            "epoch_s": statistics.median(h["epoch_seconds"] for h in history),
            "best_val_f1": max(h["val_f1"] for h in history),
        }
    ray.shutdown()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small store, few epochs (about a minute)")
    args = parser.parse_args(argv)
    n_train, epochs, dims = (1500, 3, 256) if args.quick else (6000, 5, 768)
    root = Path(tempfile.mkdtemp(prefix="mer_bench_train_"))
    job = make_job(root)
    write_synthetic_features(job, {"train": n_train, "test": n_train // 4}, dims={"audio": dims, "video": dims, "text": dims})
    torch.set_num_threads(1)  # both variants on the same single core: the ratio is about I/O, not threads
    print(f"store {root / 'store'}: {n_train} train samples, 3 roles x {dims} dims, seq_len 16 (audio, video)")
    read = bench_read(job, epochs)
    print(f"read from store (numpy path, all roles): {read['read_seconds']:.2f} s")
    print(f"epoch, tensors in memory:               {read['epoch_in_memory_s']:.2f} s")
    print(f"epoch, numpy path incl. read/{epochs} epochs:  {read['epoch_numpy_path_incl_read_s']:.2f} s"
          f"  ratio {read['ratio_numpy_path']:.2f}x (target <= 1.2x)")
    print(f"epoch, streaming path (Lance take):     {read['epoch_streaming_path_s']:.2f} s"
          f"  ratio {read['ratio_streaming_path']:.2f}x")
    workers = bench_workers(root, epochs)
    for n, w in workers.items():
        print(f"Ray Train num_workers={n}: fit wall {w['fit_wall_s']:.1f} s, median epoch {w['epoch_s']:.2f} s, "
              f"best val F1 {w['best_val_f1']:.3f}")
    print(f"speed-up 2 vs 1 workers (epoch): {workers[1]['epoch_s'] / workers[2]['epoch_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
