"""Does eGeMAPS help? 5-fold CV on the train split of corpora nothing is tested on.

For each corpus (``mer demo-data --style heldout`` with seeds no setting was
chosen on, train split only: no test split is even written) the quickstart's
encoders are extracted, plus ``egemaps`` (88 eGeMAPSv02 functionals per clip
and per segment) as a second audio stream. Then, in this process, stratified
5-fold cross-validation (speakers kept apart: the heldout manifest has a
``group`` column; epochs chosen on an inner split) of the linear floor and of
AGT, each with audio = logmel alone and with logmel + eGeMAPS, 3 seeds.

The rule, fixed before the run: the quickstart adds eGeMAPS only if AGT's mean
CV WAF with it is at least 1 point higher on every corpus. Prints one table
(mean +- std over seeds, percent) and the decision.

Run: ``python benchmarks/egemaps_cv.py [--corpora heldout201 heldout202] [--n-train 240] [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
AUDIO = {"logmel": [{"alias": "logmel"}], "logmel + egemaps": [{"alias": "logmel"}, {"alias": "egemaps", "seq_len": 8}]}


def job_for(corpus: Path, work: Path, audio: list[dict]):
    from mer.config import job_from_dict

    name = corpus.name
    return job_from_dict({
        "name": name, "manifest": str(corpus / "manifest.csv"), "store": str(work / f"store_{name}"),
        "run_dir": str(work / f"run_{name}"), "stages": ["validate", "extract"],
        "encoders": {"audio": audio, "video": {"alias": "frames"}, "text": {"alias": "minilm"}},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", nargs="+", default=["heldout201", "heldout202"])
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mer_egemaps_cv"))
    args = parser.parse_args()

    import torch

    from mer.corpus.demo import make_demo_corpus
    from mer.runner import ensure_ray, run_job
    from mer.train.crossval import cross_validate
    from mer.train.stage import fit_settings

    torch.set_num_threads(2)
    ensure_ray()
    rows, gains = [], {}
    for name in args.corpora:
        corpus = args.work / name
        if not (corpus / "manifest.csv").exists():
            make_demo_corpus(corpus, n_train=args.n_train, n_unlabeled=0, n_test=0, seed=int(name[7:]), style="heldout")
        run_job(job_for(corpus, args.work, AUDIO["logmel + egemaps"]), echo=lambda _: None)
        means = {}
        for audio, streams in AUDIO.items():
            job = job_for(corpus, args.work, streams)
            data = fit_settings(job).load(streaming=False)
            for model in ("linear", "agt"):
                waf = [cross_validate(data, job.labels, job.train, model, seed, folds=5)[0]["weighted_f1"] * 100
                       for seed in args.seeds]
                means[(model, audio)] = float(np.mean(waf))
                rows.append(f"| {name} | {model} | {audio} | {np.mean(waf):.2f} +- {np.std(waf, ddof=1):.2f} |")
                print(rows[-1], flush=True)
        gains[name] = means[("agt", "logmel + egemaps")] - means[("agt", "logmel")]
    print("\n| corpus | model | audio streams | 5-fold CV WAF on train (mean +- std over seeds) |\n|---|---|---|---|")
    print("\n".join(rows))
    adopt = all(g >= 1.0 for g in gains.values())
    print(f"\nAGT gain from eGeMAPS per corpus: {', '.join(f'{k} {v:+.2f}' for k, v in gains.items())} points; "
          f"rule (>= +1 on every corpus): {'add it to the quickstart' if adopt else 'keep the quickstart as it is'}")


if __name__ == "__main__":
    main()
