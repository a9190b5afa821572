"""Extraction benchmark: ratios measured side by side in one run, same encoder and samples.

1. mer extraction (Ray Data decode tasks -> encoder actor -> LanceDB) vs a bare
   in-process loop of the same encoder over pre-decoded inputs (the limit of this
   machine; target >= 0.9x on a model-bound encoder);
2. mer vs a MERTools-style loop (for each file: decode, forward one sample,
   ``np.save`` one .npy; target >= 1.5x);
3. 1 vs 2 encoder actors;
4. peak memory of mer on N clips vs 10 N clips (target within 1.3x): the
   summed PSS of this process and every process under it (raylet, workers), so
   shared pages such as the object store count once.

Encoders: ``hf_audio`` is a HuBERT built from a config (random weights, 6 layers
of width 384: model-bound like the real one, smaller) over real demo mp4 audio;
``minilm`` is the real all-MiniLM-L6-v2 over transcripts. Clips repeat a small
demo corpus under distinct sample ids (decode cost is real; rendering 2,000
clips is not what is measured).

Run: .venv/bin/python benchmarks/extract.py [--quick] [--encoders hf_audio,minilm]
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


def tree_pss_mb() -> float:
    """PSS of this process and all its descendants, in MB."""
    total = 0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


class PeakMemory:
    """Sample ``tree_pss_mb`` every ``interval`` s in a thread; ``peak`` after exit."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mb())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss_mb())


def make_rows(corpus: Path, n: int) -> pd.DataFrame:
    """``n`` manifest rows cycling over the demo corpus's clips (distinct ids)."""
    base = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False)
    idx = np.arange(n) % len(base)
    return pd.DataFrame(
        {
            "sample_id": [f"c{i:05d}" for i in range(n)],
            "split": "unlabeled",
            "label": None,
            "video": [str(corpus / base["video"].iloc[j]) for j in idx],
            "audio": None,
            "text": [f"{base['text'].iloc[j]} ({i})" for i, j in enumerate(idx)],
        }
    )


