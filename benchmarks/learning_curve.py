"""When does AGT pay? Supervised models against the linear floor as the labeled set grows.

Per corpus (``mer demo-data --style heldout`` seeds nothing was tuned on; the
largest labeled size plus a test split, extracted once with the quickstart's
encoders), for each labeled size N (a stratified subset of the train split,
the same subset for every model), each model is fitted with the train stage's
recipe (holdout scoring, epochs chosen on an inner split, speakers kept apart)
for 3 seeds and scored on the test split. Prints one table (test WAF mean +-
std, F1 of worried and sad) and writes a plot of WAF against N.

Run: ``python benchmarks/learning_curve.py [--corpora heldout301 heldout302] [--sizes 100 250 500 1000 2000]
[--models agt concat attention linear] [--seeds 0 1 2] [--plot docs/img/learning_curve.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FOCUS = ("worried", "sad")


def subset(data, labels: list[str], n: int, seed: int = 0) -> list[str]:
    """A stratified subset of ``n`` labeled train ids (the same for every model and seed)."""
    from sklearn.model_selection import train_test_split

    train = np.flatnonzero(data.split == "train")
    if n >= len(train):
        return list(data.ids[train])
    y = [labels.index(v) for v in data.label[train]]
    keep, _ = train_test_split(train, train_size=n, random_state=seed, stratify=y)
    return list(data.ids[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", nargs="+", default=["heldout301", "heldout302"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 250, 500, 1000, 2000])
    parser.add_argument("--models", nargs="+", default=["agt", "concat", "attention", "linear"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mer_learning_curve"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/learning_curve.png"))
    args = parser.parse_args()

    import torch
    from sklearn.metrics import f1_score

    from mer.config import job_from_dict
    from mer.corpus.demo import make_demo_corpus
    from mer.runner import ensure_ray, run_job
    from mer.train.learner import Learner, choose_rows, predict_proba, targets_of
    from mer.train.stage import fit_settings

    torch.set_num_threads(2)
    ensure_ray()
    curves: dict[tuple[str, str], list[float]] = {}
    lines = ["| corpus | N labeled | " + " | ".join(args.models) + " |", "|---|---|" + "---|" * len(args.models)]
    for name in args.corpora:
        corpus = args.work / name
        if not (corpus / "manifest.csv").exists():
            make_demo_corpus(corpus, n_train=max(args.sizes), n_unlabeled=0, n_test=args.n_test, seed=int(name[7:]),
                             style="heldout")
        job = job_from_dict({
            "name": name, "manifest": str(corpus / "manifest.csv"), "store": str(args.work / f"store_{name}"),
            "run_dir": str(args.work / f"run_{name}"), "stages": ["validate", "extract"],
            "encoders": {"audio": {"alias": "logmel"}, "video": {"alias": "frames"}, "text": {"alias": "minilm"}},
        })
        run_job(job, echo=lambda _: None)
        data = fit_settings(job).load(streaming=False)
        labels, test = job.labels, np.flatnonzero(data.split == "test")
        truth = np.array([labels.index(v) for v in data.label[test]])
        for n in args.sizes:
            keep = set(subset(data, labels, n))
            # rows outside the subset lose their label: they neither train nor score
            label = np.array([v if (s != "train" or i in keep) else None
                              for i, s, v in zip(data.ids, data.split, data.label)], object)
            view = type(data)(**{**vars(data), "label": label})
            cells = []
            for model in args.models:
                wafs, focus = [], []
                for seed in args.seeds:
                    targets = targets_of(view, labels, None)
                    learner = Learner(model, view, choose_rows(view, targets, job.train, seed, None, None),
                                      job.train, len(labels), seed)
                    learner.run()
                    pred = predict_proba(learner.best_model(), view, test, 256).argmax(1)
                    wafs.append(f1_score(truth, pred, average="weighted", zero_division=0) * 100)
                    per_class = f1_score(truth, pred, labels=range(len(labels)), average=None, zero_division=0)
                    focus.append([per_class[labels.index(c)] * 100 for c in FOCUS])
                curves.setdefault((name, model), []).append(float(np.mean(wafs)))
                worried, sad = np.mean(focus, 0)
                cells.append(f"{np.mean(wafs):.1f} +- {np.std(wafs, ddof=1):.1f} ({worried:.0f}/{sad:.0f})")
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        plot(curves, [c for c in args.corpora if (c, args.models[0]) in curves], args.sizes, args.models, args.plot)
    print("\ntest WAF mean +- std over seeds (F1 worried / sad), percent\n" + "\n".join(lines))


def plot(curves: dict, corpora: list[str], sizes: list[int], models: list[str], out: Path) -> None:
    """WAF against N, one panel per corpus done so far (rewritten after each corpus: a cut run keeps its figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(corpora), figsize=(5 * len(corpora), 3.6), squeeze=False)
    for ax, name in zip(axes[0], corpora):
        for model in models:
            ax.plot(sizes[:len(curves[(name, model)])], curves[(name, model)], marker="o", label=model)
        ax.set(xscale="log", xlabel="labeled clips", ylabel="test WAF (%)", title=name)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}", flush=True)

if __name__ == "__main__":
    main()
