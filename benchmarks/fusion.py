"""Fusion quality on a job's extracted features: AGT vs attention vs concat vs audio-only.

Trains every model with every seed of ``train.seeds`` (supervised, labeled split
only, same encoders and budget), predicts the test split and prints test
weighted F1 / accuracy as mean +- std over seeds. Needs the job's features in
its store (``mer run JOB stages=[validate,extract]``).

Run: ``python benchmarks/fusion.py jobs/quickstart.yaml [key=value ...] [--models agt,attention,concat,unimodal]``
(``execution.num_workers=0`` runs Ray Train in local mode, in this process: same results, no actor start-up).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--models", default="agt,attention,concat,unimodal")
    args = parser.parse_args(argv)

    from mer.config import load_job
    from mer.metrics import evaluate
    from mer.corpus.labels import split_labels
    from mer.train.stage import fit_settings
    from mer.train.fit import fit
    from mer.train.predict import predict

    job = load_job(args.job, args.overrides)
    settings = fit_settings(job)
    plan = settings.plan()
    truth, _ = split_labels(job.manifest, job.store, job.streams(), "test")
    results = {}
    for model in args.models.split(","):
        scores = []
        for seed in job.train.seeds:
            ckpt = fit(settings, model, seed, Path(job.run_dir) / "fusion" / f"{model}_seed{seed}", plan=plan)
            scores.append(evaluate(predict(ckpt, job.store, "test"), truth, job.labels))
        results[model] = {k: [s[k] for s in scores] for k in ("weighted_f1", "accuracy")}
    out = Path(job.run_dir) / "fusion.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\n| model | test WAF (mean +- std, {len(job.train.seeds)} seeds) | accuracy |\n|---|---|---|")
    for model, r in results.items():
        waf, acc = np.array(r["weighted_f1"]) * 100, np.array(r["accuracy"]) * 100
        print(f"| {model} | {waf.mean():.2f} +- {waf.std(ddof=1) if len(waf) > 1 else 0:.2f} "
              f"| {acc.mean():.2f} +- {acc.std(ddof=1) if len(acc) > 1 else 0:.2f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
