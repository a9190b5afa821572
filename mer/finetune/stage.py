"""The ``finetune`` stage: fine-tune, export, then re-extract the role as a new feature version.

After the export, ``encoders.<role>.model`` of the running job points at the
exported folder: its ``encoder_version`` differs (new path and weights), so the
extract stage writes a new table and the stages after ``finetune`` in the same
job (train, selftrain...) read the fine-tuned features.
"""

from __future__ import annotations

from pathlib import Path

from mer.config import Job
from mer.finetune.launch import finetune


def run(job: Job, echo=print) -> dict:
    """Fine-tune ``job.finetune.role``; re-extract it unless ``finetune.reextract`` is false."""
    summary = finetune(job)
    role = job.finetune.role
    job.encoders[role].model = summary["out"]
    (Path(job.run_dir) / "config.yaml").write_text(job.to_yaml())
    if job.finetune.reextract:
        from mer.extract.stage import run as extract

        summary["extract"] = extract(job, echo, roles=[role])
    return summary
