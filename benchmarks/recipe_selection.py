"""How mer's default training recipe is chosen: K-fold CV on the train splits of tuning corpora only.

Each candidate recipe (a set of ``train.*`` values on top of the job's) is
scored by stratified K-fold cross-validation on the *labeled train split* of
every tuning corpus (``mer.train.crossval.cross_validate``, in this process);
the table shows the out-of-fold weighted F1 per corpus and the mean. No test
split is read. The tuning corpora are the demo corpus and ``heldout103``
(``mer demo-data --style heldout --seed 103``); the corpora the choice is then
checked on (``benchmarks/generalization.py``: heldout101, heldout102) are
never used here.

Run: ``python benchmarks/recipe_selection.py [--corpora demo heldout103] [--models agt,linear] [--folds 5]``
(features must be extracted: ``benchmarks/generalization.py`` prepares corpora the same way).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import ROOT, prepare  # noqa: E402

#: Candidate recipes: name -> train.* values changed from the defaults of ``mer.config.TrainConfig``.
CANDIDATES = {
    "defaults": {},
    "linear skip": {"linear_skip": True},
    "linear skip + feature noise 0.3": {"linear_skip": True, "feature_noise": 0.3},
    "feature noise 0.3 + modality dropout 0.2": {"feature_noise": 0.3, "modality_dropout": 0.2},
    "linear skip + noise 0.3 + modality dropout 0.2": {"linear_skip": True, "feature_noise": 0.3,
                                                       "modality_dropout": 0.2},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["demo", "heldout103"])
    parser.add_argument("--models", default="agt", help="comma-separated; linear is scored once (no recipe keys)")
    parser.add_argument("--candidates", nargs="*", default=None, help="names from CANDIDATES (default: all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "generalization"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import dataclasses

    import torch

    from mer.config import load_job
    from mer.train.crossval import cross_validate
    from mer.train.stage import fit_settings

    torch.set_num_threads(2)
    work = Path(args.work)
    names = args.candidates or list(CANDIDATES)
    scores: dict[tuple[str, str], dict[str, float]] = {}
    for corpus in args.corpora:
        job = load_job(ROOT / "jobs" / "quickstart.yaml", prepare(corpus, work))
        data = fit_settings(job).load("train", streaming=False)
        for model in args.models.split(","):
            for name in (names if model != "linear" else ["defaults"]):
                cfg = dataclasses.replace(job.train, **CANDIDATES[name])
                cv = [cross_validate(data, job.labels, cfg, model, seed, args.folds)[0]["weighted_f1"]
                      for seed in args.seeds]
                scores.setdefault((model, name), {})[corpus] = float(np.mean(cv))
                print(f"[{corpus}] {model} / {name}: CV WAF {np.mean(cv) * 100:.2f}", flush=True)
    print(f"\n| model | recipe | {' | '.join(args.corpora)} | mean |\n|---|---|" + "---|" * (len(args.corpora) + 1))
    for (model, name), per in scores.items():
        cells = " | ".join(f"{per[c] * 100:.2f}" for c in args.corpora)
        print(f"| {model} | {name} | {cells} | **{np.mean(list(per.values())) * 100:.2f}** |")
    if args.out:
        Path(args.out).write_text(json.dumps({f"{m}/{n}": v for (m, n), v in scores.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
