"""Serving a trained run: Ray Serve with batching on vs off; ``mer predict --run`` vs the store pipeline.

Prints, side by side in one run (loopback only, bounded in requests and time):

1. ``mer serve``'s app: clips/s and p50/p99 latency at 1, 4 and 16 concurrent
   clients uploading demo clips, for an app with ``max_batch_size`` 1
   (batching off) and one with 8, both deployed at once and measured in
   alternating chunks (``--requests`` per level and mode, none started after
   ``--level-seconds``).
2. ``mer predict --run RUN --manifest M`` against the store pipeline on the
   same clips (``mer run`` of validate + extract into a fresh store, then
   ``mer predict --checkpoint ... --split unlabeled``), each a fresh process as a
   user runs it, with the run's final predictor's checkpoints, as a wall-time
   ratio; plus the largest probability difference between the two (for a seed
   ensemble; ~0 expected).

Run: ``python benchmarks/serve.py [--run RUN_DIR] [--clips 100] [--requests 48] [--level-seconds 60]``.
Without ``--run`` it first trains a tiny run (40 demo clips, one AGT seed,
like tests/test_serve.py); the clips measured are other demo clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from mer.config import job_from_dict, load_job
from mer.corpus.demo import make_demo_corpus
from mer.runner import ensure_ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_run import train_tiny_run  # noqa: E402
from mer.runfolder import ENSEMBLE, RunFolder

LEVELS = (1, 4, 16)
MER = [sys.executable, "-c", "from mer.cli import main; main()"]


def tiny_run(root: Path) -> Path:
    """The tests' trained run (validate, extract, train; one AGT seed, 3 epochs)."""
    return Path(train_tiny_run(root, "bench_serve").run_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(url: str, clips: list[tuple[str, bytes, str]], clients: int, count: int,
         deadline: float) -> tuple[list, float]:
    """``count`` uploads from ``clients`` threads; none is started after ``deadline``.

    Returns:
        ``(latencies in seconds, wall seconds)``.
    """
    def one(i: int) -> float | None:
        if time.perf_counter() > deadline:
            return None
        name, data, text = clips[i % len(clips)]
        start = time.perf_counter()
        reply = requests.post(f"{url}/predict", files={"file": (name, data)}, data={"text": text}, timeout=300)
        reply.raise_for_status()
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for t in pool.map(one, range(count)) if t is not None]
    return latencies, time.perf_counter() - start


