"""The prepared GPU check: the paper's three encoders at full size through mer's extraction, and AGT training.

One command on a machine with one CUDA GPU. It builds HuBERT-large, CLIP-ViT-L/14 and a Baichuan-13B-shaped
causal LM (40 layers x 5120, vocabulary 64,000, 13.3 B parameters; bf16 weights take 26.5 GB, so it fits a
40 GB or larger card) from their configs with random weights in bf16, renders real demo clips (``mer
demo-data``), and measures, per encoder, on the same GPU:

* mer's pipeline (``extract_rows``: Ray Data decode tasks on the CPUs, one encoder actor pinned to the GPU):
  clips/s, the GPU's busy fraction (``nvidia-smi`` sampled every 0.2 s), and which side is the bottleneck
  (decode seconds per clip over the CPUs against the GPU's seconds per clip);
* a MERTools-style loop (per file: decode, forward one sample, ``np.save``) in this process: clips/s;
* Whisper-large-v3's shape (d_model 1280, 32 + 32 layers, 20 heads, 128 mel bins; a small byte-level
  vocabulary, so the output layer is smaller than the real 51,866 tokens) through the ``asr`` stage's
  machinery (``extract_rows`` with an ``AsrSpec``: decode tasks, one recogniser actor on the GPU, batched
  ``generate`` of 64 tokens per window): clips/s and busy fraction;
* AGT training throughput on the GPU (samples/s of ``mer.train.learner.Learner`` epochs on synthetic
  features of the paper encoders' widths: audio 1024, video 768, text 5120, 16 steps each).

Figures go to one JSON file (``--out``). It finishes in under 8 minutes on an H100 (the largest part is
writing and loading the 13B model's 26.5 GB). ``--tiny`` runs the same code on the CPU with tiny configs
and 8 clips (CI runs it, so the script cannot rot).

Run: .venv/bin/python benchmarks/gpu.py --out gpu.json            (a CUDA machine)
     .venv/bin/python benchmarks/gpu.py --tiny --out gpu_tiny.json (anywhere)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from extract import make_rows, mertools_loop  # noqa: E402  (benchmarks/ helpers)
from tiny_whisper import build_tiny_whisper  # noqa: E402  (a random-weight Whisper of any size)

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
FULL = {
    "hubert": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   feat_extract_norm="layer", do_stable_layer_norm=True),
    "clip": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 patch_size=14, image_size=224),
    "baichuan": dict(vocab_size=64000, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                     intermediate_size=13696, model_max_length=4096),
    "whisper": dict(d_model=1280, layers=32, heads=20, mel_bins=128),  # openai/whisper-large-v3
}
TINY = {
    "hubert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "clip": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
                 image_size=224),
    "baichuan": dict(vocab_size=1024, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, model_max_length=256),
    "whisper": dict(d_model=64, layers=2, heads=4, mel_bins=80),
}


class GpuBusy:
    """``nvidia-smi`` utilisation sampled every 0.2 s while the block runs; mean busy fraction after it."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self._stop = enabled, [], threading.Event()

    def _run(self):
        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]) / 100)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join()

    @property
    def fraction(self) -> float | None:
        return round(float(np.mean(self.samples)), 3) if self.samples else None


