"""What ``mer tune`` leaves in ``run_dir``: the trial table and its plot (no Ray); the tune stage writes ``best.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mer.runfolder import TUNE_PLOT, TUNE_RESULTS, RunFolder

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


def write_results(table: pd.DataFrame, run: RunFolder) -> tuple[dict, pd.Series]:
    """``tune_results.csv`` and ``tune.png``; returns ``(best values, best trial row)``."""
    run.path.mkdir(parents=True, exist_ok=True)
    table.round({METRIC: 6, "cv_std": 6}).to_csv(run / TUNE_RESULTS, index=False)
    params = [c for c in table.columns if c.startswith("train.")]
    best = table[table["status"] == "complete"].iloc[0]
    _plot(table, run / TUNE_PLOT)
    return {k: _plain(best[k]) for k in params}, best


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
