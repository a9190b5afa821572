"""Generalization check: mer's recipe against a linear probe on corpora nothing was tuned on.

Per corpus (the demo corpus, and ``mer demo-data --style heldout`` corpora with
seeds that no setting was ever chosen on): extract logmel / frames / minilm
features with ``mer run jobs/quickstart.yaml stages=[validate,extract]``, then
train on the labeled train split only and score the test split:

* ``linear``, ``agt``, ``attention``, ``concat``: the train stage's recipe
  (15 % stratified holdout for early stopping), each seed in this process
  (:class:`mer.train.learner.Learner`, the code the Ray Train worker runs);
* ``linear + self-training``: the plainest semi-supervised recipe (linear,
  p > 0.9 pseudo-labels, two rounds);
* ``quickstart final``: the full ``mer run jobs/quickstart.yaml`` (train,
  self-training with the job's vote), unless ``--no-quickstart``; and
  ``train stage (<model>)``, the model that run's train stage published
  (``train.select: cv``: whichever of AGT and the linear floor scored higher
  by CV on train), per seed from its ``train.json``.

Prints one table per corpus: test weighted F1 mean +- std over seeds, and F1 of
worried and sad (the classes MER-SEMI's test set is full of), plus the issue's
targets. Train settings for every model: ``--set train.key=value`` (repeatable).

Run: ``python benchmarks/generalization.py [--corpora demo heldout101 heldout102] [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
FOCUS = ("worried", "sad")


def corpus_spec(name: str) -> tuple[str, int]:
    """``demo`` -> (demo, 0); ``heldout101`` -> (heldout, 101)."""
    if name == "demo":
        return "demo", 0
    if name.startswith("heldout") and name[7:].isdigit():
        return "heldout", int(name[7:])
    raise SystemExit(f"--corpora: expected demo or heldout<seed>, got {name!r}")


def mer(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "mer"), *args], check=True, cwd=ROOT)


def prepare(name: str, work: Path) -> list[str]:
    """Corpus + features for ``name``; returns the job overrides that point at them."""
    style, seed = corpus_spec(name)
    corpus = work / name
    if not (corpus / "manifest.csv").exists():
        mer("demo-data", str(corpus), "--style", style, "--seed", str(seed))
    overrides = [f"manifest={corpus / 'manifest.csv'}", f"truth={corpus / 'unlabeled_truth.csv'}",
                 f"store={work / ('store_' + name)}", f"run_dir={work / ('run_' + name)}"]
    mer("run", "jobs/quickstart.yaml", "stages=[validate,extract]", *overrides)
    return overrides


def scores(pred: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict:
    from sklearn.metrics import f1_score

    per_class = f1_score(truth, pred, labels=range(len(labels)), average=None, zero_division=0)
    out = {"waf": float(f1_score(truth, pred, average="weighted", zero_division=0))}
    out.update({c: float(per_class[labels.index(c)]) for c in FOCUS})
    return out


def fit_predict(data, labels, cfg, model: str, seed: int, extra=None) -> np.ndarray:
    """Train-stage recipe in process: holdout early stopping; probabilities for every sample."""
    from mer.train.learner import Learner, choose_rows, predict_proba, targets_of

    rows = choose_rows(data, targets_of(data, labels, extra), cfg, seed, None, extra)
    learner = Learner(model, data, rows, cfg, len(labels), seed)
    learner.run()
    return predict_proba(learner.best_model(), data, np.arange(len(data)), 256)


def linear_selftrain(data, labels, cfg, seed: int, rounds: int = 2, tau: float = 0.9) -> np.ndarray:
    """Linear late fusion + self-training: confident unlabeled predictions join training, twice."""
    unl = np.flatnonzero(data.split == "unlabeled")
    extra: dict[str, str] = {}
    for _ in range(rounds + 1):
        table = pd.DataFrame({"sample_id": list(extra), "label": list(extra.values())}) if extra else None
        probs = fit_predict(data, labels, cfg, "linear", seed, table)
        new = [i for i in unl if probs[i].max() > tau and data.ids[i] not in extra]
        extra.update({data.ids[i]: labels[int(probs[i].argmax())] for i in new})
    return probs


def per_seed(record: dict) -> list[dict]:
    """``{"waf": [...], "f1_sad": [...], ...}`` (a run's per-seed scores) -> one score dict per seed."""
    return [{"waf": record["waf"][i], **{c: record[f"f1_{c}"][i] for c in FOCUS}} for i in range(len(record["waf"]))]


def quickstart(overrides: list[str], sets: list[str], work: Path, name: str) -> dict[str, list[dict]]:
    """Per-seed scores of the full quickstart: its train stage's published model and its final vote."""
    mer("run", "jobs/quickstart.yaml", *overrides, *sets)
    run = work / f"run_{name}"
    trained = json.loads((run / "train.json").read_text())
    published = trained["published"]
    final = json.loads((run / "selftrain.json").read_text())["rounds"][-1]["vote_per_seed"]
    return {f"train stage ({published})": per_seed(trained["systems"][published]["test"]),
            "quickstart final": per_seed(final)}


def cell(values: list[float]) -> str:
    v = np.array(values) * 100
    return f"{v.mean():.2f} +- {v.std(ddof=1) if len(v) > 1 else 0:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["demo", "heldout101", "heldout102"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", default="linear,agt,attention,concat")
    parser.add_argument("--set", action="append", default=[], dest="sets", help="train.key=value for every model")
    parser.add_argument("--work", default=str(ROOT / "runs" / "generalization"))
    parser.add_argument("--no-quickstart", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    import torch

    from mer.config import load_job
    from mer.train.stage import fit_settings

    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.corpora:
        overrides = prepare(name, work)
        job = load_job(ROOT / "jobs" / "quickstart.yaml", overrides + args.sets)
        data = fit_settings(job).load(streaming=False)
        labels = job.labels
        test = np.flatnonzero(data.split == "test")
        truth = np.array([labels.index(x) for x in data.label[test]])
        table: dict[str, list[dict]] = {}
        for model in args.models.split(","):
            table[model] = [scores(fit_predict(data, labels, job.train, model, s)[test].argmax(1), truth, labels)
                            for s in args.seeds]
            print(f"[{name}] {model}: {cell([r['waf'] for r in table[model]])}", flush=True)
        table["linear + self-training"] = [
            scores(linear_selftrain(data, labels, job.train, s)[test].argmax(1), truth, labels) for s in args.seeds]
        if not args.no_quickstart:
            table.update(quickstart(overrides, args.sets, work, name))
        results[name] = table
        print(f"\n### {name} ({len(test)} test clips; seeds {args.seeds})\n")
        print("| system | test WAF | F1 worried | F1 sad |\n|---|---|---|---|")
        for system, rows in table.items():
            print(f"| {system} | {cell([r['waf'] for r in rows])} | {cell([r['worried'] for r in rows])} "
                  f"| {cell([r['sad'] for r in rows])} |")
        mean = {k: float(np.mean([r["waf"] for r in v])) for k, v in table.items()}
        checks = []
        if "agt" in mean and "linear" in mean:
            checks.append(f"agt >= linear: {'yes' if mean['agt'] >= mean['linear'] else 'no'} "
                          f"({(mean['agt'] - mean['linear']) * 100:+.2f})")
        stage = next((k for k in mean if k.startswith("train stage")), None)
        if stage and "linear" in mean:
            checks.append(f"{stage} >= linear: {'yes' if mean[stage] >= mean['linear'] else 'no'} "
                          f"({(mean[stage] - mean['linear']) * 100:+.2f})")
        if "quickstart final" in mean:
            gap = (mean["quickstart final"] - mean["linear + self-training"]) * 100
            checks.append(f"quickstart final >= linear + self-training + 3: {'yes' if gap >= 3 else 'no'} ({gap:+.2f})")
            focus = [np.mean([r[c] for r in table["quickstart final"]]) for c in FOCUS]
            checks.append(f"quickstart worried/sad F1 >= 0.80: {'yes' if min(focus) >= 0.8 else 'no'} "
                          f"({focus[0]:.2f} / {focus[1]:.2f})")
        print("targets: " + "; ".join(checks), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
