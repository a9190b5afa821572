"""The ``finetune`` stage: fine-tune, export, then re-extract the role as a new feature version.

With ``finetune.folds`` >= 2 (the default, 5) the fine-tuning is cross-fitted
(:mod:`mer.finetune.crossfit`): each labeled row is extracted by a fold model
that never trained on it, every other row by a model trained on all labeled
rows or by the fold models' mean (``finetune.crossfit_other``). With 0 or 1,
one model trains on every labeled row and extracts every row (the stacking
leak that cross-fitting removes).

The stage does not edit the job: it returns ``job_updates``
(``{"encoders.<role>.model": <export folder>}``), which the runner applies
before the next stage. The new folder's ``encoder_version`` differs (new path
and weights), so the stages after ``finetune`` in the same job (train,
selftrain...) read the fine-tuned features from a new table.
"""

from __future__ import annotations

from mer.config import Job, with_values
from mer.errors import MerError
from mer.finetune.crossfit import RECORD_FILE, crossfit, extract_crossfit
from mer.finetune.launch import export_dir, finetune
from mer.finetune.loop import train_loop_per_worker


def run(job: Job, echo=print, worker_loop=train_loop_per_worker) -> dict:
    """Fine-tune ``job.finetune.role`` (cross-fitted or single); re-extract it unless ``finetune.reextract`` is false.

    Args:
        worker_loop: the Ray Train per-worker function (tests inject faults here).
    """
    role = job.finetune.role
    if job.finetune.folds >= 2:
        summary = crossfit(job, echo, worker_loop)
    else:
        if (export_dir(job) / RECORD_FILE).exists():
            # Its fingerprint (the table version) would be the cross-fitted table's.
            raise MerError(f"finetune.out {export_dir(job)} holds a cross-fitted export; "
                           f"set finetune.out to another folder for finetune.folds={job.finetune.folds}")
        summary = finetune(job, worker_loop=worker_loop)
        echo(f"   {role}: trained on {summary['examples']} rows" + (": finished before, skipped" if summary["skipped"] else ""))
    updates = {f"encoders.{role}.model": summary["out"]}
    if job.finetune.reextract:
        updated = with_values(job, updates)
        if job.finetune.folds >= 2:
            summary["extract"] = extract_crossfit(updated, echo)
        else:
            from mer.extract.stage import run as extract

            summary["extract"] = extract(updated, echo, roles=[role])
    return {**summary, "job_updates": updates}
