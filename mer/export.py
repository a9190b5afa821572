"""``mer export submission``: a run's final predictions of the challenge candidates, in the organisers' format.

The organisers score ``submission.csv`` with columns ``name,discrete``, one row
per candidate clip (MERTools ``MER2025_Track1/submission.py`` writes it from the
arg-max of the predicted probabilities; ``evaluation.py`` matches names and
label strings exactly). The candidates are the manifest rows marked
``candidate`` (``mer corpus import`` marks the release's list); the validate
stage records them in the run folder, quarantined ones included, so a
candidate that lost its clip is named here instead of silently missing from the
file. Predictions are the run's final predictor's (``predictions_<split>.csv``:
the self-training vote, else the seed ensemble).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mer.errors import MerError
from mer.runfolder import PUBLISHED_SPLITS, RunFolder, read_predictions

SUBMISSION_COLUMNS = ["name", "discrete"]


def submission(run_dir: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, int]:
    """Write ``out`` (``name,discrete``, candidates in the manifest's order); returns ``(path, rows)``.

    Raises:
        MerError: the run lists no candidates, has no final predictions, or a
            candidate has no prediction (the first ones are named).
    """
    run = RunFolder(run_dir)
    candidates = run.candidates()
    if candidates.empty:
        raise MerError(f"{run.path}: the manifest marks no candidate clip (a 'candidate' column; "
                       "mer corpus import marks the release's list)")
    frames = [read_predictions(run.predictions(split)) for split in PUBLISHED_SPLITS if run.predictions(split).exists()]
    if not frames:
        raise MerError(f"{run.path}: no final predictions (run the train stage, then selftrain)")
    label = pd.concat(frames, ignore_index=True).drop_duplicates("sample_id").set_index("sample_id")["label"]
    found = candidates["sample_id"].map(label)
    missing = candidates.loc[found.isna(), ["sample_id", "reason"]]
    if len(missing):
        shown = "; ".join(f"{r.sample_id}" + (f" ({r.reason})" if r.reason else "") for r in missing.head(3).itertuples())
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MerError(f"{run.path}: {len(missing)} of {len(candidates)} candidates have no prediction: {shown}{more}; "
                       "the organisers score every candidate, so no submission was written")
    out = Path(out)
    if out.is_dir():
        raise MerError(f"--out {out}: is a folder; name the CSV file to write (e.g. {out / 'submission.csv'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame({"name": candidates["sample_id"].to_numpy(), "discrete": found.to_numpy()}).to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out, len(candidates)
