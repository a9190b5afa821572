"""How far a job's final test WAF moves when every stored feature moves by a relative 1e-6.

Another processor sums in another order: features differ in their last digits.
This copies the job's store once per run, scales every stored value by
``1 + rel * N(0, 1)`` (a seed per copy; run 0 is an unperturbed copy), runs
the job's training stages on each copy (default ``train, selftrain, evaluate``:
the features are the extract stage's, not re-extracted) and prints per run
the final test WAF, the published train system's per-seed WAF and the
pseudo-labels added per round, then the spread (max - min) of the final WAF.
Target (issue 29): spread <= 0.5 points.

Run after ``make demo``:
    python benchmarks/stability.py jobs/quickstart.yaml --runs 5 [--rel 1e-6] [--work /tmp/mer_stability]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np


def measure(job, work: Path, runs: int, rel: float, stages: list[str], echo=print) -> dict:
    """Run ``stages`` of ``job`` on ``runs`` + 1 copies of its store; per-run figures and the spread (points)."""
    from mer.runner import run_job
    from mer.store.perturb import perturb_store

    rows = []
    for i in range(runs + 1):
        store, run_dir = work / f"store_{i}", work / f"run_{i}"
        for path in (store, run_dir):
            shutil.rmtree(path, ignore_errors=True)
        perturb_store(job.store, store, rel=rel if i else 0.0, seed=i)
        run_job(dataclasses.replace(job, store=str(store), run_dir=str(run_dir), stages=stages), echo=lambda _: None)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        trained = json.loads((run_dir / "train.json").read_text())
        published = trained.get("published", trained["model"])
        selftrain = run_dir / "selftrain.json"
        rounds = json.loads(selftrain.read_text())["rounds"] if selftrain.exists() else []
        rows.append({"run": i, "rel": rel if i else 0.0, "final_waf": 100 * metrics["weighted_f1"],
                     "published": published,
                     "published_per_seed": [100 * w for w in trained["systems"][published]["test"]["waf"]],
                     "pseudo_labels": [r["added"] for r in rounds]})
        echo(f"run {i}: {rows[-1]}")
    final = [r["final_waf"] for r in rows]
    return {"runs": rows, "spread": float(np.max(final) - np.min(final)), "std": float(np.std(final, ddof=1)),
            "mean": float(np.mean(final))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job", help="the job whose store and recipe are used (e.g. jobs/quickstart.yaml)")
    parser.add_argument("--runs", type=int, default=5, help="perturbed copies (plus one unperturbed)")
    parser.add_argument("--rel", type=float, default=1e-6)
    parser.add_argument("--stages", default="train,selftrain,evaluate")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mer_stability"))
    args = parser.parse_args()

    from mer.config import load_job
    from mer.runner import absolute

    job = absolute(load_job(args.job))
    result = measure(job, args.work, args.runs, args.rel, args.stages.split(","))
    print("\n| run | relative change | final test WAF | published system per seed | pseudo-labels per round |")
    print("|---|---|---|---|---|")
    for r in result["runs"]:
        seeds = ", ".join(f"{w:.2f}" for w in r["published_per_seed"])
        print(f"| {r['run']} | {r['rel']:g} | {r['final_waf']:.2f} | {r['published']}: {seeds} | "
              f"{', '.join(map(str, r['pseudo_labels'])) or '-'} |")
    print(f"final test WAF {result['mean']:.2f} +- {result['std']:.2f}; spread (max - min) {result['spread']:.2f} "
          "points (target <= 0.5)")


if __name__ == "__main__":
    main()