def level(urls: dict[int, str], clips, clients: int, count: int, seconds: float, rounds: int = 3) -> dict[int, dict]:
    """Both apps at one concurrency, in ``rounds`` alternating chunks so machine load drifts hit both alike."""
    done = {batch: ([], 0.0) for batch in urls}
    for _ in range(rounds):
        for batch, url in urls.items():
            spent = done[batch][1]  # each mode gets ``seconds`` in all
            latencies, wall = load(url, clips, clients, max(clients, count // rounds),
                                   time.perf_counter() + max(0.0, seconds - spent))
            done[batch] = (done[batch][0] + latencies, spent + wall)
    return {batch: {"clips_s": len(lat) / wall, "p50_ms": 1000 * np.percentile(lat, 50),
                    "p99_ms": 1000 * np.percentile(lat, 99), "n": len(lat)} for batch, (lat, wall) in done.items()}


def serve_part(run_dir: Path, clips: list[tuple[str, bytes, str]], count: int, seconds: float) -> None:
    """Throughput and latency per concurrency level, batching off vs on."""
    from ray import serve

    from mer.serve.app import ServeArgs, start

    port = free_port()
    urls = {batch: start(ServeArgs(run_dir=str(run_dir), max_batch_size=batch), "127.0.0.1", port,
                         name=f"batch{batch}", route_prefix=f"/batch{batch}") for batch in (1, 8)}
    for url in urls.values():  # warm up: first request pays lazy imports
        load(url, clips, 1, 2, time.perf_counter() + seconds)
    print("\n## Ray Serve on loopback (demo clips uploaded with their transcript; 1 CPU per replica)")
    print("| clients | off: clips/s | off: p50 ms | off: p99 ms | on (8): clips/s | on: p50 ms | on: p99 ms "
          "| on/off clips/s | requests off/on |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for clients in LEVELS:
            off, on = level(urls, clips, clients, count, seconds).values()
            print(f"| {clients} | {off['clips_s']:.1f} | {off['p50_ms']:.0f} | {off['p99_ms']:.0f} | "
                  f"{on['clips_s']:.1f} | {on['p50_ms']:.0f} | {on['p99_ms']:.0f} | "
                  f"{on['clips_s'] / off['clips_s']:.2f}x | {off['n']}/{on['n']} |")
    finally:
        serve.shutdown()


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def predict_part(run_dir: Path, manifest: Path, root: Path) -> None:
    """``mer predict --run`` vs validate + extract + ``mer predict --checkpoint`` on the same manifest."""
    run_job_file = root / "store_pipeline.yaml"
    job = load_job(run_dir / "config.yaml")
    data = {**dataclasses.asdict(job), "name": "bench_store", "manifest": str(manifest),
            "store": str(root / "new_store"), "run_dir": str(root / "new_run"), "stages": ["validate", "extract"]}
    run_job_file.write_text(job_from_dict(data).to_yaml())
    final = RunFolder(run_dir).final_predictor()
    checkpoints = [str(c) for paths in final.checkpoints.values() for c in paths]
    direct = timed([*MER, "predict", "--run", str(run_dir), "--manifest", str(manifest),
                    "--out", str(root / "direct.csv")])
    extract = timed([*MER, "run", str(run_job_file)])
    predict = timed([*MER, "predict", *[a for c in checkpoints for a in ("--checkpoint", c)], "--split", "unlabeled",
                     "--store", str(root / "new_store"), "--out", str(root / "stored.csv")])
    a = pd.read_csv(root / "direct.csv").set_index("sample_id").sort_index()
    b = pd.read_csv(root / "stored.csv").set_index("sample_id").loc[a.index]
    probs = [c for c in a.columns if c.startswith("p_")]
    n = len(a)
    print(f"\n## {n} clips: `mer predict --run` vs the store pipeline (each a fresh process)")
    print("| path | wall s | clips/s |")
    print("|---|---|---|")
    print(f"| mer predict --run RUN --manifest M | {direct:.1f} | {n / direct:.1f} |")
    print(f"| mer run (validate + extract) {extract:.1f} s + mer predict --checkpoint --split {predict:.1f} s "
          f"| {extract + predict:.1f} | {n / (extract + predict):.1f} |")
    # a self-trained run votes its models; `mer predict --checkpoint` averages them: only an ensemble compares
    same = (f"max |p difference| {np.abs(a[probs].to_numpy() - b[probs].to_numpy()).max():.1e}"
            if final.kind == ENSEMBLE else "probabilities not compared (vote vs mean)")
    print(f"store pipeline / predict --run: **{(extract + predict) / direct:.2f}x** wall; {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="trained run (default: train a tiny one first)")
    parser.add_argument("--clips", type=int, default=100, help="clips for the predict comparison")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level and mode")
    parser.add_argument("--level-seconds", type=float, default=60.0,
                        help="time cap per level and mode (no request starts after it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mer-bench-serve-") as tmp:
        root = Path(tmp)
        ensure_ray(log_to_driver=False)  # replicas log every request; keep the tables readable
        run_dir = args.run or tiny_run(root)
        manifest = make_demo_corpus(root / "clips", n_train=0, n_unlabeled=args.clips, n_test=0, seed=11, workers=1)
        rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        clips = [(Path(r.video).name, (manifest.parent / r.video).read_bytes(), r.text) for r in rows.itertuples()]
        serve_part(run_dir, clips, args.requests, args.level_seconds)
        import ray

        ray.shutdown()  # the store pipeline starts its own Ray, as `mer run` does
        predict_part(run_dir, manifest, root)


if __name__ == "__main__":
    main()
