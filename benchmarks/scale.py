"""Scale benchmark: validate, extract and one streamed training pass at N rows vs N/10 rows, side by side.

What a user with a large corpus runs, in one process and one Ray instance:

1. ``validate_manifest`` (probe and packet walk of every referenced mp4) on a
   manifest of ``--n`` rows (default 20,000) and of ``--n / 10`` rows; rows/s
   and peak memory;
2. ``extract_rows`` of the light text encoder ``minilm`` (the real
   all-MiniLM-L6-v2, one actor) over the clean rows; rows/s and peak memory;
3. one streamed training pass (``mer.train.data`` with ``streaming=True``:
   Lance random access per batch, shuffled order, pooled vector and ``seq``)
   over every stored row; seconds and peak memory.

Memory is the peak, sampled every 0.5 s, of the summed PSS of this process
and every process under it (raylet, GCS, Ray workers): shared pages such as
the object store count once. The driver's own peak RSS is shown beside it.
Target: the large run's peak within 1.3x of the small one's.

The manifests repeat a small demo corpus's clips under distinct sample ids
(media paths relative to the manifest's folder, as ``mer demo-data`` writes
them; texts get a distinct suffix): decode and probe costs are real, rendering
20,000 clips is not what is measured.

4. Where mer pays off on CPU: mer extraction against the MERTools-style loop
   (per file: decode, forward one sample, ``np.save``) at ``--crossover``
   sizes, for ``minilm`` (text) and ``logmel`` (audio decoded from the mp4s).
   mer's time is shown with and without starting Ray (``ray.init``, paid once
   per ``mer run``).

Run: .venv/bin/python benchmarks/scale.py [--n 20000] [--crossover 100,500,2500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

# benchmarks/extract.py (this folder is on sys.path when a script here runs)
from extract import make_rows, mer_run, mertools_loop, tree_pss_mb

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


class Peak:
    """Sample the process tree's PSS and this process's RSS every ``interval`` s; peaks (MB) after exit."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.tree, self.driver = interval, 0.0, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        self.tree = max(self.tree, tree_pss_mb())
        self.driver = max(self.driver, psutil.Process().memory_info().rss / 2**20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()
        self._sample()


def write_manifest(corpus: Path, n: int) -> Path:
    """``corpus/manifest_<n>.csv``: ``n`` rows cycling over the corpus's clips, distinct ids and texts.

    Splits and labels follow the clip repeated, so the validated rows have the
    demo corpus's mix of train, unlabeled and test.
    """
    base = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False)
    idx = np.arange(n) % len(base)
    rows = base.iloc[idx].reset_index(drop=True)
    rows["sample_id"] = [f"s{i:06d}" for i in range(n)]
    rows["text"] = [f"{t} ({i})" for i, t in enumerate(rows["text"])]
    path = corpus / f"manifest_{n}.csv"
    rows.to_csv(path, index=False)
    return path


def stream_pass(store: str, table: str, batch_size: int, seed: int = 0) -> int:
    """One shuffled pass over every row of ``table`` through the streaming read path; rows read."""
    from mer.store import open_store
    from mer.train.data import make_plan, read_plan, resolve_table

    alias, version = table.split("__")[1:]
    role = resolve_table(open_store(store), "text", alias, version, seq_len=16)
    data = read_plan(make_plan(store, {"text": role}, budget_gb=0.0, streaming=True))
    order = np.random.default_rng(seed).permutation(len(data))
    read = 0
    for i in range(0, len(order), batch_size):
        batch = data.batch(order[i:i + batch_size])
        read += int(batch["text"]["present"].sum())
    return read


def scale_run(corpus: Path, n: int, work: Path) -> dict:
    """Validate, extract (minilm) and stream ``n`` rows; seconds and peaks per phase."""
    from mer.config import EncoderSpec, ExtractConfig
    from mer.corpus.validate import validate_manifest
    from mer.extract.pipeline import extract_rows

    manifest = write_manifest(corpus, n)
    out = {"n": n}
    with Peak() as mem:
        clean = validate_manifest(manifest, LABELS, check_media=True).clean
    assert len(clean) == n, f"{n - len(clean)} rows quarantined"
    out["validate"] = mem
    store = str(work / f"store_{n}")
    spec = EncoderSpec(alias="minilm", batch_size=64)
    with Peak() as mem:
        summary = extract_rows(clean[clean["has_text"]], spec, store, ExtractConfig(num_actors=1), progress=False)
    assert summary["written"] == n, summary
    out["extract"], out["extract_summary"] = mem, summary
    with Peak() as mem:
        read = stream_pass(store, summary["table"], batch_size=64)
    assert read == n, read
    out["stream"] = mem
    return out


