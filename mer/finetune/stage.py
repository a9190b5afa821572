"""The ``finetune`` stage: fine-tune, export, then re-extract the role as a new feature version.

The stage does not edit the job: it returns ``job_updates``
(``{"encoders.<role>.model": <export folder>}``), which the runner applies
before the next stage. The new folder's ``encoder_version`` differs (new path
and weights), so the stages after ``finetune`` in the same job (train,
selftrain...) read the fine-tuned features from a new table.
"""

from __future__ import annotations

from mer.config import Job, with_values
from mer.finetune.launch import finetune


def run(job: Job, echo=print) -> dict:
    """Fine-tune ``job.finetune.role``; re-extract it unless ``finetune.reextract`` is false."""
    summary = finetune(job)
    role = job.finetune.role
    updates = {f"encoders.{role}.model": summary["out"]}
    if job.finetune.reextract:
        from mer.extract.stage import run as extract

        summary["extract"] = extract(with_values(job, updates), echo, roles=[role])
    return {**summary, "job_updates": updates}