def build_models(root: Path, sizes: dict, dtype) -> dict[str, Path]:
    """Model folders from configs with random weights: hubert, clip (vision tower + projection), baichuan."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        HubertConfig,
        HubertModel,
        Wav2Vec2FeatureExtractor,
    )

    from mer.encoders.baichuan import BaichuanConfig, BaichuanForCausalLM

    torch.manual_seed(0)
    folders = {name: root / name for name in sizes}
    HubertModel(HubertConfig(**sizes["hubert"])).to(dtype).save_pretrained(folders["hubert"])
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folders["hubert"])
    vision = sizes["clip"]
    text = dict(hidden_size=min(768, vision["hidden_size"]), num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=2 * min(768, vision["hidden_size"]))
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=min(768, vision["hidden_size"]))).to(
        dtype).save_pretrained(folders["clip"])
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        folders["clip"])
    # 13B: built directly in bf16 on the GPU (26.5 GB), never as a float32 copy in host RAM
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = BaichuanForCausalLM(BaichuanConfig(**sizes["baichuan"]))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folders["baichuan"], max_shard_size="5GB")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the encoder actor needs the card
    _tokenizer(folders["baichuan"])
    return folders


def _tokenizer(folder: Path) -> None:
    """A small sentencepiece ``tokenizer.model`` (byte fallback) trained on the demo's transcripts."""
    import sentencepiece as spm

    from mer.corpus.demo import NEUTRAL_TEXT, NEUTRAL_TEXT_ZH, TEXT, TEXT_ZH

    lines = [*NEUTRAL_TEXT, *NEUTRAL_TEXT_ZH, *sum(TEXT.values(), []), *sum(TEXT_ZH.values(), [])]
    rng = random.Random(0)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(rng.choice(lines) for _ in range(2000)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=1000,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    corpus.unlink()


def timed_extraction(name: str, spec, rows, store: str, cuda: bool):
    """``extract_rows`` with one actor on the device: (summary, seconds, busy sampler); every clip must land."""
    from mer.config import ExtractConfig
    from mer.extract.pipeline import extract_rows

    with GpuBusy(cuda) as busy:
        start = time.perf_counter()
        summary = extract_rows(rows, spec, store, ExtractConfig(num_actors=1, gpus_per_actor=1.0), progress=False)
        seconds = time.perf_counter() - start
    if summary["written"] != len(rows):
        raise SystemExit(f"{name}: {summary['failed']} of {len(rows)} clips failed: {summary}")
    return summary, seconds, busy


def measure_encoder(name: str, spec, rows, store: str, work: Path, cuda: bool) -> dict:
    """mer's pipeline and a MERTools-style loop over the same clips with one encoder, on one device."""
    from mer.encoders import build_encoder

    summary, mer_s, busy = timed_extraction(name, spec, rows, store, cuda)
    enc = build_encoder(spec)
    decode_s = time.perf_counter()
    for row in rows.head(min(16, len(rows))).to_dict("records"):
        enc.prepare(row)
    decode_per_clip = (time.perf_counter() - decode_s) / min(16, len(rows))
    loop_s, _ = mertools_loop(spec, rows, work / f"mertools_{name}", device="cuda" if cuda else "cpu")
    steady = summary.get("steady_samples_per_s") or 0.0
    cores = max(1, (os.cpu_count() or 2) - 1)  # one core feeds the actor
    decode_rate = cores / max(decode_per_clip, 1e-9)
    return {
        "clips": len(rows), "mer_clips_per_s": round(len(rows) / mer_s, 2), "mer_steady_clips_per_s": steady,
        "mer_startup_s": summary.get("startup_s"), "gpu_busy_fraction": busy.fraction,
        "mertools_loop_clips_per_s": round(len(rows) / loop_s, 2), "mer_over_mertools": round(loop_s / mer_s, 2),
        "decode_s_per_clip": round(decode_per_clip, 4), "decode_clips_per_s_all_cores": round(decode_rate, 1),
        "bottleneck": "decode CPUs" if steady and decode_rate < 1.1 * steady else "encoder (GPU)",
    }


def measure_recogniser(folder: Path, rows, store: str, cuda: bool) -> dict:
    """The ``asr`` stage's path (decode tasks, one recogniser actor on the device) over the clips."""
    from mer.config import AsrSpec

    spec = AsrSpec(engine="whisper", model=str(folder), language="zh", max_new_tokens=64,
                   dtype="bfloat16" if cuda else "float32")
    summary, seconds, busy = timed_extraction("whisper", spec, rows, store, cuda)
    return {"clips": len(rows), "clips_per_s": round(len(rows) / seconds, 2),
            "steady_clips_per_s": summary.get("steady_samples_per_s"), "startup_s": summary.get("startup_s"),
            "gpu_busy_fraction": busy.fraction, "max_new_tokens": spec.max_new_tokens}


def measure_training(dims: dict[str, int], n: int, epochs: int, device: str) -> dict:
    """AGT epochs on synthetic features of the paper encoders' widths (in memory, on ``device``)."""
    import torch

    from mer.config import TrainConfig
    from mer.train.data import ArraySource, MultiModalData, RoleData, RoleTable, make_plan
    from mer.train.learner import Learner, Rows

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, n)
    roles = {}
    for role, dim in dims.items():
        protos = rng.normal(size=(6, dim)).astype(np.float32)
        vector = protos[y] + rng.normal(size=(n, dim)).astype(np.float32)
        seq = vector[:, None] + rng.normal(size=(n, 16, dim)).astype(np.float32)
        table = RoleTable(role, "synthetic", "0", f"features__synthetic__{role}", 1, dim, 16, n)
        roles[role] = RoleData(table, ArraySource(vector, seq, np.ones((n, 16), bool)), np.arange(n))
    data = MultiModalData(ids=np.array([f"s{i}" for i in range(n)]), split=np.full(n, "train"),
                          label=np.asarray(LABELS, object)[y], roles=roles,
                          plan=make_plan("", {r: d.table for r, d in roles.items()}, 0.0, False))
    rows = Rows(np.arange(n - n // 10), np.arange(n - n // 10, n), y.astype(np.int64))
    cfg = TrainConfig(epochs=epochs + 1, batch_size=64)
    learner = Learner("agt", data, rows, cfg, 6, 0, torch.device(device))
    learner.epoch()  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        learner.epoch()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"samples": len(rows.train), "epochs": epochs, "samples_per_s": round(epochs * len(rows.train) / seconds, 1),
            "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny configs on the CPU, 8 clips (CI).")
    parser.add_argument("--clips", type=int, default=None, help="Clips per encoder (default 96, tiny 8).")
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--work", default=None, help="Scratch folder (default: a temporary one).")
    args = parser.parse_args()
    import ray
    import torch

    from mer.config import EncoderSpec
    from mer.corpus.demo import make_demo_corpus
    from mer.runner import ensure_ray

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA device: run with --tiny for the CPU check")
    clips = args.clips or (8 if args.tiny else 96)
    work = Path(args.work or tempfile.mkdtemp(prefix="mer_gpu_"))
    started = time.perf_counter()
    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "tiny": args.tiny,
              "torch": torch.__version__, "encoders": {}, "sizes": {}}
    corpus = make_demo_corpus(work / "demo", n_train=clips, n_unlabeled=0, n_test=0, seed=0).parent
    rows = make_rows(corpus, clips)
    sizes = TINY if args.tiny else FULL
    dtype = torch.bfloat16 if cuda else torch.float32
    tick = time.perf_counter()
    folders = build_models(work / "models", sizes, dtype)
    whisper = build_tiny_whisper(work / "models" / "whisper", **sizes["whisper"])
    result["build_models_s"] = round(time.perf_counter() - tick, 1)
    for name, folder in {**folders, "whisper": whisper}.items():
        stored = 2 if cuda and name != "whisper" else 4  # bytes per weight: the Whisper folder is float32
        params = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / stored
        result["sizes"][name] = {"parameters": int(params), **sizes[name]}
    ensure_ray(num_gpus=1 if cuda else 0, include_dashboard=False)
    dt = "bfloat16" if cuda else "float32"
    layers = [-2, -1] if args.tiny else [-4, -3, -2, -1]  # MERTools' last four (two in the 2-layer tiny models)
    specs = {
        "hubert": EncoderSpec(alias="hf_audio", model=str(folders["hubert"]), layers=layers, seq_len=16,
                              max_seconds=10, dtype=dt, batch_size=8),
        "clip": EncoderSpec(alias="hf_clip", model=str(folders["clip"]), num_frames=8, seq_len=8, dtype=dt, batch_size=8),
        "baichuan": EncoderSpec(alias="hf_text", model=str(folders["baichuan"]), layers=layers, seq_len=16, dtype=dt,
                                batch_size=8),
    }
    for name, spec in specs.items():
        result["encoders"][name] = measure_encoder(name, spec, rows, str(work / "store"), work, cuda)
        print(f"{name}: {result['encoders'][name]}", flush=True)
        if name == "baichuan":
            shutil.rmtree(folders["baichuan"])  # 26.5 GB of disk back before training
    result["whisper"] = measure_recogniser(whisper, rows, str(work / "store"), cuda)
    print(f"whisper: {result['whisper']}", flush=True)
    ray.shutdown()
    dims = {"audio": 1024, "video": 768, "text": 5120} if not args.tiny else {"audio": 16, "video": 12, "text": 20}
    result["agt_training"] = measure_training(dims, 4096 if cuda else 256, 3 if cuda else 1, "cuda" if cuda else "cpu")
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
