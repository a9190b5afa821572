"""Issue 15 quality bar: text-only weighted F1 on frozen vs fine-tuned vs cross-fitted fine-tuned MiniLM.

Two corpora, train and test transcripts with their labels (``plan_corpus``, no
media; the unlabeled split plays no part here): ``demo`` (the demo corpus,
seed 0) and ``heldout`` (what ``mer demo-data OUT --style heldout --seed 101``
writes: other speakers' situation transcripts, nothing was tuned on it). For
each seed, MiniLM is fine-tuned cross-fitted (``finetune.folds`` models on the
other folds' rows, plus the full model on every train row; DeepSpeed ZeRO-2 on 2
Ray Train CPU workers; folds and init seeded with the seed). The single
fine-tune is that full model: same settings and rows, hence the same
fingerprint, so it is copied into its own folder, where the single-model stage
(``finetune.folds: 0``) finds it finished and only re-extracts every row with
it. The fold-average variant (``finetune.crossfit_other: average``) gets copies
of the same fold models, so its stage only extracts: train rows as the
cross-fit's, the test rows with the mean of the fold models. Each feature set gets the same classifiers with the same seed
(``mer.train.fit``): ``linear`` (logistic regression, the baseline every quality
table shows) and ``unimodal`` (the MLP of the first version of this benchmark);
weighted F1 on the test split, and F1 of worried and sad (the classes the test
split has far more of than train). Target: cross-fitted >= frozen + 2 points.

Run: .venv/bin/python benchmarks/finetune_text_quality.py [--out runs/bench_finetune] [--epochs 3] [--folds 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

CORPORA = {"demo": {"seed": 0, "style": "demo"}, "heldout": {"seed": 101, "style": "heldout"}}
CLASSIFIERS = ("linear", "unimodal")
FEATURES = ("frozen", "finetuned", "crossfit", "crossfit_avg")
SHIFTED = ("worried", "sad")  # per-class F1 every quality table shows


def write_text_manifest(out: Path, seed: int, style: str) -> Path:
    """The train and test transcripts of the 240/240/120 corpus ``mer demo-data`` draws with ``seed`` and ``style``."""
    from mer.corpus.demo import plan_corpus

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "video", "audio", "text", "label", "split"])
        for spec, split, texts in plan_corpus(240, 240, 120, seed=seed, style=style):
            if split != "unlabeled":
                w.writerow([spec.sample_id, "", "", texts["english"], spec.emotion, split])
    return out / "manifest.csv"


def test_scores(job, ckpt: Path) -> dict:
    """Weighted F1 and the F1 of worried and sad of a checkpoint on the test split."""
    from mer.metrics import evaluate
    from mer.train.predict import predict

    truth = pd.read_csv(job.manifest, keep_default_na=False)
    metrics = evaluate(predict(ckpt, job.store, "test"), truth[truth["split"] == "test"], job.labels)
    return {"wf1": metrics["weighted_f1"], **{label: metrics["per_class"][label]["f1"] for label in SHIFTED}}


def fit_and_score(job, model: str, seed: int, out: Path) -> dict:
    from mer.config import with_values
    from mer.train.fit import fit

    return test_scores(job, fit(with_values(job, {"train.model": model}), model, seed, out))


def single_from_crossfit(crossfit_out: Path, single_out: Path) -> None:
    """The cross-fit's full model alone (its top-level files, no folds, no record): a single fine-tune's export."""
    from mer.finetune.crossfit import RECORD_FILE

    single_out.mkdir(parents=True, exist_ok=True)
    for file in crossfit_out.iterdir():
        if file.is_file() and file.name != RECORD_FILE:
            shutil.copy2(file, single_out / file.name)


def folds_from_crossfit(crossfit_out: Path, average_out: Path) -> None:
    """The cross-fit's fold models alone: what ``crossfit_other: average`` would have trained."""
    from mer.finetune.crossfit import FOLDS_DIR

    if not (average_out / FOLDS_DIR).exists():
        shutil.copytree(crossfit_out / FOLDS_DIR, average_out / FOLDS_DIR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_finetune")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--corpora", default="demo,heldout")
    args = parser.parse_args()

    from mer.config import job_from_dict, with_values
    from mer.extract.stage import run as extract
    from mer.finetune.stage import run as finetune_stage
    from mer.runner import ensure_ray

    out = Path(args.out).resolve()
    ensure_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def job(corpus: str, seed: int, **finetune):
        root = out / corpus
        return job_from_dict({
            "name": "bench_finetune", "manifest": str(root / "corpus" / "manifest.csv"), "store": str(root / "store"),
            "run_dir": str(root / f"run_s{seed}"),
            "encoders": {"text": {"alias": "minilm", "seq_len": 8}},
            "train": {"unimodal_role": "text", "epochs": 30, "use_seq": True},
            "finetune": {
                "role": "text", "epochs": args.epochs, "lr": 5e-5, "batch_size": 8, "num_workers": 2, "seed": seed,
                "max_length": 64, "gradient_checkpointing": False, "folds": args.folds,
                "out": str(root / f"crossfit_s{seed}"), "deepspeed": {"zero_optimization": {"stage": 2}}, **finetune,
            },
        })

    corpora = args.corpora.split(",")
    for corpus in corpora:
        write_text_manifest(out / corpus / "corpus", **CORPORA[corpus])
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for corpus in corpora:
            frozen = job(corpus, seed)
            extract(frozen, roles=["text"])  # the same table for every seed: extracted once
            start = time.perf_counter()
            summary = finetune_stage(frozen)
            crossfit = with_values(frozen, summary["job_updates"])
            minutes = (time.perf_counter() - start) / 60
            single_out = out / corpus / f"finetuned_s{seed}"
            single_from_crossfit(Path(summary["out"]), single_out)
            single = job(corpus, seed, folds=0, out=str(single_out))
            single_summary = finetune_stage(single)
            assert single_summary["skipped"], "the full model's fingerprint should match the single fine-tune's"
            finetuned = with_values(single, single_summary["job_updates"])
            average_out = out / corpus / f"crossfit_avg_s{seed}"
            folds_from_crossfit(Path(summary["out"]), average_out)
            average = job(corpus, seed, crossfit_other="average", out=str(average_out))
            average_summary = finetune_stage(average)
            assert average_summary["skipped"], "the fold models' fingerprints should match the cross-fit's"
            averaged = with_values(average, average_summary["job_updates"])
            for model in CLASSIFIERS:
                row = {"corpus": corpus, "seed": seed, "classifier": model, "crossfit_minutes": round(minutes, 1)}
                for name, features in (("frozen", frozen), ("finetuned", finetuned), ("crossfit", crossfit),
                                       ("crossfit_avg", averaged)):
                    scores = fit_and_score(features, model, seed, out / corpus / f"clf_{name}_{model}_s{seed}")
                    row[name] = scores.pop("wf1")
                    row.update({f"{name}_{label}": f1 for label, f1 in scores.items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    for (corpus, model), group in table.groupby(["corpus", "classifier"], sort=False):
        figures = ", ".join(f"{name} {group[name].mean():.4f} +- {group[name].std():.4f}" for name in FEATURES)
        gains = ", ".join(f"{name} - frozen = {100 * (group[name].mean() - group['frozen'].mean()):+.1f}"
                          for name in ("crossfit", "crossfit_avg"))
        print(f"{corpus} / {model} ({len(group)} seeds): weighted F1 {figures}; {gains} points")
        for label in SHIFTED:
            print(f"    F1 {label}: " + ", ".join(f"{name} {group[f'{name}_{label}'].mean():.3f}" for name in FEATURES))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
