"""Which checkpoints make a run's final predictor, and how their probabilities combine.

A run's final predictor is what wrote its ``predictions_test.csv`` last:

* after the ``selftrain`` stage, the final round's vote: every model of
  ``selftrain.models`` with its ``train.seeds`` fits (``selftrain.json``
  records them as ``final_checkpoints``), each model's seeds averaged into one
  voter, voted like ``mer.selftrain.rounds.vote_test`` with the run's voting
  settings (``run_dir/config.yaml``);
* else the ``train`` stage's seed ensemble of ``train.model``
  (``train.json``: ``systems.<model>.checkpoints``): the mean probability over
  every model (fold) of every seed, as ``mer.train.predict`` averages.

Checkpoint paths are recorded absolute; a run folder that moved is still
found through ``run_dir/checkpoints/<name>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mer.config import Job, load_job
from mer.errors import MerError
from mer.selftrain.rounds import models_cv, vote_test, voter_weights
from mer.selftrain.voting import average_seeds, prob_columns
from mer.train.stage import SYSTEMS_FILE

SELFTRAIN_FILE = "selftrain.json"
VOTE = "self-training vote"
ENSEMBLE = "seed ensemble"


@dataclass
class FinalPredictor:
    """Checkpoint folders per model and the rule that combines them.

    Attributes:
        kind: :data:`VOTE` or :data:`ENSEMBLE`.
        checkpoints: model name -> checkpoint folders (``train.seeds`` order).
        job: the run's job (its ``selftrain`` voting settings); None for an ensemble.
    """

    kind: str
    checkpoints: dict[str, list[Path]]
    job: Job | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MerError(f"{path}: cannot read ({exc})") from None


def _locate(path: str, run_dir: Path) -> Path:
    """A recorded checkpoint folder, or the folder of that name in ``run_dir/checkpoints``."""
    recorded = Path(path)
    moved = run_dir / "checkpoints" / recorded.name
    return recorded if recorded.is_dir() or not moved.is_dir() else moved


def final_predictor(run_dir: str | Path) -> FinalPredictor:
    """The final predictor a run folder left.

    Raises:
        MerError: the folder has neither file, or its ``selftrain.json``
            predates ``final_checkpoints``.
    """
    run_dir = Path(run_dir)
    selftrain, systems = run_dir / SELFTRAIN_FILE, run_dir / SYSTEMS_FILE
    if selftrain.is_file():
        final = _read_json(selftrain).get("final_checkpoints")
        if not final:
            raise MerError(f"{selftrain}: no final_checkpoints (written by an older mer): rerun the selftrain "
                           f"stage (mer run {run_dir / 'config.yaml'} stages=[selftrain] reuses every fit) "
                           "or pass --checkpoint")
        checkpoints = {m: [_locate(p, run_dir) for p in paths] for m, paths in final.items()}
        return FinalPredictor(VOTE, checkpoints, load_job(run_dir / "config.yaml"))
    if systems.is_file():
        record = _read_json(systems)
        model = record["model"]
        return FinalPredictor(ENSEMBLE, {model: [_locate(p, run_dir) for p in record["systems"][model]["checkpoints"]]})
    raise MerError(f"{run_dir}: not a trained run (no {SELFTRAIN_FILE} or {SYSTEMS_FILE}; run the train stage, "
                   "or pass --checkpoint)")


def vote(job: Job, ids: list[str], groups: dict[str, list[tuple[Path, int, np.ndarray]]]) -> pd.DataFrame:
    """The self-training vote over new samples, as ``vote_test`` votes the test split.

    Args:
        job: the run's job (labels, ``selftrain`` settings, ``train.seeds``).
        ids: sample ids, in the order of the probability rows.
        groups: model -> ``(checkpoint, seed, probabilities (N, C))`` per
            checkpoint, the probabilities being the mean over its folds.

    Returns:
        ``sample_id,label,p_<label>...`` in the order of ``ids``.
    """
    cols = prob_columns(job.labels)
    tables = {
        model: average_seeds([pd.DataFrame(probs, columns=cols).assign(sample_id=ids) for _, _, probs in items],
                             job.labels)
        for model, items in groups.items()
    }
    cv = models_cv({(model, seed): path for model, items in groups.items() for path, seed, _ in items}, job.train.seeds)
    voted = vote_test(job, tables, voter_weights(job, cv))
    return voted.set_index("sample_id").loc[ids].reset_index()