def crossover(corpus: Path, sizes: list[int], work: Path, ray_start_s: float) -> list[str]:
    """mer extraction vs the MERTools-style loop at each size, per encoder; lines to print.

    The payoff size is where two least-squares lines ``seconds = fixed + per_clip * n``
    (one per method, over ``sizes``) cross, with and without Ray's start-up.
    """
    from mer.config import EncoderSpec

    lines = []
    for alias in ("minilm", "logmel"):
        spec = EncoderSpec(alias=alias, batch_size=32)
        lines.append(f"[payoff {alias}] mer (1 actor) vs MERTools-style loop; Ray start-up {ray_start_s:.1f} s")
        times = {"mert": [], "mer": []}
        for n in sizes:
            rows = make_rows(corpus, n)
            if alias == "logmel":
                rows = rows.assign(text=None)
            mert, _ = mertools_loop(spec, rows, work / f"npy_{alias}_{n}")
            mer, _, _ = mer_run(spec, rows, str(work / f"cross_{alias}_{n}"), actors=1)
            lines.append(f"  {n:6d} clips: MERTools-style {mert:7.1f} s | mer {mer:7.1f} s ({mert / mer:5.2f}x), "
                         f"with Ray start {mer + ray_start_s:7.1f} s ({mert / (mer + ray_start_s):5.2f}x)")
            print(lines[-1], flush=True)
            times["mert"].append(mert)
            times["mer"].append(mer)
        (mert_per, mert_fixed), (mer_per, mer_fixed) = (np.polyfit(sizes, times[k], 1) for k in ("mert", "mer"))
        lines.append(f"  fit: MERTools-style {mert_fixed:.1f} s + {1000 * mert_per:.1f} ms/clip, "
                     f"mer {mer_fixed:.1f} s + {1000 * mer_per:.1f} ms/clip")
        if mer_per < mert_per:
            pays = [(mer_fixed + extra - mert_fixed) / (mert_per - mer_per) for extra in (0.0, ray_start_s)]
            lines.append(f"  mer pays off from about {pays[0]:.0f} clips ({pays[1]:.0f} counting Ray start-up)")
        else:
            lines.append("  mer costs more per clip than the loop on these cores: it never pays off here")
        print("\n".join(lines[-2:]), flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="rows of the large run (the small one has n / 10)")
    ap.add_argument("--crossover", default="100,500,2500", help="comma-separated corpus sizes for the payoff check "
                                                               "('' skips it)")
    args = ap.parse_args()

    import ray

    from mer.corpus.demo import make_demo_corpus
    from mer.runner import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="mer_scale_"))
    corpus = make_demo_corpus(work / "corpus", n_train=24, n_unlabeled=8, n_test=8, seed=0).parent
    load = os.getloadavg()[0]
    start = time.perf_counter()
    ensure_ray(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - start
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start; work dir {work}", flush=True)

    # A warm-up run first: imports, Ray worker processes and the model cache then
    # exist before either measured run, so neither pays for them alone.
    scale_run(corpus, 100, work)
    runs = [scale_run(corpus, n, work) for n in (args.n // 10, args.n)]
    small, big = runs
    lines = ["[scale] minilm text encoder, 1 actor; peaks: PSS of driver + Ray processes (driver RSS)"]
    for phase in ("validate", "extract", "stream"):
        for r in runs:
            m = r[phase]
            lines.append(f"  {phase:8s} {r['n']:6d} rows: {m.seconds:7.1f} s {r['n'] / m.seconds:8.0f} rows/s  "
                         f"peak {m.tree:6.0f} MB ({m.driver:5.0f} MB driver)")
        lines.append(f"  {phase:8s} peak ratio {big['n']}/{small['n']}: {big[phase].tree / small[phase].tree:4.2f}x "
                     f"tree, {big[phase].driver / small[phase].driver:4.2f}x driver (target <= 1.3x)")
    s = big["extract_summary"]
    lines.append(f"  extract {big['n']} rows after start-up: {s['steady_samples_per_s']:.0f} rows/s "
                 f"(start-up {s['startup_s']:.1f} s; {s['resources']})")
    print("\n".join(lines), flush=True)
    sizes = [int(v) for v in args.crossover.split(",") if v]
    if sizes:
        lines += crossover(corpus, sizes, work, ray_start_s)
    print(f"\n== summary (load average at the end {os.getloadavg()[0]:.1f})\n" + "\n".join(lines))
    ray.shutdown()


if __name__ == "__main__":
    main()