def tiny_hubert(folder: Path) -> str:
    """A HuBERT from a config (6 x 384, random weights): model-bound on CPU, no download."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536)
    HubertModel(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return str(folder)


def bare_loop(spec, rows: pd.DataFrame) -> float:
    """Seconds for the encoder alone over pre-decoded inputs, in batches, in this process."""
    from mer.encoders import build_encoder

    enc = build_encoder(spec)
    enc.ensure_loaded()
    inputs = [enc.prepare(r) for r in rows.to_dict("records")]  # decoded before the clock starts
    start = time.perf_counter()
    for i in range(0, len(inputs), spec.batch_size):
        enc.encode(inputs[i : i + spec.batch_size])
    return time.perf_counter() - start


def mertools_loop(spec, rows: pd.DataFrame, out: Path) -> tuple[float, float]:
    """MERTools' shape: per file decode, forward one sample, np.save one .npy.

    Returns (total seconds, seconds spent decoding): decoding is the only part
    a pipeline can hide behind the model when both compete for the same cores.
    """
    from mer.encoders import build_encoder

    enc = build_encoder(spec)
    enc.ensure_loaded()  # MERTools loads the model before its loop too
    out.mkdir(parents=True, exist_ok=True)
    decode = 0.0
    start = time.perf_counter()
    for r in rows.to_dict("records"):
        tick = time.perf_counter()
        item = enc.prepare(r)
        decode += time.perf_counter() - tick
        vector, seq = enc.encode([item])[0]
        np.save(out / f"{r['sample_id']}.npy", seq if seq is not None else vector)
    return time.perf_counter() - start, decode


def mer_run(spec, rows: pd.DataFrame, store: str, actors: int) -> tuple[float, dict, float]:
    """Seconds, summary and peak tree PSS (MB) of ``extract_rows`` into a fresh store."""
    from mer.config import ExtractConfig
    from mer.extract.pipeline import extract_rows

    with PeakMemory() as mem:
        start = time.perf_counter()
        summary = extract_rows(rows, spec, store, ExtractConfig(num_actors=actors), progress=False)
        seconds = time.perf_counter() - start
    assert summary["written"] == len(rows), summary
    return seconds, summary, mem.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    ap.add_argument("--encoders", default="hf_audio,minilm", help="comma-separated: hf_audio, minilm")
    ap.add_argument("--n", type=int, default=None, help="clips for the speed ratios")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--mem-n", type=int, default=None, help="small run of the memory test (large = 10x)")
    args = ap.parse_args()
    n = args.n or (32 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 2)
    mem_n = args.mem_n or (40 if args.quick else 200)

    import ray

    from mer.config import EncoderSpec
    from mer.corpus.demo import make_demo_corpus
    from mer.runner import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="mer_bench_"))
    corpus = work / "corpus"
    make_demo_corpus(corpus, n_train=24, n_unlabeled=8, n_test=8, seed=0)
    ensure_ray(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"machine: {os.cpu_count()} CPUs, GPUs: {int(ray.cluster_resources().get('GPU', 0))}, "
          f"load average {os.getloadavg()[0]:.1f}; work dir {work}")
    rows = make_rows(corpus, n)
    lines = []
    for name in args.encoders.split(","):
        if name == "hf_audio":
            spec = EncoderSpec(alias="hf_audio", model=tiny_hubert(work / "hubert"), batch_size=8)
        else:
            spec = EncoderSpec(alias=name, batch_size=32)
        # Interleaved rounds, best of each: other load on a shared machine hits every method alike.
        t = {"bare": [], "mertools": [], "decode": [], "mer1": [], "mer2": [], "steady1": [], "steady2": []}
        for r in range(repeats):
            t["bare"].append(bare_loop(spec, rows))
            total, decode = mertools_loop(spec, rows, work / f"npy_{name}_{r}")
            t["mertools"].append(total)
            t["decode"].append(decode)
            for actors in (1, 2):
                sec, summary, _ = mer_run(spec, rows, str(work / f"store_{name}_{actors}_{r}"), actors)
                t[f"mer{actors}"].append(sec)
                t[f"steady{actors}"].append(summary["steady_samples_per_s"])
        bare, mert, one, two = (min(t[k]) for k in ("bare", "mertools", "mer1", "mer2"))
        steady1, steady2 = max(t["steady1"]), max(t["steady2"])
        decode = t["decode"][int(np.argmin(t["mertools"]))]
        lines += [
            f"[{name}] {n} clips, batch {spec.batch_size}, best of {repeats} interleaved rounds",
            f"  bare in-process loop (pre-decoded) : {bare:7.1f} s  {n / bare:7.2f} clips/s",
            f"  MERTools-style loop (per file)    : {mert:7.1f} s  {n / mert:7.2f} clips/s",
            f"  mer extract, 1 actor              : {one:7.1f} s  {n / one:7.2f} clips/s (after startup {steady1:.2f})",
            f"  mer extract, 2 actors             : {two:7.1f} s  {n / two:7.2f} clips/s (after startup {steady2:.2f})",
            f"  ratio mer(1) / bare               : {bare / one:5.2f}x wall, {steady1 * bare / n:5.2f}x after startup (target >= 0.9x)",
            f"  ratio mer(1) / MERTools-style     : {mert / one:5.2f}x wall, {steady1 * mert / n:5.2f}x after startup (target >= 1.5x)",
            f"  MERTools-style time decoding      : {decode / mert:5.1%} -> hiding all of it behind the model: "
            f"at most {mert / max(mert - decode, 1e-9):4.2f}x on these cores",
            f"  ratio 2 actors / 1 actor          : {one / two:5.2f}x wall, {steady2 / max(steady1, 1e-9):5.2f}x after startup",
        ]
        print("\n".join(lines[-9:]), flush=True)

    mem_spec = EncoderSpec(alias="logmel", batch_size=16)
    small_rows, big_rows = make_rows(corpus, mem_n), make_rows(corpus, 10 * mem_n)
    t_small, _, pss_small = mer_run(mem_spec, small_rows, str(work / "mem_small"), actors=1)
    t_big, _, pss_big = mer_run(mem_spec, big_rows, str(work / "mem_big"), actors=1)
    lines += [
        "[memory] logmel, peak PSS of driver + Ray processes",
        f"  {mem_n:5d} clips: {pss_small:7.0f} MB ({t_small:.1f} s)",
        f"  {10 * mem_n:5d} clips: {pss_big:7.0f} MB ({t_big:.1f} s)",
        f"  ratio {pss_big / pss_small:.2f}x  (target <= 1.3x)",
    ]
    print("\n".join(lines[-4:]))
    print(f"\n== summary (load average at the end {os.getloadavg()[0]:.1f})\n" + "\n".join(lines))
    ray.shutdown()


if __name__ == "__main__":
    main()
