"""Issue 8 quality bar: text-only weighted F1, fine-tuned vs frozen MiniLM features.

Same corpus (the demo corpus's train and test transcripts and labels:
``plan_corpus`` with the demo sizes and seed, no media; the unlabeled split is
left out, it plays no part here), same classifier (the project's
``unimodal`` model on the text role, ``mer.train.fit``), 3 seeds. For each seed
MiniLM is fine-tuned on the train split with DeepSpeed ZeRO-2 on 2 Ray Train
CPU workers (seeded with the same seed), exported, and re-extracted; the
classifier is trained on the frozen features and on the fine-tuned ones.

Run: .venv/bin/python benchmarks/finetune_text_quality.py [--out runs/bench_finetune] [--epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_text_manifest(out: Path) -> Path:
    from mer.corpus.demo import plan_corpus

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "video", "audio", "text", "label", "split"])
        for spec, split, text in plan_corpus(240, 240, 120, seed=0):
            if split != "unlabeled":
                w.writerow([spec.sample_id, "", "", text, spec.emotion, split])
    return out / "manifest.csv"


def weighted_f1(job, seed: int, out: Path) -> float:
    from mer.report.metrics import evaluate
    from mer.train.fit import fit
    from mer.train.predict import predict

    ckpt = fit(job, "unimodal", seed, out)
    pred = predict(ckpt, job.store, "test")
    truth = pd.read_csv(job.manifest, keep_default_na=False)
    return evaluate(pred, truth[truth["split"] == "test"], job.labels)["weighted_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_finetune")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()

    from mer.config import job_from_dict, with_values
    from mer.extract.stage import run as extract
    from mer.finetune.stage import run as finetune_stage
    from mer.runner import ensure_ray

    out = Path(args.out).resolve()
    manifest = write_text_manifest(out / "corpus")
    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def job(seed: int, model: str | None = None):
        return job_from_dict({
            "name": "bench_finetune", "manifest": str(manifest), "store": str(out / "store"),
            "run_dir": str(out / f"run_s{seed}"),
            "encoders": {"text": {"alias": "minilm", "model": model, "seq_len": 8}},
            "train": {"model": "unimodal", "unimodal_role": "text", "epochs": 30, "use_seq": True},
            "finetune": {
                "role": "text", "epochs": args.epochs, "lr": 5e-5, "batch_size": 8, "num_workers": 2, "seed": seed,
                "max_length": 64, "gradient_checkpointing": False, "out": str(out / f"finetuned_s{seed}"),
                "deepspeed": {"zero_optimization": {"stage": 2}},
            },
        })

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        frozen = job(seed)
        extract(frozen, roles=["text"])
        f1_frozen = weighted_f1(frozen, seed, out / f"clf_frozen_s{seed}")
        tuned = job(seed)
        start = time.perf_counter()
        summary = finetune_stage(tuned)  # exports, re-extracts, names the export in job_updates
        tuned = with_values(tuned, summary["job_updates"])
        minutes = (time.perf_counter() - start) / 60
        f1_tuned = weighted_f1(tuned, seed, out / f"clf_tuned_s{seed}")
        rows.append({"seed": seed, "frozen_wf1": f1_frozen, "finetuned_wf1": f1_tuned,
                     "finetune_loss_first": summary["losses"][0], "finetune_loss_last": summary["losses"][-1],
                     "finetune_minutes": round(minutes, 1)})
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"mean weighted F1: frozen {table.frozen_wf1.mean():.4f} +- {table.frozen_wf1.std():.4f}, "
          f"fine-tuned {table.finetuned_wf1.mean():.4f} +- {table.finetuned_wf1.std():.4f}")
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
