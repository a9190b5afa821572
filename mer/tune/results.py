"""What ``mer tune`` leaves in ``run_dir``: the trial table, a plot and the best job file (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mer.config import Job, with_values

METRIC = "cv_weighted_f1"


def rank_trials(rows: list[dict]) -> pd.DataFrame:
    """Finished trials best first, then those ASHA stopped or that failed; ties broken by the parameters' JSON, so the order never depends on trial ids.

    Args:
        rows: one dict per trial: ``trial`` (order of creation), ``params``,
            ``cv_weighted_f1``, ``cv_std``, ``folds_done``, ``status``.
    """
    frame = pd.DataFrame([{"trial": r["trial"], METRIC: r[METRIC], "cv_std": r["cv_std"],
                           "folds_done": r["folds_done"], "status": r["status"], **r["params"],
                           "_key": json.dumps(r["params"], sort_keys=True)} for r in rows])
    frame["_complete"] = frame["status"] == "complete"
    frame = frame.sort_values(["_complete", METRIC, "_key"], ascending=[False, False, True], na_position="last",
                              kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame.drop(columns=["_key", "_complete"]).reset_index(drop=True)


def write_results(job: Job, table: pd.DataFrame, run_dir: Path) -> dict:
    """``tune_results.csv``, ``tune.png`` and ``best.yaml`` (the job with the best trial's values).

    ``best.yaml`` keeps the job's stages but ``tune`` (none left: train,
    evaluate, report); its ``run_dir`` is ``run_dir/best`` and its
    ``tune.space`` is emptied, so ``mer run best.yaml`` trains it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    table.round({METRIC: 6, "cv_std": 6}).to_csv(run_dir / "tune_results.csv", index=False)
    params = [c for c in table.columns if c.startswith("train.")]
    best = table[table["status"] == "complete"].iloc[0]
    values = {k: _plain(best[k]) for k in params}
    stages = [s for s in job.stages if s != "tune"] or ["train", "evaluate", "report"]
    best_job = with_values(job, {**values, "run_dir": str(run_dir / "best"), "tune.space": {}, "stages": stages})
    (run_dir / "best.yaml").write_text(
        f"# chosen by mer tune: {best[METRIC]:.4f} weighted F1, {job.tune.folds}-fold CV on the labeled train split\n"
        + best_job.to_yaml())
    _plot(table, run_dir / "tune.png")
    return {"best": values, "best_cv_weighted_f1": float(best[METRIC]), "trials": len(table),
            "files": [str(run_dir / n) for n in ("tune_results.csv", "tune.png", "best.yaml")]}


def _plain(value):
    """numpy scalars -> Python (YAML and JSON take them)."""
    return value.item() if hasattr(value, "item") else value


def _plot(table: pd.DataFrame, path: Path) -> None:
    """CV weighted F1 per trial in the order they were drawn, with the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_trial = table.sort_values("trial")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(by_trial["trial"], by_trial[METRIC] * 100, s=18, label="trial")
    ax.plot(by_trial["trial"], by_trial[METRIC].cummax() * 100, color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("CV weighted F1 (%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
